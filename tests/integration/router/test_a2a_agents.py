"""A2A agents on the one agent path: a real A2A agent built with a2a-sdk
(tests/a2a_agent.py), registered by its card through a real registry, reached
by router Invoke and saga steps through real router and saga daemons; task
states become outcomes, a failing task compensates the saga, and repeated
failures open the breaker every caller shares."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format
from google.rpc import error_details_pb2

from agentmesh.registry.v1 import registry_pb2 as G
from agentmesh.registry.v1 import registry_pb2_grpc
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import router_pb2_grpc
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.saga.v1 import saga_pb2 as S
from agentmesh.saga.v1 import saga_pb2_grpc
from tests.integration.router.conftest import Procs
from tests.integration.router.test_one_agent_path import GUARDS, run_saga_wait
from tests.procs import ROOT, DaemonProcess, daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration


class Mesh:
    """Registry, router and saga daemons, an A2A agent, their channels."""

    def __init__(self, procs: Procs) -> None:
        url = procs.redis_url
        self.registry = procs.start(daemon("registry", procs.tmp, "--redis-url", url))
        self.router = procs.start(daemon("router", procs.tmp, "--redis-url", url, *GUARDS))
        self.saga = procs.start(daemon("saga", procs.tmp, "--redis-url", url, *GUARDS))
        self.agent = procs.start(DaemonProcess(
            [str(ROOT / "tests" / "a2a_agent.py"), "--name", "booking"],
            procs.tmp / "a2a-booking.log",
        ))

    async def start_saga(self, req: S.StartSagaRequest) -> str:
        async with grpc.aio.insecure_channel(self.saga.target) as ch:
            return str((await saga_pb2_grpc.SagaServiceStub(ch).StartSaga(req)).saga.saga_id)

    @property
    def card_url(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}/.well-known/agent-card.json"

    async def register(self, agent_id: str) -> G.Agent:
        async with grpc.aio.insecure_channel(self.registry.target) as ch:
            resp = await registry_pb2_grpc.RegistryServiceStub(ch).RegisterA2AAgent(
                G.RegisterA2AAgentRequest(agent_id=agent_id, agent_card_url=self.card_url)
            )
        return resp.agent

    async def invoke(self, agent_id: str, action: str, key: str = "", **input: Any) -> Any:
        msg = R.RouteMessage(message_type=action, target_ids=[agent_id])
        msg.payload.struct_value.update(input)
        req = R.InvokeRequest(
            message=msg, action=action, idempotency_key=key or uuid.uuid4().hex,
            retry_policy=R.RetryPolicy(max_attempts=1),
        )
        req.retry_policy.attempt_timeout.FromMilliseconds(1500)
        async with grpc.aio.insecure_channel(self.router.target) as ch:
            return await router_pb2_grpc.RouterServiceStub(ch).Invoke(req, timeout=10)


@pytest.fixture(scope="module")
def mesh(procs: Procs) -> Mesh:
    """The module's daemons and A2A agent (stopped with `procs`)."""
    return Mesh(procs)


async def calls_seen(mesh: Mesh, agent_id: str) -> list[list[str]]:
    """[[skill, idempotency_key], ...] the A2A agent received."""
    out = await mesh.invoke(agent_id, "calls")
    return [list(x) for x in json_format.MessageToDict(out.output)["calls"]]


