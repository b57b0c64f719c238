"""SagaService API behaviour: idempotent start, registered definitions, the CSRD
saga, cancel, watch/resume, listing and selector targets."""

from __future__ import annotations

import grpc
import pytest

from agentmesh.common.v1 import common_pb2
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.state import struct_to_dict
from tests.integration.saga.conftest import chain, effects, events, order, run, step, wait_final
from tests.waiting import eventually

pytestmark = pytest.mark.integration
S = saga_pb2

CSRD = ("collect", "validate", "calculate", "generate", "publish")


def csrd_definition(*, fail_calculate: bool = False) -> S.SagaDefinition:
    """The seeds' CSRD report saga: generate is the pivot (no rollback after it)."""
    steps = chain(*CSRD)
    steps[0].compensation_action = "delete_data"
    steps[1].compensation_action = "reset_validation"
    steps[2].compensation_action = "clear_calc"
    steps[3].is_pivot = True
    steps[3].compensation_action = ""
    steps[4].compensation_action = ""
    steps[2].input_mapping["rows"] = "steps.collect.echo.rows"
    if fail_calculate:
        steps[2].action = "fail_calculate"
    return S.SagaDefinition(
        name="csrd_report_generation" + ("_bad" if fail_calculate else ""), steps=steps
    )


async def test_csrd_saga_success_by_registered_name(stub, rsync) -> None:
    reg = await stub.RegisterSagaDefinition(
        S.RegisterSagaDefinitionRequest(definition=csrd_definition())
    )
    assert reg.created and reg.definition.version >= 1
    again = await stub.RegisterSagaDefinition(
        S.RegisterSagaDefinitionRequest(definition=csrd_definition())
    )
    assert not again.created and again.definition.version == reg.definition.version
    got = await stub.GetSagaDefinition(S.GetSagaDefinitionRequest(name="csrd_report_generation"))
    assert [s.name for s in got.definition.steps] == list(CSRD)
    req = S.StartSagaRequest(definition_name="csrd_report_generation")
    req.input.update({"rows": [1, 2, 3]})
    started = await stub.StartSaga(req)
    saga = await wait_final(stub, started.saga.saga_id)
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert saga.definition.version == reg.definition.version
    assert order(rsync, saga.saga_id, "exec") == list(CSRD)
    assert struct_to_dict(saga.output)["calculate"]["echo"]["rows"] == [1, 2, 3]  # input mapping
    assert all(v == 1 for v in effects(rsync, saga.saga_id).values())


async def test_csrd_saga_failing_at_calculate_compensates_backward(stub, rsync) -> None:
    saga = await run(stub, list(csrd_definition(fail_calculate=True).steps), {"rows": [1]})
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert order(rsync, saga.saga_id) == ["calculate", "validate", "collect"]
    assert order(rsync, saga.saga_id, "exec") == ["collect", "validate"]
    status = {s.name: s.status for s in saga.steps}
    assert status["generate"] == status["publish"] == S.STEP_STATUS_PENDING


async def test_idempotency_key_returns_same_saga(stub) -> None:
    req = S.StartSagaRequest(
        definition=S.SagaDefinition(steps=chain("a")), idempotency_key="order-42-x"
    )
    first = await stub.StartSaga(req)
    second = await stub.StartSaga(req)
    assert second.already_started and second.saga.saga_id == first.saga.saga_id
    other = S.StartSagaRequest(
        definition=S.SagaDefinition(steps=chain("b")), idempotency_key="order-42-x"
    )
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.StartSaga(other)
    assert ei.value.code() == grpc.StatusCode.ABORTED


