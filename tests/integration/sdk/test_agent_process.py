"""Agent processes against real Redis: durable dedupe across restarts, effects
recorded once, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh.agent import dict_to_struct, struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.procs import scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def _req(key: str, attempt: int = 1, action: str = "step") -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(
        action=action, input=dict_to_struct({"n": 1}), idempotency_key=key, attempt=attempt
    )


async def _execute(target: str, req: Any, timeout_s: float = 10.0) -> agent_pb2.ExecuteResponse:
    async with grpc.aio.insecure_channel(target) as ch:
        return await agent_pb2_grpc.AgentServiceStub(ch).Execute(req, timeout=timeout_s)


async def test_dedupe_survives_restart_with_redis(spawn_agent: Any, sdk_redis_url: str) -> None:
    prefix = "am:agent:test-durable"
    p1 = spawn_agent("counting", "--redis-url", sdk_redis_url, "--effects-prefix", prefix)
    agent_id = p1.agent_id
    r = aioredis.Redis.from_url(sdk_redis_url)
    try:
        await r.delete(f"{prefix}:effects", f"{prefix}:log")
        first = await _execute(p1.target, _req("saga-x/charge"))
        assert first.deduplicated is False
        assert p1.stop() == 0
        # Same agent id, new process: the stored result comes from Redis.
        p2 = spawn_agent("counting", "--redis-url", sdk_redis_url, "--effects-prefix", prefix,
                         agent_id=agent_id)
        again = await _execute(p2.target, _req("saga-x/charge", attempt=2))
        assert again.deduplicated is True
        assert again.output == first.output
        assert await r.hget(f"{prefix}:effects", "saga-x/charge") == b"1"
        assert await r.llen(f"{prefix}:log") == 1
        ttl_ms = await r.pttl(f"am:agent:{agent_id}:idem:x:saga-x/charge")
        assert ttl_ms > 0
    finally:
        await r.delete(f"{prefix}:effects", f"{prefix}:log")
        await r.aclose()


async def test_concurrent_duplicates_take_effect_once(spawn_agent: Any, sdk_redis_url: str) -> None:
    prefix = "am:agent:test-concurrent"
    p = spawn_agent("counting", "--redis-url", sdk_redis_url, "--effects-prefix", prefix,
                    "--delay-ms", "300")
    r = aioredis.Redis.from_url(sdk_redis_url)
    try:
        await r.delete(f"{prefix}:effects", f"{prefix}:log")
        resps = await asyncio.gather(*(_execute(p.target, _req("k-conc")) for _ in range(8)))
        assert sum(not x.deduplicated for x in resps) == 1
        assert {struct_to_dict(x.output)["count"] for x in resps} == {1.0}
        assert await r.hget(f"{prefix}:effects", "k-conc") == b"1"
    finally:
        await r.delete(f"{prefix}:effects", f"{prefix}:log")
        await r.aclose()


async def test_injected_failures(spawn_agent: Any) -> None:
    p = spawn_agent("noop", "--fail-attempts", "1", "--fail-actions", "never")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _execute(p.target, _req("k1", attempt=1))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    ok = await _execute(p.target, _req("k1", attempt=2))
    assert struct_to_dict(ok.output)["input"] == {"n": 1}
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _execute(p.target, _req("k2", attempt=5, action="never"))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_sigterm_drains_in_flight_call(spawn_agent: Any) -> None:
    p = spawn_agent("noop", "--delay-ms", "1500", "--grace-period-s", "10",
                    "--metrics-port", "0")
    call = asyncio.ensure_future(_execute(p.target, _req("k-drain")))

    # Signal only once the call has reached the server (a fixed 0.5 s sleep
    # was overrun on a loaded machine, and the SIGTERM then refused the call).
    async def execute_started() -> bool:
        text = await asyncio.to_thread(scrape_metrics, p.metrics_port)
        return any(
            ln.startswith("grpc_server_started_total{") and 'grpc_method="Execute"' in ln
            and ln.endswith(" 1.0")
            for ln in text.splitlines()
        )

    await eventually(execute_started, timeout_s=15, every_s=0.02, what="Execute started")
    p.signal(signal.SIGTERM)
    resp = await call
    assert struct_to_dict(resp.output)["action"] == "step"
    assert await asyncio.to_thread(p.wait, 20) == 0
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await _execute(p.target, _req("k-after"), timeout_s=2)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_idempotency_store_down_fails_before_running(spawn_agent: Any,
                                                           tmp_path: Any) -> None:
    from agentmesh.runtime.errors import Unavailable, from_rpc_error
    from tests.infra import RedisServer

    # appendonly: the stored result must survive the Redis restart below.
    with RedisServer(workdir=tmp_path / "redis", appendonly=True) as own:
        p = spawn_agent("counting", "--redis-url", own.url_for_db(6))
        ok = await _execute(p.target, _req("k-before"))
        assert struct_to_dict(ok.output)["count"] == 1.0
        own.stop()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await _execute(p.target, _req("k-during"))
        err = from_rpc_error(ei.value)
        assert isinstance(err, Unavailable) and err.reason == "IDEMPOTENCY_STORE_DOWN"
        own.start()  # same port: the agent recovers without a restart
        for attempt in range(2, 5):
            # The first call after the restart may meet a stale pooled
            # connection: that is UNAVAILABLE, which callers retry.
            try:
                again = await _execute(p.target, _req("k-before", attempt=attempt))
                break
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert again.deduplicated is True
        r = aioredis.Redis.from_url(own.url_for_db(6))
        try:
            # The failed call never reached the handler, so it recorded no effect.
            assert await r.hget(f"am:agent:{p.agent_id}:effects", "k-during") is None
        finally:
            await r.aclose()
