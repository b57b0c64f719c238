"""Sagas against a real coordinator and a real agent process: success, failure
under each compensation strategy with the exact order, pivot, retries, timeouts."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.events import verify_chain
from agentmesh.server.saga.state import struct_to_dict
from tests.integration.saga.conftest import chain, effects, events, ms, order, run, step

pytestmark = pytest.mark.integration
S = saga_pb2
NAMES = ("a", "b", "c", "d", "e")



async def test_five_steps_complete_each_effect_once(stub, rsync) -> None:
    saga = await run(stub, chain(*NAMES), {"year": 2024})
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert [s.status for s in saga.steps] == [S.STEP_STATUS_COMPLETED] * 5
    assert effects(rsync, saga.saga_id) == {f"{saga.saga_id}/{n}": 1 for n in NAMES}
    assert order(rsync, saga.saga_id, "exec") == list(NAMES)
    assert effects(rsync, saga.saga_id, "comp") == {}
    assert struct_to_dict(saga.output)["a"]["echo"]["year"] == 2024
    evs = await events(stub, saga.saga_id)
    assert verify_chain(evs) == len(evs)
    assert evs[0].type == S.SAGA_EVENT_TYPE_SAGA_STARTED
    assert evs[-1].type == S.SAGA_EVENT_TYPE_SAGA_COMPLETED


def _failing_chain(fail_at: int) -> list[S.Step]:
    steps = chain(*NAMES)
    steps[fail_at].action = "fail_here"
    return steps


@pytest.mark.parametrize("fail_at", range(5))
@pytest.mark.parametrize(
    "strategy",
    [
        S.COMPENSATION_STRATEGY_BACKWARD,
        S.COMPENSATION_STRATEGY_FORWARD,
        S.COMPENSATION_STRATEGY_SELECTIVE,
        S.COMPENSATION_STRATEGY_CASCADE,
        S.COMPENSATION_STRATEGY_PARALLEL,
    ],
)
async def test_failure_at_each_step_under_each_strategy(stub, rsync, strategy, fail_at) -> None:
    saga = await run(stub, _failing_chain(fail_at), compensation_strategy=strategy)
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.error.step_name == NAMES[fail_at]
    assert saga.error.code == "FAILED_PRECONDITION"
    done = list(NAMES[: fail_at + 1])  # completed steps plus the attempted, failed one
    comp = order(rsync, saga.saga_id)
    if strategy in (S.COMPENSATION_STRATEGY_BACKWARD, S.COMPENSATION_STRATEGY_CASCADE):
        assert comp == done[::-1]
    elif strategy == S.COMPENSATION_STRATEGY_FORWARD:
        assert comp == done
    elif strategy == S.COMPENSATION_STRATEGY_SELECTIVE:
        assert comp == [NAMES[fail_at]]
    else:
        assert sorted(comp) == sorted(done)
    assert all(v == 1 for v in effects(rsync, saga.saga_id, "comp").values())
    assert effects(rsync, saga.saga_id).keys() == {f"{saga.saga_id}/{n}" for n in NAMES[:fail_at]}
    by_name = {s.name: s.status for s in saga.steps}
    for n in NAMES[fail_at + 1 :]:
        assert by_name[n] == S.STEP_STATUS_PENDING


async def test_cascade_compensates_dependents_first_in_a_diamond(stub, rsync) -> None:
    # a -> (b, c) -> d(fails): d, then b and c (any order), then a
    steps = [
        step("a"),
        step("b", deps=("a",)),
        step("c", deps=("a",)),
        step("d", "fail_d", deps=("b", "c")),
    ]
    saga = await run(stub, steps, compensation_strategy=S.COMPENSATION_STRATEGY_CASCADE)
    assert saga.state == S.SAGA_STATE_COMPENSATED
    comp = order(rsync, saga.saga_id)
    assert comp[0] == "d" and set(comp[1:3]) == {"b", "c"} and comp[3] == "a"


async def test_pivot_after_success_later_steps_retry_forward(stub, rsync) -> None:
    steps = chain("collect", "generate", "publish")
    steps[1].is_pivot = True
    steps[1].compensation_action = ""
    steps[2].action = "flaky_publish"
    steps[2].retry_policy.CopyFrom(S.RetryPolicy(max_attempts=1, initial_backoff=ms(10)))
    saga = await run(stub, steps, {"fail_attempts": 3})
    # max_attempts=1 would fail the step; after the pivot it is retried until it succeeds
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert {s.name: s.attempts for s in saga.steps}["publish"] == 4
    assert effects(rsync, saga.saga_id, "comp") == {}


async def test_pivot_failure_before_it_compensates_and_after_it_fails(stub, rsync) -> None:
    steps = chain("collect", "generate", "publish")
    steps[1].is_pivot = True
    steps[1].compensation_action = ""
    steps[1].action = "fail_generate"
    saga = await run(stub, steps)
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert order(rsync, saga.saga_id) == ["collect"]
    steps = chain("collect", "generate", "publish")
    steps[1].is_pivot = True
    steps[1].compensation_action = ""
    steps[2].action = "fail_publish"
    saga = await run(stub, steps)
    assert saga.state == S.SAGA_STATE_FAILED  # non-retryable after the pivot: needs a human
    assert order(rsync, saga.saga_id) == []


async def test_retries_with_backoff_then_success(stub, rsync) -> None:
    s = step("a", "flaky_a")
    s.retry_policy.CopyFrom(
        S.RetryPolicy(
            max_attempts=3, initial_backoff=ms(200), multiplier=2.0, max_backoff=ms(1000)
        )
    )
    saga = await run(stub, [s], {"fail_attempts": 2})
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert saga.steps[0].attempts == 3
    tries = [
        t.split("|")
        for t in rsync.lrange("am:saga:test:saga-agent-a:tries", 0, -1)
        if t.startswith(saga.saga_id)
    ]
    assert [int(t[1]) for t in tries] == [1, 2, 3]
    gaps = [int(tries[i + 1][2]) - int(tries[i][2]) for i in range(2)]
    assert gaps[0] >= 190 and gaps[1] >= 390  # 200ms, then 400ms
    evs = await events(stub, saga.saga_id)
    backoffs = [
        e.backoff.ToMilliseconds() for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_ATTEMPT_FAILED
    ]
    assert backoffs == [200, 400]
    assert effects(rsync, saga.saga_id) == {f"{saga.saga_id}/a": 1}


async def test_retries_exhausted_compensates(stub, rsync) -> None:
    steps = chain("a", "b")
    steps[1].action = "flaky_b"
    steps[1].retry_policy.CopyFrom(S.RetryPolicy(max_attempts=2, initial_backoff=ms(10)))
    saga = await run(stub, steps, {"fail_attempts": 5})
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.steps[1].attempts == 2
    assert saga.error.code == "UNAVAILABLE"
    assert order(rsync, saga.saga_id) == ["b", "a"]


async def test_non_retryable_code_is_not_retried(stub) -> None:
    s = step("a", "flaky_a")
    s.retry_policy.CopyFrom(S.RetryPolicy(max_attempts=5, non_retryable_codes=["UNAVAILABLE"]))
    saga = await run(stub, [s])
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.steps[0].attempts == 1


async def test_step_timeout_fails_with_deadline_exceeded(stub, rsync) -> None:
    steps = chain("a", "b")
    steps[1].action = "hang_b"
    steps[1].timeout.CopyFrom(ms(300))
    steps[1].retry_policy.CopyFrom(S.RetryPolicy(max_attempts=2, initial_backoff=ms(10)))
    saga = await run(stub, steps)
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.error.code == "DEADLINE_EXCEEDED"
    assert saga.steps[1].attempts == 2
    assert order(rsync, saga.saga_id) == ["b", "a"]


async def test_overall_timeout_compensates(stub, rsync) -> None:
    steps = chain("a", "b")
    steps[1].action = "slow_b"
    saga = await run(stub, steps, {"delay_ms": 1500}, timeout=ms(500))
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.error.code == "DEADLINE_EXCEEDED"
    # b was in flight when the saga timed out: it finished, then was undone
    assert order(rsync, saga.saga_id) == ["b", "a"]


async def test_compensation_failure_leaves_saga_failed(stub, rsync) -> None:
    steps = chain("a", "b", "c")
    steps[0].compensation_action = "cfail_a"
    steps[0].retry_policy.CopyFrom(S.RetryPolicy(max_attempts=2, initial_backoff=ms(10)))
    steps[2].action = "fail_c"
    saga = await run(stub, steps)
    assert saga.state == S.SAGA_STATE_FAILED
    assert saga.error.step_name == "a"
    assert {s.name: s.status for s in saga.steps}["a"] == S.STEP_STATUS_COMPENSATION_FAILED
    assert order(rsync, saga.saga_id) == ["c", "b"]


async def test_malformed_definitions_get_field_violations(stub) -> None:
    cases = {
        "unknown": ([step("a", deps=("zzz",))], "unknown step 'zzz'"),
        "cycle": (
            [step("a", deps=("c",)), step("b", deps=("a",)), step("c", deps=("b",))],
            "a -> c -> b -> a",
        ),
        "empty": ([], "at least one step"),
    }
    for _, (steps, text) in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.StartSaga(S.StartSagaRequest(definition=S.SagaDefinition(steps=steps)))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        md = dict(ei.value.trailing_metadata() or ())
        st = status_pb2.Status.FromString(md["grpc-status-details-bin"])
        br = error_details_pb2.BadRequest()
        assert st.details[0].Unpack(br)
        assert any(text in v.description for v in br.field_violations), br
