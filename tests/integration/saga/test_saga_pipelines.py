"""Pipelines on the saga engine: sequential and parallel groups, conditional
steps, map-reduce and loops, against a real agent process."""

from __future__ import annotations

import pytest

from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.state import struct_to_dict
from tests.integration.saga.conftest import effects, events, order, step, wait_final

pytestmark = pytest.mark.integration
S = saga_pb2


def st(s: S.Step) -> S.Stage:
    return S.Stage(step=s)


async def _run(stub, defn: S.SagaDefinition, input: dict | None = None) -> S.Saga:
    req = S.StartSagaRequest(definition=defn)
    if input:
        req.input.update(input)
    return await wait_final(stub, (await stub.StartSaga(req)).saga.saga_id)


async def test_sequential_and_parallel_groups(stub, rsync) -> None:
    pipeline = S.Stage(
        sequential=S.StageGroup(
            stages=[
                st(step("p1")),
                S.Stage(
                    parallel=S.StageGroup(stages=[st(step("p2a", "slow_p2a")), st(step("p2b"))])
                ),
                st(step("p3")),
            ]
        )
    )
    saga = await _run(stub, S.SagaDefinition(pipeline=pipeline), {"delay_ms": 200})
    assert saga.state == S.SAGA_STATE_COMPLETED
    done = order(rsync, saga.saga_id, "exec")
    assert done[0] == "p1" and done[-1] == "p3" and set(done[1:3]) == {"p2a", "p2b"}
    assert done.index("p2b") < done.index("p2a")  # ran in parallel: fast one first
    evs = await events(stub, saga.saga_id)
    started = [e.sequence for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED]
    completed = {e.step_name: e.sequence for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_COMPLETED}
    p3_start = next(
        e.sequence for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "p3"
    )
    assert p3_start > completed["p2a"] and p3_start > completed["p2b"]
    assert len(started) == 4


async def test_parallel_group_failure_compensates_every_branch(stub, rsync) -> None:
    pipeline = S.Stage(
        sequential=S.StageGroup(
            stages=[
                st(step("p1")),
                S.Stage(
                    parallel=S.StageGroup(stages=[st(step("p2a")), st(step("p2b", "fail_p2b"))])
                ),
                st(step("p3")),
            ]
        )
    )
    saga = await _run(
        stub,
        S.SagaDefinition(pipeline=pipeline, compensation_strategy=S.COMPENSATION_STRATEGY_CASCADE),
    )
    assert saga.state == S.SAGA_STATE_COMPENSATED
    comp = order(rsync, saga.saga_id)
    assert set(comp[:2]) == {"p2a", "p2b"} and comp[2] == "p1"


@pytest.mark.parametrize("flag", [True, False])
async def test_conditional_step(stub, rsync, flag) -> None:
    steps = [
        step("a"),
        step("maybe", deps=("a",), condition="input.flag == true"),
        step("z", deps=("maybe",)),
    ]
    saga = await _run(stub, S.SagaDefinition(steps=steps), {"flag": flag})
    assert saga.state == S.SAGA_STATE_COMPLETED
    status = {s.name: s.status for s in saga.steps}
    assert status["maybe"] == (S.STEP_STATUS_COMPLETED if flag else S.STEP_STATUS_SKIPPED)
    assert status["z"] == S.STEP_STATUS_COMPLETED
    assert ("maybe" in order(rsync, saga.saga_id, "exec")) == flag


async def test_map_over_a_list_with_reduce(stub, rsync) -> None:
    m = step("m", "do_item", input_mapping={"x": "item * 10", "i": "index"})
    m.map.CopyFrom(
        S.MapSpec(
            items="input.values",
            max_concurrency=2,
            reduce='{"xs": results.map(r, r.echo.x), "n": size(results)}',
        )
    )
    saga = await _run(
        stub, S.SagaDefinition(steps=[m, step("after", deps=("m",))]), {"values": [1, 2, 3, 4]}
    )
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert struct_to_dict(saga.output)["m"]["xs"] == [10, 20, 30, 40]
    assert struct_to_dict(saga.output)["m"]["n"] == 4
    assert effects(rsync, saga.saga_id) == {
        **{f"{saga.saga_id}/m[{i}]": 1 for i in range(4)},
        f"{saga.saga_id}/after": 1,
    }


async def test_map_items_are_compensated_last_first(stub, rsync) -> None:
    m = step("m", "do_item")
    m.map.CopyFrom(S.MapSpec(items="[1, 2, 3]", max_concurrency=1))
    saga = await _run(stub, S.SagaDefinition(steps=[m, step("boom", "fail_boom", deps=("m",))]))
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert order(rsync, saga.saga_id) == ["boom", "m[2]", "m[1]", "m[0]"]


async def test_loop_until_condition_or_max_iterations(stub, rsync) -> None:
    loop = step("l", "do_iter", input_mapping={"k": "iteration"})
    loop.loop.CopyFrom(S.LoopSpec(condition="iteration < input.times", max_iterations=10))
    saga = await _run(stub, S.SagaDefinition(steps=[loop]), {"times": 3})
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert order(rsync, saga.saga_id, "exec") == ["l#0", "l#1", "l#2"]
    assert struct_to_dict(saga.output)["l"]["echo"]["k"] == 2  # the last iteration's output
    capped = step("c", "do_iter")
    capped.loop.CopyFrom(S.LoopSpec(condition="true", max_iterations=2))
    saga = await _run(stub, S.SagaDefinition(steps=[capped]))
    assert order(rsync, saga.saga_id, "exec") == ["c#0", "c#1"]


async def test_failed_map_item_compensates_at_once_with_its_error(stub, rsync) -> None:
    # The map step fails in a planner pass that sends nothing; compensation must
    # start in the same plan, not at the runner's next timer (the saga timeout).
    m = step("m", "fail_item", deps=("a",))
    m.map.CopyFrom(S.MapSpec(items="[1, 2, 3]", max_concurrency=1))
    req = S.StartSagaRequest(definition=S.SagaDefinition(steps=[step("a", "do_a"), m]))
    saga = await wait_final(stub, (await stub.StartSaga(req)).saga.saga_id, timeout_s=10.0)
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.error.code == "FAILED_PRECONDITION"
    assert order(rsync, saga.saga_id) == ["m[0]", "a"]
