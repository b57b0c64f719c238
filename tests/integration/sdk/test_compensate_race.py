"""The saga race, reproduced with a real agent process and Redis: a Compensate
sent while its Execute is still running (a coordinator died mid-call and a
replica compensates) runs after the effect, and a later Execute with the same
key is refused with ABORTED/COMPENSATED without taking effect — also after the
agent restarts. Both wire styles fence: an old caller's Compensate keyed
`<K>/compensate` without `compensated_idempotency_key`, and a new caller's
that names `<K>` in that field (with a key of its own that has no suffix)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2

from agentmesh.agent import dict_to_struct, struct_to_dict
from agentmesh.agent.sdk import REASON_COMPENSATED
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.errors import Aborted, ErrorReason, error_reason, from_rpc_error
from tests.procs import scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration

_STARTED = re.compile(
    r'^grpc_server_started_total\{grpc_method="Execute",'
    r'grpc_service="agentmesh\.agent\.v1\.AgentService"\} (\S+)$',
    re.M,
)


def _executes_started(metrics_port: int) -> float:
    m = _STARTED.search(scrape_metrics(metrics_port))
    return float(m.group(1)) if m else 0.0


async def _wait_started(metrics_port: int, n: int, timeout_s: float = 15.0) -> None:
    # The SDK registers the in-flight key in the same event-loop step that
    # counts the RPC as started, so once the counter shows it, the agent knows
    # the Execute is running.
    async def started() -> bool:
        return await asyncio.to_thread(_executes_started, metrics_port) >= n

    await eventually(started, timeout_s=timeout_s, every_s=0.05, what=f"{n} Execute calls started")


def _exec(key: str, attempt: int) -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(
        action="charge", input=dict_to_struct({"amount": 5}), idempotency_key=key,
        attempt=attempt,
    )


async def _assert_refused(target: str, key: str) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await agent_pb2_grpc.AgentServiceStub(ch).Execute(_exec(key, 3), timeout=10)
    assert ei.value.code() == grpc.StatusCode.ABORTED
    err = from_rpc_error(ei.value)
    info = err.detail(error_details_pb2.ErrorInfo)
    assert isinstance(err, Aborted) and isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == REASON_COMPENSATED
    assert error_reason(ei.value) == ErrorReason.ERROR_REASON_COMPENSATED


def _compensate(key: str, style: str) -> agent_pb2.CompensateRequest:
    """The Compensate of Execute `key`, as an old ("suffix") or a new ("field") caller sends it."""
    req = agent_pb2.CompensateRequest(
        action="charge", input=dict_to_struct({"amount": 5}), attempt=1,
    )
    if style == "suffix":
        req.idempotency_key = key + "/compensate"
    else:
        req.idempotency_key = f"undo-{uuid.uuid4().hex[:12]}"
        req.compensated_idempotency_key = key
    return req


@pytest.mark.parametrize("style", ["suffix", "field"])
async def test_compensate_during_slow_execute(
    spawn_agent: Any, sdk_redis_url: str, style: str
) -> None:
    p = spawn_agent("counting", "--redis-url", sdk_redis_url, "--delay-ms", "1500",
                    "--metrics-port", "0")
    prefix = f"am:agent:{p.agent_id}"  # the counting agent's default effects prefix
    key = f"sg_{uuid.uuid4().hex[:12]}/charge"
    r = aioredis.Redis.from_url(sdk_redis_url)
    try:
        async with grpc.aio.insecure_channel(p.target) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            # The dead coordinator's call: still running on the agent.
            execute = asyncio.ensure_future(stub.Execute(_exec(key, 1), timeout=30))
            await _wait_started(p.metrics_port, 1)
            assert await r.hget(f"{prefix}:effects", key) is None  # effect not yet taken
            # The replica compensates (it has no output to pass on).
            req = _compensate(key, style)
            comp_key = req.idempotency_key
            comp = await stub.Compensate(req, timeout=30)
            done = await execute
        assert done.deduplicated is False and comp.deduplicated is False
        # The compensation ran after the effect, and saw the Execute's output.
        log = [json.loads(x) for x in await r.lrange(f"{prefix}:log", 0, -1)]
        assert [(e["kind"], e["key"]) for e in log] == [
            ("execute", key), ("compensate", comp_key),
        ]
        assert struct_to_dict(comp.output)["original_output"] == struct_to_dict(done.output)
        # A late Execute with the same key is refused and adds no effect.
        await _assert_refused(p.target, key)
        assert await r.hget(f"{prefix}:effects", key) == b"1"
        assert await r.hget(f"{prefix}:compensations", comp_key) == b"1"
        assert await r.llen(f"{prefix}:log") == 2
        # The tombstone is in Redis, so it outlives the agent process.
        assert p.stop() == 0
        p2 = spawn_agent("counting", "--redis-url", sdk_redis_url, agent_id=p.agent_id)
        await _assert_refused(p2.target, key)
        assert await r.hget(f"{prefix}:effects", key) == b"1"
        assert await r.llen(f"{prefix}:log") == 2
    finally:
        await r.aclose()
