"""The coordinator meets an agent that refuses an Execute because its key was
already compensated (Agent SDK: ABORTED with ErrorInfo reason COMPENSATED).

The SDK records a tombstone for `<K>` when `<K>/compensate` runs; normally a
coordinator never executes a compensated call site again, so the refusal is
provoked here by compensating a step's key directly on the agent while an
earlier slow step still runs. The step must fail at once (a retry cannot
succeed): before the pivot the saga compensates, after it the saga is FAILED
instead of retrying forward forever."""

from __future__ import annotations

import grpc
import pytest

from agentmesh.agent import dict_to_struct
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.saga.v1 import saga_pb2
from tests.integration.saga.conftest import chain, effects, events, wait_final

pytestmark = pytest.mark.integration
S = saga_pb2


async def _start_and_fence(stub, agent, steps: list[S.Step], fenced_step: str) -> S.Saga:
    started = await stub.StartSaga(
        S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
    )
    saga_id = started.saga.saga_id
    # While the first (slow) step runs, compensate the second step's key on the agent.
    async with grpc.aio.insecure_channel(agent.target) as ch:
        await agent_pb2_grpc.AgentServiceStub(ch).Compensate(
            agent_pb2.CompensateRequest(
                action=f"undo_{fenced_step}", input=dict_to_struct({}),
                idempotency_key=f"{saga_id}/{fenced_step}/compensate", attempt=1,
            ),
            timeout=10,
        )
    return await wait_final(stub, saga_id)


async def _charge_attempts(stub, saga_id: str) -> tuple[int, int]:
    evs = await events(stub, saga_id)
    started = sum(
        1 for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "charge"
    )
    retried = sum(
        1 for e in evs
        if e.type == S.SAGA_EVENT_TYPE_STEP_ATTEMPT_FAILED and e.step_name == "charge"
    )
    return started, retried


async def test_compensated_key_fails_the_step_and_the_saga_compensates(
    stub, rsync, agent
) -> None:
    steps = chain("reserve", "charge")
    steps[0].action = "slow_reserve"
    saga = await _start_and_fence(stub, agent, steps, "charge")
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert (saga.error.step_name, saga.error.code) == ("charge", "ABORTED")
    assert await _charge_attempts(stub, saga.saga_id) == (1, 0)  # not retried
    assert effects(rsync, saga.saga_id) == {f"{saga.saga_id}/reserve": 1}  # charge never ran
    assert effects(rsync, saga.saga_id, "comp") == {
        f"{saga.saga_id}/reserve/compensate": 1,
        f"{saga.saga_id}/charge/compensate": 1,  # the direct call; the saga's was deduplicated
    }


async def test_compensated_key_after_the_pivot_fails_the_saga(stub, rsync, agent) -> None:
    steps = chain("reserve", "charge")
    steps[0].action = "slow_reserve"
    steps[0].is_pivot = True
    steps[0].compensation_action = ""
    saga = await _start_and_fence(stub, agent, steps, "charge")
    # Forward retries cannot succeed against the tombstone: someone must intervene.
    assert saga.state == S.SAGA_STATE_FAILED
    assert (saga.error.step_name, saga.error.code) == ("charge", "ABORTED")
    assert await _charge_attempts(stub, saga.saga_id) == (1, 0)
    assert effects(rsync, saga.saga_id) == {f"{saga.saga_id}/reserve": 1}


async def test_timed_out_step_is_compensated_after_its_late_effect(stub, rsync, agent) -> None:
    # hang_b keeps running on the agent for 3 s after its 300 ms attempts time
    # out (the SDK never tears a handler). Its compensation must wait for it
    # (the agent answers EXECUTE_IN_FLIGHT meanwhile), not undo it too early.
    steps = chain("a", "b")
    steps[1].action = "hang_b"
    steps[1].timeout.FromMilliseconds(300)
    steps[1].retry_policy.CopyFrom(S.RetryPolicy(max_attempts=2))
    steps[1].retry_policy.initial_backoff.FromMilliseconds(10)
    started = await stub.StartSaga(S.StartSagaRequest(definition=S.SagaDefinition(steps=steps)))
    saga = await wait_final(stub, started.saga.saga_id)
    assert saga.state == S.SAGA_STATE_COMPENSATED
    sid = saga.saga_id
    log = [e for e in rsync.lrange("am:saga:test:saga-agent-a:log", 0, -1) if sid in e]
    assert log.index(f"exec|{sid}/b") < log.index(f"comp|{sid}/b/compensate")
    assert effects(rsync, sid) == {f"{sid}/a": 1, f"{sid}/b": 1}
    assert effects(rsync, sid, "comp") == {f"{sid}/a/compensate": 1, f"{sid}/b/compensate": 1}
    waited = [
        e for e in await events(stub, sid)
        if e.type == S.SAGA_EVENT_TYPE_STEP_COMPENSATION_ATTEMPT_FAILED and e.step_name == "b"
    ]
    assert waited and all(e.error.code == "UNAVAILABLE" for e in waited)
