"""Compensation fences its action: a Compensate `<K>/compensate` waits for a
running Execute `<K>`, and leaves a tombstone that makes a later Execute `<K>`
fail with ABORTED/COMPENSATED without running. Each test runs against the
in-memory store and against a real Redis (DB 6, keys under the agent's own
`am:agent:{agent_id}:` prefix)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2

from agentmesh.agent import ActionContext, Agent, MemoryIdempotencyStore, StoredResult
from agentmesh.agent.sdk import REASON_COMPENSATED, REASON_EXECUTE_IN_FLIGHT, compensated_key
from agentmesh.agent.structs import dict_to_struct, struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.errors import Aborted, Unavailable, from_rpc_error
from tests.agents import forget_agent_keys, serving
from tests.waiting import eventually

SDK_DB = 6
TTL_S = 600.0


class Fenced:
    """An agent whose action and compensation can be held open, and a log of
    what each handler did, in completion order."""

    def __init__(self, *, redis_url: str = "", max_concurrency: int = 0) -> None:
        self.agent = Agent(
            f"agent-fence-{uuid.uuid4().hex[:10]}", agent_type="unit", grace_period_s=5.0,
            redis_url=redis_url, idempotency_ttl_s=TTL_S, max_concurrency=max_concurrency,
        )
        self.events: list[tuple[str, str, Any]] = []
        self.action_gate = asyncio.Event()
        self.action_gate.set()
        self.undo_gate = asyncio.Event()
        self.undo_gate.set()
        self.started: list[str] = []

        @self.agent.action("charge")
        async def charge(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            self.started.append(ctx.idempotency_key)
            await self.action_gate.wait()
            self.events.append(("effect", ctx.idempotency_key, inp))
            return {"charged": inp.get("amount", 0), "key": ctx.idempotency_key}

        @self.agent.compensation("refund")
        async def refund(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            await self.undo_gate.wait()
            self.events.append(("undo", ctx.idempotency_key, ctx.original_output))
            return {"refunded": True}

    def kinds(self) -> list[tuple[str, str]]:
        return [(kind, key) for kind, key, _ in self.events]


@pytest.fixture(params=["memory", "redis"])
async def fenced(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Fenced, agent_pb2_grpc.AgentServiceStub]]:
    url = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url_for_db(SDK_DB)
    f = Fenced(redis_url=url)
    try:
        async with serving(f.agent) as stub:
            yield f, stub
    finally:
        if url:
            forget_agent_keys(url, f.agent.agent_id)


def _exec(key: str, attempt: int = 1, amount: float = 5) -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(
        action="charge", input=dict_to_struct({"amount": amount}), idempotency_key=key,
        attempt=attempt,
    )


def _comp(
    key: str, original: dict[str, Any] | None = None, *, compensates: str = ""
) -> agent_pb2.CompensateRequest:
    req = agent_pb2.CompensateRequest(
        action="refund", input=dict_to_struct({"amount": 5}), idempotency_key=key, attempt=1,
        compensated_idempotency_key=compensates,
    )
    if original is not None:
        req.original_output.CopyFrom(dict_to_struct(original))
    return req


async def _expect_compensated(stub: agent_pb2_grpc.AgentServiceStub, key: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec(key, attempt=9), timeout=10)
    assert ei.value.code() == grpc.StatusCode.ABORTED
    err = from_rpc_error(ei.value)
    assert isinstance(err, Aborted)
    info = err.detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == REASON_COMPENSATED
    assert info.metadata["idempotency_key"] == key


def test_compensated_key_shapes() -> None:
    assert compensated_key("sg_1/charge/compensate") == "sg_1/charge"
    assert compensated_key("sg_1/ship[2]/compensate") == "sg_1/ship[2]"
    assert compensated_key("sg_1/poll#3/compensate") == "sg_1/poll#3"
    assert compensated_key("/compensate") is None
    assert compensated_key("sg_1/charge") is None
    assert compensated_key("k-comp") is None


async def test_compensate_waits_for_the_running_execute(fenced: Any) -> None:
    f, stub = fenced
    key = "sg_a/charge"
    f.action_gate.clear()
    execute = asyncio.ensure_future(stub.Execute(_exec(key), timeout=20))
    await eventually(lambda: f.started == [key])
    compensate = asyncio.ensure_future(stub.Compensate(_comp(key + "/compensate"), timeout=20))
    # Both calls are now inside the agent; the compensation must not have run.
    await eventually(lambda: f.agent.load.in_flight == 2)
    await asyncio.sleep(0.05)
    assert f.events == []
    f.action_gate.set()
    done = await execute
    comp = await compensate
    assert done.deduplicated is False and comp.deduplicated is False
    assert f.kinds() == [("effect", key), ("undo", key + "/compensate")]
    # The request carried no original_output: the Execute's output is passed on.
    assert f.events[1][2] == struct_to_dict(done.output)
    await _expect_compensated(stub, key)
    assert len(f.started) == 1  # the late Execute never reached the handler


async def test_execute_after_compensation_is_aborted_even_when_stored(fenced: Any) -> None:
    f, stub = fenced
    key = "sg_b/charge"
    first = await stub.Execute(_exec(key), timeout=10)
    # A retry before compensation is deduplicated as usual.
    assert (await stub.Execute(_exec(key, attempt=2), timeout=10)).deduplicated is True
    comp = await stub.Compensate(_comp(key + "/compensate"), timeout=10)
    # No Execute in flight: the stored output becomes original_output.
    assert f.events[-1] == ("undo", key + "/compensate", struct_to_dict(first.output))
    await _expect_compensated(stub, key)
    again = await stub.Compensate(_comp(key + "/compensate"), timeout=10)
    assert again.deduplicated is True and again.output == comp.output
    assert f.kinds() == [("effect", key), ("undo", key + "/compensate")]


async def test_compensate_before_any_execute_fences_the_key(fenced: Any) -> None:
    f, stub = fenced
    key = "sg_c/ship[1]"
    await stub.Compensate(_comp(key + "/compensate"), timeout=10)
    assert f.events == [("undo", key + "/compensate", None)]
    await _expect_compensated(stub, key)
    # Only that call site: the next map item and unconventional keys still run.
    assert (await stub.Execute(_exec("sg_c/ship[2]"), timeout=10)).deduplicated is False
    await stub.Compensate(_comp("k-free-form"), timeout=10)
    assert (await stub.Execute(_exec("k-free-form"), timeout=10)).deduplicated is False
    assert f.started == ["sg_c/ship[2]", "k-free-form"]


async def test_request_original_output_wins(fenced: Any) -> None:
    f, stub = fenced
    key = "sg_d/charge"
    await stub.Execute(_exec(key), timeout=10)
    await stub.Compensate(_comp(key + "/compensate", original={"from": "caller"}), timeout=10)
    assert f.events[-1][2] == {"from": "caller"}


async def test_execute_arriving_during_compensation_waits_and_is_aborted(fenced: Any) -> None:
    f, stub = fenced
    key = "sg_e/charge"
    f.undo_gate.clear()
    compensate = asyncio.ensure_future(stub.Compensate(_comp(key + "/compensate"), timeout=20))
    await eventually(lambda: f.agent.load.in_flight == 1)
    late = asyncio.ensure_future(stub.Execute(_exec(key), timeout=20))
    await eventually(lambda: f.agent.load.in_flight == 2)
    f.undo_gate.set()
    await compensate
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await late
    assert ei.value.code() == grpc.StatusCode.ABORTED
    assert f.started == []
    assert f.kinds() == [("undo", key + "/compensate")]


async def test_the_field_names_the_fenced_execute_whatever_the_compensate_key(
    fenced: Any,
) -> None:
    # New-style callers name the Execute in compensated_idempotency_key; the
    # Compensate's own key then needs no "/compensate" suffix.
    f, stub = fenced
    key = "sg_n/charge"
    f.action_gate.clear()
    execute = asyncio.ensure_future(stub.Execute(_exec(key), timeout=20))
    await eventually(lambda: f.started == [key])
    compensate = asyncio.ensure_future(
        stub.Compensate(_comp("refund-n-1", compensates=key), timeout=20)
    )
    await eventually(lambda: f.agent.load.in_flight == 2)
    await asyncio.sleep(0.05)
    assert f.events == []  # it waits for the Execute it undoes
    f.action_gate.set()
    done = await execute
    await compensate
    assert f.kinds() == [("effect", key), ("undo", "refund-n-1")]
    assert f.events[1][2] == struct_to_dict(done.output)
    await _expect_compensated(stub, key)


async def test_the_field_wins_over_the_suffix(fenced: Any) -> None:
    f, stub = fenced
    await stub.Compensate(_comp("sg_o/a/compensate", compensates="sg_o/b"), timeout=10)
    await _expect_compensated(stub, "sg_o/b")
    assert (await stub.Execute(_exec("sg_o/a"), timeout=10)).deduplicated is False
    assert f.started == ["sg_o/a"]


async def test_execute_arriving_during_new_style_compensation_waits_and_is_aborted(
    fenced: Any,
) -> None:
    f, stub = fenced
    key = "sg_p/charge"
    f.undo_gate.clear()
    compensate = asyncio.ensure_future(
        stub.Compensate(_comp("undo-p", compensates=key), timeout=20)
    )
    await eventually(lambda: f.agent.load.in_flight == 1)
    late = asyncio.ensure_future(stub.Execute(_exec(key), timeout=20))
    await eventually(lambda: f.agent.load.in_flight == 2)
    f.undo_gate.set()
    await compensate
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await late
    assert ei.value.code() == grpc.StatusCode.ABORTED
    assert f.started == []


async def test_compensate_deadline_while_execute_runs_is_unavailable_then_completes(
    fenced: Any,
) -> None:
    f, stub = fenced
    key = "sg_i/charge"
    f.action_gate.clear()
    execute = asyncio.ensure_future(stub.Execute(_exec(key), timeout=20))
    await eventually(lambda: f.started == [key])
    # Both the first Compensate and a retry that joins it answer before their
    # deadline: the compensation is waiting, it has not failed.
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.Compensate(_comp(key + "/compensate"), timeout=1.0)
        err = from_rpc_error(ei.value)
        assert isinstance(err, Unavailable) and err.reason == REASON_EXECUTE_IN_FLIGHT
    assert f.events == []
    f.action_gate.set()
    done = await execute
    # It ran once the Execute ended; the next retry gets its result.
    await eventually(lambda: len(f.events) == 2)
    again = await stub.Compensate(_comp(key + "/compensate"), timeout=10)
    assert again.deduplicated is True
    assert f.events[1] == ("undo", key + "/compensate", struct_to_dict(done.output))
    await _expect_compensated(stub, key)


async def test_tombstone_in_redis_has_the_store_ttl(redis_server: Any) -> None:
    url = redis_server.url_for_db(SDK_DB)
    f = Fenced(redis_url=url)
    r = aioredis.Redis.from_url(url)
    try:
        async with serving(f.agent) as stub:
            await stub.Compensate(_comp("sg_f/loop#2/compensate"), timeout=10)
            tomb = f"am:agent:{f.agent.agent_id}:idem:t:sg_f/loop#2"
            raw = await r.get(tomb)
            assert raw is not None and StoredResult.from_json(raw).action == "refund"
            ttl_ms = await r.pttl(tomb)
            assert 0 < ttl_ms <= TTL_S * 1000
    finally:
        await r.aclose()
        forget_agent_keys(url, f.agent.agent_id)


async def test_single_slot_agent_does_not_deadlock() -> None:
    # The Compensate waits for the Execute outside the concurrency limit,
    # so it cannot hold the only slot the Execute is queued for.
    f = Fenced(max_concurrency=1)
    async with serving(f.agent) as stub:
        f.action_gate.clear()
        blocker = asyncio.ensure_future(stub.Execute(_exec("sg_g/first"), timeout=20))
        await eventually(lambda: f.started == ["sg_g/first"])
        queued = asyncio.ensure_future(stub.Execute(_exec("sg_g/second"), timeout=20))
        await eventually(lambda: f.agent.load.in_flight == 2)  # queued for the slot
        comp = asyncio.ensure_future(
            stub.Compensate(_comp("sg_g/second/compensate"), timeout=20)
        )
        await eventually(lambda: f.agent.load.in_flight == 3)
        f.action_gate.set()
        await asyncio.gather(blocker, queued, comp)
        assert f.kinds() == [
            ("effect", "sg_g/first"), ("effect", "sg_g/second"),
            ("undo", "sg_g/second/compensate"),
        ]


class _TombstoneWriteFails(MemoryIdempotencyStore):
    async def put(self, namespace: str, key: str, result: StoredResult) -> None:
        if namespace == "t":
            raise ConnectionError("store down")
        await super().put(namespace, key, result)


async def test_tombstone_write_failure_is_unavailable_and_nothing_runs() -> None:
    f = Fenced()
    async with serving(f.agent) as stub:
        # A store whose writes fail, not a Redis mock.
        f.agent.executor.store = _TombstoneWriteFails()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.Compensate(_comp("sg_h/charge/compensate"), timeout=10)
        err = from_rpc_error(ei.value)
        assert isinstance(err, Unavailable) and err.reason == "IDEMPOTENCY_STORE_DOWN"
        assert f.events == []
