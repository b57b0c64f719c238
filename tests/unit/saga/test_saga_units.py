"""Unit tests of the saga coordinator's pure parts: definition validation and
flattening, CEL, event folding and snapshots, the hash chain, compensation plans."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.runtime.cel import CelError, saga_expression
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.compensation import done_steps, ready_units
from agentmesh.server.saga.definition import Retry, compile_definition, find_cycle, flatten_steps
from agentmesh.server.saga.events import GENESIS, seal, verify_chain
from agentmesh.server.saga.state import SINGLE, SagaRecord, dict_to_struct, ms_ts

S = saga_pb2


def st(name: str, *deps: str, **kw: Any) -> S.Step:
    kw.setdefault("compensation_action", "u")
    return S.Step(name=name, agent_id="x", action="a", depends_on=list(deps), **kw)


def violations(defn: S.SagaDefinition) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as ei:
        compile_definition(defn)
    return dict(ei.value.field_violations)


def test_cycle_is_named() -> None:
    v = violations(S.SagaDefinition(steps=[st("a", "c"), st("b", "a"), st("c", "b")]))
    assert v["definition.steps[0].depends_on"] == "dependency cycle: a -> c -> b -> a"
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_every_problem_is_reported() -> None:
    bad = S.Step(name="bad/name", action="")
    v = violations(S.SagaDefinition(steps=[st("a", "zz"), st("a"), bad]))
    assert v["definition.steps[0].depends_on[0]"] == "unknown step 'zz'"
    assert "duplicate step name" in v["definition.steps[1].name"]
    assert "definition.steps[2].name" in v
    assert v["definition.steps[2].target"] == "set agent_id, selector or swarm"
    assert v["definition.steps[2].action"] == "required"
    assert violations(S.SagaDefinition())["definition.steps"] == "at least one step is required"


def test_pivot_rules() -> None:
    last = violations(
        S.SagaDefinition(steps=[st("a"), st("p", "a", is_pivot=True, compensation_action="")])
    )
    assert "no step follows the pivot" in last["definition.steps[1].is_pivot"]
    side = violations(
        S.SagaDefinition(
            steps=[
                st("a"),
                st("p", "a", is_pivot=True, compensation_action=""),
                st("z", "p"),
                st("loose"),
            ]
        )
    )
    assert "neither precedes nor follows" in side["definition.steps[3].depends_on"]
    comp = violations(S.SagaDefinition(steps=[st("p", is_pivot=True), st("z", "p")]))
    assert "never compensated" in comp["definition.steps[0].compensation_action"]
    ok = compile_definition(
        S.SagaDefinition(
            steps=[st("a"), st("p", "a", is_pivot=True, compensation_action=""), st("z", "p")]
        )
    )
    assert ok.pivot == "p" and ok.descendants["a"] == {"p", "z"}


def test_bad_cel_and_loop_limits() -> None:
    v = violations(
        S.SagaDefinition(
            steps=[
                st("a", condition="input.x ==", loop=S.LoopSpec(condition="true", max_iterations=0))
            ]
        )
    )
    assert "cannot compile CEL" in v["definition.steps[0].condition"]
    assert v["definition.steps[0].loop.max_iterations"] == "must be 1..1000"


def test_pipeline_flattens_into_dag_edges() -> None:
    p = S.Stage(
        sequential=S.StageGroup(
            stages=[
                S.Stage(step=st("a")),
                S.Stage(
                    parallel=S.StageGroup(stages=[S.Stage(step=st("b")), S.Stage(step=st("c"))])
                ),
                S.Stage(step=st("d")),
            ]
        )
    )
    steps = {s.name: list(s.depends_on) for s in flatten_steps(S.SagaDefinition(pipeline=p))}
    assert steps == {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_retry_backoff_is_capped_exponential() -> None:
    r = Retry(initial_backoff_ms=100, multiplier=2.0, max_backoff_ms=350)
    assert [r.backoff_ms(failures=n) for n in (1, 2, 3, 4)] == [100, 200, 350, 350]
    assert Retry.from_proto(S.RetryPolicy()).max_attempts == 3


def test_cel_context_numbers_compare_as_ints() -> None:
    assert saga_expression("steps.a.n < 3").evaluate_bool({"steps": {"a": {"n": 2.0}}})
    assert saga_expression("[1, 2].map(x, x * 2)").evaluate({}) == [2, 4]
    with pytest.raises(CelError):
        saga_expression("input.missing").evaluate({"input": {}})


def _ev(rec: SagaRecord | None, seq: int, type_: int, **kw: Any) -> S.SagaEvent:
    ev = S.SagaEvent(
        saga_id="sg_1",
        sequence=seq,
        type=type_,  # type: ignore[arg-type]
        create_time=ms_ts(1_000 + seq),
        **kw,
    )
    seal(ev, rec.last_hash if rec else GENESIS)
    return ev


def _log() -> list[S.SagaEvent]:
    defn = S.SagaDefinition(steps=[st("a"), st("b", "a")])
    evs = [
        _ev(
            None, 1, S.SAGA_EVENT_TYPE_SAGA_STARTED, definition=defn, input=dict_to_struct({"k": 1})
        )
    ]
    rec = SagaRecord.start(evs[0], ["a", "b"])
    spec: list[tuple[Any, dict[str, Any]]] = [
        (S.SAGA_EVENT_TYPE_LEASE_ACQUIRED, {"fencing_token": 1}),
        (S.SAGA_EVENT_TYPE_STEP_STARTED, {"step_name": "a", "attempt": 1}),
        (S.SAGA_EVENT_TYPE_STEP_COMPLETED, {"step_name": "a", "output": dict_to_struct({"x": 1})}),
        (S.SAGA_EVENT_TYPE_STEP_STARTED, {"step_name": "b", "attempt": 1}),
        (
            S.SAGA_EVENT_TYPE_STEP_FAILED,
            {"step_name": "b", "error": S.StepError(code="INTERNAL", step_name="b")},
        ),
        (S.SAGA_EVENT_TYPE_COMPENSATION_STARTED, {"error": S.StepError(code="INTERNAL")}),
    ]
    for type_, kw in spec:
        ev = _ev(rec, rec.seq + 1, type_, **kw)
        rec.fold(ev)
        evs.append(ev)
    return evs


def test_fold_snapshot_and_replay_agree() -> None:
    evs = _log()
    full = SagaRecord.start(evs[0], ["a", "b"])
    for e in evs[1:]:
        full.fold(e)
    assert full.state == S.SAGA_STATE_COMPENSATING
    assert full.steps["a"].output == {"x": 1}
    assert full.steps["b"].status == S.STEP_STATUS_FAILED
    half = SagaRecord.start(evs[0], ["a", "b"])
    for e in evs[1:4]:
        half.fold(e)
    resumed = SagaRecord.from_json(half.to_json())
    for e in evs[4:]:
        resumed.fold(e)
    assert resumed.to_json() == full.to_json()
    with pytest.raises(ValueError):
        resumed.fold(evs[2])  # out of sequence


def test_hash_chain_detects_tampering() -> None:
    evs = _log()
    assert verify_chain(evs) == len(evs)
    evs[3].output.update({"x": 2})
    with pytest.raises(ValueError, match="event 4: hash mismatch"):
        verify_chain(evs)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (S.COMPENSATION_STRATEGY_BACKWARD, (["b"], False)),
        (S.COMPENSATION_STRATEGY_FORWARD, (["a"], False)),
        (S.COMPENSATION_STRATEGY_PARALLEL, (["a", "b"], False)),
        (S.COMPENSATION_STRATEGY_SELECTIVE, (["b"], False)),
        (S.COMPENSATION_STRATEGY_CASCADE, (["b"], False)),
    ],
)
def test_compensation_plans(strategy: int, expected: tuple[list[str], bool]) -> None:
    evs = _log()
    evs[0].definition.compensation_strategy = strategy  # type: ignore[assignment]
    rec = SagaRecord.start(evs[0], ["a", "b"])
    for e in evs[1:]:
        rec.fold(e)
    comp = compile_definition(rec.definition)
    assert ready_units(rec, comp) == expected
    if strategy == S.COMPENSATION_STRATEGY_SELECTIVE:
        assert done_steps(rec, comp) == ["b"]
    rec.steps["b"].inv(SINGLE).comp = "compensated"
    ready, _ = ready_units(rec, comp)
    assert ready == ([] if strategy == S.COMPENSATION_STRATEGY_SELECTIVE else ["a"])
