"""One path to every agent: router Invoke, saga steps and swarm partitions meet
the same guardrails (shared breakers, safety rules on the real payload, one
hash ring), with real router, saga coordinator, swarm engine and agent
processes on one real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import router_pb2_grpc
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.saga.v1 import saga_pb2 as S
from agentmesh.saga.v1 import saga_pb2_grpc
from agentmesh.swarm.v1 import swarm_pb2 as W
from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.integration.router.conftest import Procs
from tests.procs import DaemonProcess, daemon

pytestmark = pytest.mark.integration

#: Every daemon that calls agents gets the same guardrail settings.
GUARDS = (
    "--state-ttl-ms", "100", "--gen-poll-ms", "50",
    "--breaker-failure-threshold", "2", "--breaker-open-ms", "120000",
    "--outlier-min-requests", "1000", "--panic-threshold", "0",
)


def cap() -> str:
    return f"oap-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def mesh(procs: Procs) -> Iterator[dict[str, DaemonProcess]]:
    """A router, a saga coordinator and a swarm engine on the module's Redis."""
    url = procs.redis_url
    out = {
        "router": procs.start(daemon("router", procs.tmp, "--redis-url", url, *GUARDS)),
        "saga": procs.start(daemon("saga", procs.tmp, "--redis-url", url, *GUARDS)),
        "swarm": procs.start(daemon("swarm", procs.tmp, "--redis-url", url, *GUARDS)),
    }
    yield out


async def start_agents(procs: Procs, capability: str, ids: list[str]) -> None:
    """Start agents with `capability`; each fails while `am:rt:test:fail:<id>` exists."""
    await asyncio.gather(
        *(
            asyncio.to_thread(
                procs.agent, a, "--fail-key", f"am:rt:test:fail:{a}", capability=capability
            )
            for a in ids
        )
    )
    await asyncio.sleep(0.3)  # the daemons' candidate snapshots see them


def payload(**kv: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kv)
    return s


async def invoke(mesh: dict[str, DaemonProcess], msg: R.RouteMessage) -> R.InvokeResponse:
    async with grpc.aio.insecure_channel(mesh["router"].target) as ch:
        return await router_pb2_grpc.RouterServiceStub(ch).Invoke(
            R.InvokeRequest(
                message=msg, action=msg.message_type, idempotency_key=uuid.uuid4().hex,
                retry_policy=R.RetryPolicy(max_attempts=1),
            ),
            timeout=10,
        )


async def open_breaker_by_router(
    mesh: dict[str, DaemonProcess], rdb: aioredis.Redis, agent_id: str, capability: str
) -> None:
    """Fail `agent_id` twice through router Invoke, so its breaker opens."""
    await rdb.set(f"am:rt:test:fail:{agent_id}", 1)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await invoke(mesh, R.RouteMessage(message_type=capability, target_ids=[agent_id]))
    await rdb.delete(f"am:rt:test:fail:{agent_id}")
    assert await rdb.hget(f"am:rt:target:{{{agent_id}}}", "state") == b"OPEN"
    await asyncio.sleep(0.4)  # every daemon's pool snapshot refreshes (state_ttl_ms=100)


async def run_saga(
    mesh: dict[str, DaemonProcess], step: S.Step, input: dict[str, Any] | None = None
) -> S.Saga:
    async with grpc.aio.insecure_channel(mesh["saga"].target) as ch:
        req = S.StartSagaRequest(definition=S.SagaDefinition(steps=[step]))
        if input:
            req.input.update(input)
        sid = (await saga_pb2_grpc.SagaServiceStub(ch).StartSaga(req)).saga.saga_id
    return await run_saga_wait(mesh["saga"], sid)


def saga_step(capability: str, *, agent_id: str = "", attempts: int = 1) -> S.Step:
    st = S.Step(name="s", action=capability, compensation_action="")
    if agent_id:
        st.agent_id = agent_id
    else:
        st.selector.CopyFrom(common_pb2.AgentSelector(capabilities=[capability]))
    st.retry_policy.max_attempts = attempts
    st.retry_policy.initial_backoff.FromMilliseconds(50)
    return st


async def run_swarm(
    mesh: dict[str, DaemonProcess], capability: str, *, partitions: int, **input: Any
) -> W.Swarm:
    task = W.SwarmTask(
        objective="one agent path",
        agents_required=1,
        data_partitions=partitions,
        seed=1,
        partition_work=W.PartitionWork(
            selector=common_pb2.AgentSelector(capabilities=[capability]),
            action=capability,
            input=payload(**input),
            aggregate_fields=["attempt"],
            max_attempts=1,
        ),
    )
    task.partition_work.partition_timeout.FromSeconds(5)
    task.timeout.FromSeconds(30)
    async with grpc.aio.insecure_channel(mesh["swarm"].target) as ch:
        stub = swarm_pb2_grpc.SwarmServiceStub(ch)
        sid = (await stub.DeploySwarm(W.DeploySwarmRequest(task=task))).swarm.swarm_id
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            sw = (await stub.GetSwarm(W.GetSwarmRequest(swarm_id=sid))).swarm
            if sw.state in (W.SWARM_STATE_COMPLETED, W.SWARM_STATE_FAILED, W.SWARM_STATE_STOPPED):
                return sw
            await asyncio.sleep(0.1)
    raise AssertionError(f"swarm {sid} did not finish")