async def test_cancel_compensates_then_finished_saga_cannot_be_cancelled(stub, rsync) -> None:
    steps = chain("a", "b", "c")
    steps[1].action = "slow_b"
    req = S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
    req.input.update({"delay_ms": 800})
    saga_id = (await stub.StartSaga(req)).saga.saga_id

    # Cancel while b is in flight. (A bounded loop that fell through after 4 s
    # cancelled before b on a loaded machine; wait with a real timeout.)
    async def b_started() -> bool:
        evs = await events(stub, saga_id)
        return any(e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "b" for e in evs)

    await eventually(b_started, timeout_s=30, every_s=0.02, what="step b started")
    await stub.CancelSaga(S.CancelSagaRequest(saga_id=saga_id, reason="user asked"))
    saga = await wait_final(stub, saga_id)
    assert saga.state == S.SAGA_STATE_CANCELLED
    assert saga.error.code == "CANCELLED"
    assert order(rsync, saga_id) == ["b", "a"]  # b finished in flight, then both undone
    assert "c" not in {k.split("/")[-1] for k in effects(rsync, saga_id)}
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.CancelSaga(S.CancelSagaRequest(saga_id=saga_id))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.CancelSaga(S.CancelSagaRequest(saga_id="sg_nope"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_after_pivot_is_refused(stub) -> None:
    steps = chain("a", "p", "z")
    steps[1].is_pivot = True
    steps[1].compensation_action = ""
    steps[2].action = "slow_z"
    req = S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
    req.input.update({"delay_ms": 1000})
    saga_id = (await stub.StartSaga(req)).saga.saga_id

    async def pivot_done() -> bool:
        s = (await stub.GetSaga(S.GetSagaRequest(saga_id=saga_id))).saga
        return s.steps[1].status == S.STEP_STATUS_COMPLETED

    # Wait with a real timeout (a bounded loop fell through after 4 s).
    await eventually(pivot_done, timeout_s=30, every_s=0.02, what="pivot completed")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.CancelSaga(S.CancelSagaRequest(saga_id=saga_id))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await wait_final(stub, saga_id)).state == S.SAGA_STATE_COMPLETED


async def test_watch_streams_until_final_and_resumes_from_a_sequence(stub) -> None:
    steps = chain("a", "b")
    steps[0].action = "slow_a"
    req = S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
    req.input.update({"delay_ms": 300})
    saga_id = (await stub.StartSaga(req)).saga.saga_id
    seen = [r.event async for r in stub.WatchSaga(S.WatchSagaRequest(saga_id=saga_id))]
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].type == S.SAGA_EVENT_TYPE_SAGA_COMPLETED
    resumed = [
        r.event async for r in stub.WatchSaga(S.WatchSagaRequest(saga_id=saga_id, after_sequence=3))
    ]
    assert [e.sequence for e in resumed] == [e.sequence for e in seen[3:]]
    page = await stub.GetSagaEvents(S.GetSagaEventsRequest(saga_id=saga_id, page_size=2))
    assert len(page.events) == 2 and page.next_page_token


async def test_list_sagas_filters_by_state_and_name_and_pages(stub) -> None:
    ok = [await run(stub, chain("a"), name="listed_ok") for _ in range(3)]
    bad = await run(stub, [step("a", "fail_a")], name="listed_ok")
    resp = await stub.ListSagas(S.ListSagasRequest(definition_name="listed_ok", page_size=2))
    assert len(resp.sagas) == 2 and resp.next_page_token
    assert resp.sagas[0].saga_id == bad.saga_id  # newest first
    rest = await stub.ListSagas(
        S.ListSagasRequest(
            definition_name="listed_ok", page_size=2, page_token=resp.next_page_token
        )
    )
    ids = [s.saga_id for s in [*resp.sagas, *rest.sagas]]
    assert sorted(ids) == sorted([s.saga_id for s in ok] + [bad.saga_id])
    comp = await stub.ListSagas(
        S.ListSagasRequest(definition_name="listed_ok", states=[S.SAGA_STATE_COMPENSATED])
    )
    assert [s.saga_id for s in comp.sagas] == [bad.saga_id]
    by_state = await stub.ListSagas(
        S.ListSagasRequest(states=[S.SAGA_STATE_COMPENSATED], page_size=500)
    )
    assert bad.saga_id in {s.saga_id for s in by_state.sagas}
    assert all(s.state == S.SAGA_STATE_COMPENSATED for s in by_state.sagas)


def _selector_step() -> S.Step:
    """Step `sel` on whichever agent has capability `saga_test` (no agent id)."""
    return step("sel", agent_id="", selector=common_pb2.AgentSelector(capabilities=["saga_test"]))


async def test_selector_target_resolves_through_registry_indexes(stub, rsync) -> None:
    saga = await run(stub, [_selector_step()])
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert effects(rsync, saga.saga_id) == {f"{saga.saga_id}/sel": 1}
