"""Agent SDK behaviour through a real gRPC server on loopback (no Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from agentmesh.agent import ActionContext, Agent, dict_to_struct, struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.errors import Aborted, InvalidArgument, Unavailable, from_rpc_error
from tests.agents import serving
from tests.waiting import eventually


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    return dict_to_struct(d)


class Harness:
    def __init__(self) -> None:
        self.agent = Agent("agent-unit-1", agent_type="unit", version="1.0.0",
                           capabilities=["unit"], grace_period_s=5.0)
        self.calls: list[tuple[str, dict[str, Any], ActionContext]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next: list[BaseException] = []
        a = self.agent

        @a.action("add")
        async def add(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            self.calls.append(("add", inp, ctx))
            await self.gate.wait()
            if self.fail_next:
                raise self.fail_next.pop(0)
            return {"sum": inp["a"] + inp["b"], "remaining_s": ctx.remaining_s}

        @a.action("numpy")
        def numpy_action(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            self.calls.append(("numpy", inp, ctx))
            return {"total": np.float64(2.5), "v": np.arange(3)}

        @a.action("bad-return")
        async def bad(inp: dict[str, Any], ctx: ActionContext) -> Any:
            return [1, 2]

        @a.compensation("add")
        async def undo(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            self.calls.append(("undo", inp, ctx))
            return {"undone": ctx.original_output}

        @a.evaluate("sphere")
        def sphere(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
            return np.sum(x * x, axis=1) * float(params.get("scale", 1.0))

        @a.evaluate("short")
        def short(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
            return np.zeros(1)

    def executions(self, action: str = "add") -> int:
        return sum(1 for name, _, _ in self.calls if name == action)


@pytest.fixture
async def h() -> AsyncIterator[tuple[Harness, agent_pb2_grpc.AgentServiceStub]]:
    harness = Harness()
    async with serving(harness.agent) as stub:
        yield harness, stub


def _exec(key: str = "", attempt: int = 1, a: float = 1, b: float = 2, action: str = "add",
          **md: str) -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(
        action=action, input=_struct({"a": a, "b": b}), idempotency_key=key, attempt=attempt,
        metadata=md,
    )


async def test_execute_returns_output_and_agent_id(h: Any) -> None:
    _, stub = h
    resp = await stub.Execute(_exec(), timeout=5)
    assert struct_to_dict(resp.output)["sum"] == 3
    assert resp.agent_id == "agent-unit-1"
    assert resp.deduplicated is False


async def test_concurrent_duplicates_execute_once(h: Any) -> None:
    harness, stub = h
    harness.gate.clear()
    calls = [asyncio.ensure_future(stub.Execute(_exec("saga-1/step-a"), timeout=10))
             for _ in range(6)]
    # Every duplicate is waiting while the first is still blocked in the handler.
    await eventually(lambda: harness.agent.load.in_flight == 6)
    assert harness.executions() == 1
    harness.gate.set()
    resps = await asyncio.gather(*calls)
    assert harness.executions() == 1
    assert sorted(r.deduplicated for r in resps) == [False] + [True] * 5
    assert {struct_to_dict(r.output)["sum"] for r in resps} == {3}


async def test_retry_after_completion_returns_stored_result(h: Any) -> None:
    harness, stub = h
    first = await stub.Execute(_exec("saga-2/step-a", attempt=1), timeout=5)
    again = await stub.Execute(_exec("saga-2/step-a", attempt=2, a=100), timeout=5)
    assert harness.executions() == 1
    assert first.deduplicated is False and again.deduplicated is True
    assert again.output == first.output  # the stored output, not a recomputation


async def test_failure_is_not_stored_and_retry_runs_again(h: Any) -> None:
    harness, stub = h
    harness.fail_next.append(Unavailable("transient", reason="TEST"))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec("k-fail", attempt=1), timeout=5)
    err = from_rpc_error(ei.value)
    assert isinstance(err, Unavailable) and err.reason == "TEST"
    resp = await stub.Execute(_exec("k-fail", attempt=2), timeout=5)
    assert resp.deduplicated is False
    assert harness.executions() == 2
    assert [c.attempt for _, _, c in harness.calls] == [1, 2]


async def test_unknown_action_is_invalid_argument(h: Any) -> None:
    _, stub = h
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec(action="nope"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(ei.value)
    assert isinstance(err, InvalidArgument)
    assert [f for f, _ in err.field_violations] == ["action"]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ValueError("bad spend"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
        (ConnectionError("db down"), grpc.StatusCode.UNAVAILABLE),
        (Aborted("conflict"), grpc.StatusCode.ABORTED),
        (TimeoutError("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_handler_exceptions_map_to_status(h: Any, exc: Exception,
                                                code: grpc.StatusCode) -> None:
    harness, stub = h
    harness.fail_next.append(exc)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec("k-map"), timeout=5)
    assert ei.value.code() == code
    assert str(exc) in (ei.value.details() or "")


async def test_context_carries_deadline_attempt_and_metadata(h: Any) -> None:
    harness, stub = h
    resp = await stub.Execute(_exec("k-ctx", attempt=3, saga_id="s-1"), timeout=2.0)
    _, _, ctx = harness.calls[-1]
    assert ctx.attempt == 3
    assert ctx.idempotency_key == "k-ctx"
    assert ctx.metadata == {"saga_id": "s-1"}
    remaining = struct_to_dict(resp.output)["remaining_s"]
    assert 0 < remaining <= 2.5  # the server sees the deadline on its own clock
    await stub.Execute(_exec(), timeout=None)
    assert harness.calls[-1][2].remaining_s is None


async def test_caller_giving_up_does_not_tear_the_action(h: Any) -> None:
    harness, stub = h
    harness.gate.clear()
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec("k-slow"), timeout=0.3)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    harness.gate.set()
    resp = await stub.Execute(_exec("k-slow", attempt=2), timeout=5)
    assert harness.executions() == 1
    assert resp.deduplicated is True


async def test_key_reused_for_another_action_is_rejected(h: Any) -> None:
    _, stub = h
    await stub.Execute(_exec("k-reuse"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec("k-reuse", action="numpy"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in [f for f, _ in from_rpc_error(ei.value).field_violations]  # type: ignore[attr-defined]


async def test_numpy_outputs_and_sync_handlers(h: Any) -> None:
    _, stub = h
    resp = await stub.Execute(_exec(action="numpy"), timeout=5)
    assert struct_to_dict(resp.output) == {"total": 2.5, "v": [0.0, 1.0, 2.0]}


async def test_non_dict_output_is_internal(h: Any) -> None:
    _, stub = h
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Execute(_exec(action="bad-return"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INTERNAL


async def test_compensate_dedupes_separately_and_gets_original_output(h: Any) -> None:
    harness, stub = h
    await stub.Execute(_exec("k-comp"), timeout=5)
    req = agent_pb2.CompensateRequest(
        action="add", input=_struct({"a": 1, "b": 2}), original_output=_struct({"sum": 3}),
        idempotency_key="k-comp", attempt=1,
    )
    first = await stub.Compensate(req, timeout=5)
    again = await stub.Compensate(req, timeout=5)
    assert harness.executions("undo") == 1
    assert (first.deduplicated, again.deduplicated) == (False, True)
    assert struct_to_dict(first.output) == {"undone": {"sum": 3}}
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Compensate(agent_pb2.CompensateRequest(action="numpy"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_evaluate_batches(h: Any) -> None:
    _, stub = h
    resp = await stub.Evaluate(
        agent_pb2.EvaluateRequest(objective="sphere", dimensions=2, positions=[1, 2, 3, 4, 0, 0],
                                  parameters=_struct({"scale": 2})),
        timeout=5,
    )
    assert list(resp.fitness) == [10.0, 50.0, 0.0]
    for req in (
        agent_pb2.EvaluateRequest(objective="sphere", dimensions=4, positions=[1, 2, 3]),
        agent_pb2.EvaluateRequest(objective="sphere", dimensions=0, positions=[1]),
        agent_pb2.EvaluateRequest(objective="nope", dimensions=1, positions=[1]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.Evaluate(req, timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert from_rpc_error(ei.value).detail(error_details_pb2.BadRequest) is not None
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Evaluate(
            agent_pb2.EvaluateRequest(objective="short", dimensions=1, positions=[1, 2]), timeout=5
        )
    assert ei.value.code() == grpc.StatusCode.INTERNAL


async def test_load_tracks_queue_and_errors(h: Any) -> None:
    harness, stub = h
    harness.gate.clear()
    pending = asyncio.ensure_future(stub.Execute(_exec("k-load"), timeout=5))
    await eventually(lambda: harness.executions() == 1)
    assert harness.agent.load.snapshot().queue_size == 1
    harness.gate.set()
    await pending
    harness.fail_next.append(Unavailable("x"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Execute(_exec(), timeout=5)
    snap = harness.agent.load.snapshot()
    assert snap.queue_size == 0
    assert snap.error_rate == pytest.approx(0.5)
    assert snap.processing_time_ms > 0 and snap.response_time_ms >= snap.processing_time_ms
    assert 0.0 <= snap.cpu_percent <= 100.0 and snap.memory_percent > 0


async def test_declaring_twice_and_serving_nothing_fail() -> None:
    a = Agent("agent-empty")
    with pytest.raises(ValueError):
        await a.start()

    @a.action("x")
    async def x(inp: dict[str, Any], ctx: ActionContext) -> None:
        return None

    with pytest.raises(ValueError):
        a.action("x")(x)


async def test_serve_all_runs_several_agents_until_signalled() -> None:
    import os
    import signal

    from agentmesh.agent import serve_all

    agents = []
    for i in range(3):
        a = Agent(f"agent-many-{i}")

        @a.action("who")
        async def who(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            return {"agent": ctx.agent_id}

        agents.append(a)
    task = asyncio.ensure_future(serve_all(agents))
    await eventually(lambda: all(a.port for a in agents))
    for a in agents:
        async with grpc.aio.insecure_channel(a.endpoint) as ch:
            resp = await agent_pb2_grpc.AgentServiceStub(ch).Execute(
                agent_pb2.ExecuteRequest(action="who"), timeout=5)
        assert struct_to_dict(resp.output) == {"agent": a.agent_id}
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 20)
    assert all(a._stopped.is_set() for a in agents)