async def test_breaker_opened_by_router_traffic_fails_saga_steps_over(
    procs: Procs, mesh: dict[str, DaemonProcess], rdb: aioredis.Redis
) -> None:
    c = cap()
    a1, a2 = f"oap-a1-{c}", f"oap-a2-{c}"
    await start_agents(procs, c, [a1, a2])
    await open_breaker_by_router(mesh, rdb, a1, c)
    # Six selector steps with distinct keys: without the shared breaker about
    # half of them would hash to a1 (all six on a2 by chance: 1 in 64).
    sagas = await asyncio.gather(*(run_saga(mesh, saga_step(c)) for _ in range(6)))
    assert [s.state for s in sagas] == [S.SAGA_STATE_COMPLETED] * 6
    assert {s.steps[0].output["agent_id"] for s in sagas} == {a2}
    # a2 opened too: no agent is left, the step fails with NO_HEALTHY_TARGET
    await open_breaker_by_router(mesh, rdb, a2, c)
    s = await run_saga(mesh, saga_step(c))
    assert s.state in (S.SAGA_STATE_FAILED, S.SAGA_STATE_COMPENSATED)
    assert s.steps[0].error.code == "UNAVAILABLE"
    assert "no healthy target" in s.steps[0].error.message


async def test_saga_failures_open_the_breaker_for_router_traffic(
    procs: Procs, mesh: dict[str, DaemonProcess], rdb: aioredis.Redis
) -> None:
    c = cap()
    aid = f"oap-sick-{c}"
    await rdb.set(f"am:rt:test:fail:{aid}", 1)
    await start_agents(procs, c, [aid])
    s = await run_saga(mesh, saga_step(c, agent_id=aid, attempts=3))
    assert s.state in (S.SAGA_STATE_FAILED, S.SAGA_STATE_COMPENSATED)
    assert await rdb.hget(f"am:rt:target:{{{aid}}}", "state") == b"OPEN"
    await rdb.delete(f"am:rt:test:fail:{aid}")  # healthy again, but its breaker is open
    await asyncio.sleep(0.4)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await invoke(mesh, R.RouteMessage(message_type=c, target_ids=[aid]))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    info = from_rpc_error(e.value).detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "NO_HEALTHY_TARGET"


async def test_breaker_shared_with_swarm_partitions(
    procs: Procs, mesh: dict[str, DaemonProcess], rdb: aioredis.Redis
) -> None:
    c = cap()
    a1, a2 = f"oap-w1-{c}", f"oap-w2-{c}"
    await start_agents(procs, c, [a1, a2])
    await open_breaker_by_router(mesh, rdb, a1, c)
    sw = await run_swarm(mesh, c, partitions=12)
    assert sw.state == W.SWARM_STATE_COMPLETED, sw.error_message
    assert dict(sw.partitions.partitions_by_agent) == {a2: 12}
    # partition failures count toward the breaker router traffic sees
    a3 = f"oap-w3-{c}"
    c3 = cap()
    await rdb.set(f"am:rt:test:fail:{a3}", 1)
    await start_agents(procs, c3, [a3])
    sw = await run_swarm(mesh, c3, partitions=4)
    assert sw.state == W.SWARM_STATE_FAILED
    assert await rdb.hget(f"am:rt:target:{{{a3}}}", "state") == b"OPEN"
    await rdb.delete(f"am:rt:test:fail:{a3}")
    await asyncio.sleep(0.4)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await invoke(mesh, R.RouteMessage(message_type=c3, target_ids=[a3]))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_one_safety_rule_blocks_invoke_saga_step_and_swarm_partition(
    procs: Procs, mesh: dict[str, DaemonProcess]
) -> None:
    c = cap()
    aid = f"oap-safe-{c}"
    await start_agents(procs, c, [aid])
    rule = R.SafetyRule(
        name=f"amount-cap-{c}",
        description="no single transfer above 1000",
        condition="payload.amount <= 1000",  # a safety condition must hold: blocks amount > 1000
        level=R.SAFETY_LEVEL_CRITICAL,
        message_types=[c],
    )
    async with grpc.aio.insecure_channel(mesh["router"].target) as ch:
        rstub = router_pb2_grpc.RouterServiceStub(ch)
        await rstub.CreateSafetyRule(R.CreateSafetyRuleRequest(rule=rule))
        try:
            await asyncio.sleep(0.4)  # every daemon polls the rules (gen_poll_ms=50)
            # under the limit: all three paths go through
            ok = await invoke(
                mesh, R.RouteMessage(message_type=c, target_ids=[aid],
                                     payload=common_pb2.Payload(struct_value=payload(amount=999)))
            )
            assert ok.agent_id == aid
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await invoke(
                    mesh, R.RouteMessage(message_type=c, target_ids=[aid],
                                         payload=common_pb2.Payload(struct_value=payload(amount=1500)))
                )
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            router_message = e.value.details()
            pf = from_rpc_error(e.value).detail(error_details_pb2.PreconditionFailure)
            assert isinstance(pf, error_details_pb2.PreconditionFailure)
            assert [(v.type, v.subject) for v in pf.violations] == [("SAFETY", rule.name)]
            info = from_rpc_error(e.value).detail(error_details_pb2.ErrorInfo)
            assert isinstance(info, error_details_pb2.ErrorInfo)
            assert info.reason == "SAFETY_VIOLATION"

            done = await run_saga(mesh, saga_step(c, agent_id=aid), {"amount": 999})
            assert done.state == S.SAGA_STATE_COMPLETED
            blocked = await run_saga(mesh, saga_step(c, agent_id=aid), {"amount": 1500})
            assert blocked.state in (S.SAGA_STATE_FAILED, S.SAGA_STATE_COMPENSATED)
            assert blocked.steps[0].error.code == "FAILED_PRECONDITION"
            assert blocked.steps[0].error.message == router_message

            sw = await run_swarm(mesh, c, partitions=2, amount=999)
            assert sw.state == W.SWARM_STATE_COMPLETED, sw.error_message
            sw = await run_swarm(mesh, c, partitions=2, amount=1500)
            assert sw.state == W.SWARM_STATE_FAILED
            assert f"{aid}: FAILED_PRECONDITION: {router_message}" in sw.error_message
        finally:
            await rstub.DeleteSafetyRule(R.DeleteSafetyRuleRequest(name=rule.name))