async def test_invoke_reaches_the_a2a_agent_and_task_states_become_outcomes(
    mesh: Mesh,
) -> None:
    aid = f"agent-a2a-{uuid.uuid4().hex[:6]}"
    assert (await mesh.register(aid)).protocol == G.AGENT_PROTOCOL_A2A
    key = uuid.uuid4().hex
    out = await mesh.invoke(aid, "quote", key, seats=2)
    assert out.agent_id == aid
    assert json_format.MessageToDict(out.output) == {"quote": {"seats": 2.0}, "agent": "booking"}
    assert ["quote", key] in await calls_seen(mesh, aid)  # the key rode in message metadata
    for action, code, text in (
        ("book_fail", grpc.StatusCode.FAILED_PRECONDITION, "no seats left"),
        ("reject", grpc.StatusCode.FAILED_PRECONDITION, "not allowed here"),
        ("cancel_me", grpc.StatusCode.CANCELLED, "canceled by the agent"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.invoke(aid, action)
        assert e.value.code() == code, action
        assert text in (e.value.details() or ""), action
    # a long-running task finishes within the attempt timeout
    out = await mesh.invoke(aid, "slow", seconds=0.3)
    assert json_format.MessageToDict(out.output)["quote"] == {"seconds": 0.3}


async def test_a_failing_a2a_task_compensates_the_saga(mesh: Mesh) -> None:
    aid = f"agent-a2a-{uuid.uuid4().hex[:6]}"
    await mesh.register(aid)
    quote = S.Step(name="quote", action="quote", compensation_action="undo", agent_id=aid)
    book = S.Step(name="book", action="book_fail", agent_id=aid, depends_on=["quote"])
    for st in (quote, book):
        st.retry_policy.max_attempts = 1
    req = S.StartSagaRequest(definition=S.SagaDefinition(steps=[quote, book]))
    req.input.update({"seats": 1})
    sid = await mesh.start_saga(req)
    s = await run_saga_wait(mesh.saga, sid)
    assert s.state == S.SAGA_STATE_COMPENSATED
    by_name = {st.name: st for st in s.steps}
    assert by_name["quote"].output["agent"] == "booking"
    assert by_name["book"].error.code == "FAILED_PRECONDITION"
    assert "no seats left" in by_name["book"].error.message
    seen = await calls_seen(mesh, aid)
    assert ["quote", f"{sid}/quote"] in seen
    assert ["undo", f"{sid}/quote/compensate"] in seen


async def test_repeated_failures_open_the_breaker(mesh: Mesh, rdb: aioredis.Redis) -> None:
    aid = f"agent-a2a-{uuid.uuid4().hex[:6]}"
    await mesh.register(aid)
    # timeouts count against the agent (GUARDS: threshold 2)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.invoke(aid, "slow", seconds=5)
        # the router's verdict after its one attempt timed out, as for a gRPC agent
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "DEADLINE_EXCEEDED" in (e.value.details() or "")
    assert await rdb.hget(f"am:rt:target:{{{aid}}}", "state") == b"OPEN"

    async def refused() -> bool:
        try:
            await mesh.invoke(aid, "quote")
        except grpc.aio.AioRpcError as e:
            info = from_rpc_error(e).detail(error_details_pb2.ErrorInfo)
            return isinstance(info, error_details_pb2.ErrorInfo) and (
                info.reason == "NO_HEALTHY_TARGET"
            )
        return False

    await eventually(refused, timeout_s=10, every_s=0.1, what="the open breaker refuses calls")
    # the saga coordinator shares the breaker: its step is refused too
    step = S.Step(name="s", action="quote", agent_id=aid)
    step.retry_policy.max_attempts = 1
    sid = await mesh.start_saga(S.StartSagaRequest(definition=S.SagaDefinition(steps=[step])))
    s = await run_saga_wait(mesh.saga, sid)
    assert s.steps[0].error.code == "UNAVAILABLE"
    assert "no healthy target" in s.steps[0].error.message



async def test_scatter_gather_reaches_every_a2a_target(mesh: Mesh) -> None:
    a1, a2 = (f"agent-a2a-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for aid in (a1, a2):
        await mesh.register(aid)
    msg = R.RouteMessage(message_type="quote")
    msg.payload.struct_value.update({"seats": 4})
    req = R.ScatterGatherRequest(message=msg, action="quote", target_ids=[a1, a2],
                                 min_responses=2)
    req.timeout.FromSeconds(5)
    async with grpc.aio.insecure_channel(mesh.router.target) as ch:
        resp = await router_pb2_grpc.RouterServiceStub(ch).ScatterGather(req, timeout=10)
    assert resp.succeeded == 2 and resp.failed == 0
    assert {r.agent_id for r in resp.responses} == {a1, a2}
    assert all(json_format.MessageToDict(r.output)["quote"] == {"seats": 4.0}
               for r in resp.responses)