async def test_router_down_saga_retry_lands_where_the_router_would_route(
    procs: Procs, mesh: dict[str, DaemonProcess], rdb: aioredis.Redis
) -> None:
    c = cap()
    ids = [f"oap-h{i}-{c}" for i in range(3)]
    for a in ids:
        await rdb.set(f"am:rt:test:fail:{a}", 1)
    await start_agents(procs, c, ids)
    # No router is involved in the saga's placement: stop it for the run. A
    # coordinator of its own keeps the default breaker threshold (5), so the
    # failing attempts below do not open the agent's breaker.
    mesh["router"].stop()
    coord = procs.start(daemon("saga", procs.tmp, "--redis-url", procs.redis_url))
    try:
        async with grpc.aio.insecure_channel(coord.target) as ch:
            stub = saga_pb2_grpc.SagaServiceStub(ch)
            step = saga_step(c, attempts=5)
            step.retry_policy.initial_backoff.FromMilliseconds(300)
            started = await stub.StartSaga(
                S.StartSagaRequest(definition=S.SagaDefinition(steps=[step]))
            )
            sid = started.saga.saga_id
            deadline = time.monotonic() + 10
            while (await stub.GetSaga(S.GetSagaRequest(saga_id=sid))).saga.steps[0].attempts < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            for a in ids:  # the first attempt failed; let the retry through
                await rdb.delete(f"am:rt:test:fail:{a}")
        s = await run_saga_wait(coord, sid)
    finally:
        coord.stop()
        mesh["router"] = procs.start(
            daemon("router", procs.tmp, "--redis-url", procs.redis_url, *GUARDS)
        )
    assert s.state == S.SAGA_STATE_COMPLETED
    out = s.steps[0].output
    assert s.steps[0].attempts >= 2 and out["attempt"] >= 2
    assert out["calls"] == out["attempt"]  # every attempt reached this same agent
    async with grpc.aio.insecure_channel(mesh["router"].target) as ch:
        routed = await router_pb2_grpc.RouterServiceStub(ch).Route(
            R.RouteRequest(
                message=R.RouteMessage(
                    message_type=c, routing_key=f"{sid}/s",
                    selector=common_pb2.AgentSelector(capabilities=[c]),
                ),
                strategy=R.STRATEGY_CONSISTENT_HASH,
            )
        )
    assert out["agent_id"] == routed.targets[0].agent_id


async def run_saga_wait(coord: DaemonProcess, sid: str) -> S.Saga:
    async with grpc.aio.insecure_channel(coord.target) as ch:
        stub = saga_pb2_grpc.SagaServiceStub(ch)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = (await stub.GetSaga(S.GetSagaRequest(saga_id=sid))).saga
            if s.state in (S.SAGA_STATE_COMPLETED, S.SAGA_STATE_FAILED, S.SAGA_STATE_COMPENSATED):
                return s
            await asyncio.sleep(0.05)
    raise AssertionError(f"saga {sid} did not finish")
