"""Unit tests of the saga planner (services/saga/planner.py): no Redis, no
asyncio, no wall clock. Each test builds a saga record the way StartSaga does,
then drives the planner by hand: `plan` at an explicit time, the calls it
returns answered by a scripted agent through `classify`. Every run also checks
that the events chain (SHA-256 provenance) and that folding them from the
start gives the planner's record, i.e. what a replica replaying the log after
a crash would see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
from google.protobuf import duration_pb2

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.definition import compile_definition, flatten_steps
from agentmesh.server.saga.events import GENESIS, seal, verify_chain
from agentmesh.server.saga.planner import Call, CallKind, Outcome, Plan, Planner, Writer
from agentmesh.server.saga.state import (
    SINGLE,
    CallStatus,
    CompStatus,
    SagaRecord,
    dict_to_struct,
    ms_ts,
)

S = saga_pb2
E = CallKind.EXECUTE
C = CallKind.COMPENSATE
T0 = 1_700_000_000_000  # ms; every clock in these tests is explicit
SAGA_ID = "sg_test"


def step(name: str, *deps: str, **kw: Any) -> S.Step:
    kw.setdefault("compensation_action", "undo")
    return S.Step(name=name, agent_id="agent-a", action="do", depends_on=list(deps), **kw)


def ms(n: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(n)
    return d


def new_saga(
    defn: S.SagaDefinition, input_: dict[str, Any] | None = None
) -> tuple[Planner, list[S.SagaEvent]]:
    """A planner that took the lease on a new saga, and the log so far
    (StartSaga's SAGA_STARTED, then the planner's LEASE_ACQUIRED)."""
    started = S.SagaEvent(
        saga_id=SAGA_ID,
        sequence=1,
        type=S.SAGA_EVENT_TYPE_SAGA_STARTED,
        create_time=ms_ts(T0),
        input=dict_to_struct(input_ or {}),
        definition=defn,
        state=S.SAGA_STATE_PENDING,
    )
    seal(started, GENESIS)
    rec = SagaRecord.start(started, [s.name for s in flatten_steps(defn)])
    p = Planner(rec, compile_definition(defn), writer=Writer("coord-1", 1))
    return p, [started, *p.lease_acquired(now_ms=T0)]


def replay(log: list[S.SagaEvent]) -> SagaRecord:
    """What a replica loading the log builds: SAGA_STARTED, then a fold of each event."""
    started = log[0]
    rec = SagaRecord.start(started, [s.name for s in flatten_steps(started.definition)])
    for ev in log[1:]:
        rec.fold(ev)
    return rec


def log_of(p: Planner, log: list[S.SagaEvent], *batches: list[S.SagaEvent]) -> list[S.SagaEvent]:
    """The whole log (`log` then `batches`), checked: the hash chain holds and
    folding it from the start gives the planner's record."""
    full = [*log, *(ev for b in batches for ev in b)]
    assert verify_chain(full) == len(full)
    replayed, planned = asdict(replay(full)), asdict(p.record)
    for rec in (replayed, planned):
        for st in rec["steps"].values():
            st["items_total"] = None  # a map's item count is re-evaluated, never logged
    assert replayed == planned
    return full


def types(evs: list[S.SagaEvent]) -> list[str]:
    return [S.SagaEventType.Name(e.type).removeprefix("SAGA_EVENT_TYPE_") for e in evs]


def ok(**out: Any) -> Outcome:
    return Outcome.success(out)


def fail(code: str, reason: str = "", message: str = "boom") -> Outcome:
    return Outcome.failure(code, message, reason=reason)


@dataclass
class Agent:
    """A scripted agent: answers[(kind, step)] are used in order, then OK.

    An OK Execute returns {"step": name, "index": index}.
    """

    answers: dict[tuple[CallKind, str], list[Outcome]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __call__(self, c: Call) -> Outcome:
        self.calls.append(c)
        queue = self.answers.get((c.kind, c.step))
        if queue:
            return queue.pop(0)
        return Outcome.success({"step": c.step, "index": c.index} if c.kind is E else None)


@dataclass
class Run:
    events: list[S.SagaEvent]
    batches: list[list[Call]]  # the calls of each plan that returned any
    now_ms: int


def drive(p: Planner, agent: Agent, *, now_ms: int = T0, call_ms: int = 5, turns: int = 200) -> Run:
    """Plan, answer every call (each takes `call_ms`), repeat until the saga is
    final; with nothing to send, the clock jumps to the next due timer, as the
    driver's wait would."""
    events: list[S.SagaEvent] = []
    batches: list[list[Call]] = []
    now = now_ms
    for _ in range(turns):
        plan = p.plan(now_ms=now)
        events += plan.events
        if p.record.final:
            return Run(events, batches, now)
        if plan.calls:
            batches.append(plan.calls)
            now += call_ms
            events += [p.classify(c, agent(c), now_ms=now) for c in plan.calls]
        else:
            due = p.next_due_ms()
            assert due is not None, "stuck: nothing to send and no timer"
            now = max(now, due)
    raise AssertionError("saga did not finish")


def comp_batches(run: Run) -> list[list[str]]:
    return [[c.step for c in b if c.kind is C] for b in run.batches if any(c.kind is C for c in b)]


def state(p: Planner) -> str:
    return S.SagaState.Name(p.record.state).removeprefix("SAGA_STATE_")  # type: ignore[arg-type]


def status(p: Planner, name: str) -> str:
    return S.StepStatus.Name(p.record.steps[name].status).removeprefix("STEP_STATUS_")  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_wall_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The planner must never read the clock: every time is an argument."""

    def refuse() -> float:
        raise AssertionError("the planner read the wall clock")

    monkeypatch.setattr(time, "time", refuse)
    monkeypatch.setattr(time, "time_ns", refuse)
    yield


# ---- forward path --------------------------------------------------------------------


def test_dag_runs_in_dependency_order_and_completes() -> None:
    p, log = new_saga(
        S.SagaDefinition(steps=[step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")]),
        {"k": 1},
    )
    run = drive(p, Agent())
    assert [[c.step for c in b] for b in run.batches] == [["a"], ["b", "c"], ["d"]]
    first = run.batches[0][0]
    assert (first.kind, first.key, first.attempt, first.input) == (E, f"{SAGA_ID}/a", 1, {"k": 1})
    evs = log_of(p, log, run.events)
    assert types(evs)[:2] == ["SAGA_STARTED", "LEASE_ACQUIRED"]
    assert types(evs)[-1] == "SAGA_COMPLETED"
    assert state(p) == "COMPLETED"
    assert p.record.output == {n: {"step": n, "index": SINGLE} for n in "abcd"}
    # write-ahead: each STEP_STARTED comes before that call's outcome, with its key
    started_ev = next(e for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED)
    assert (started_ev.idempotency_key, started_ev.coordinator_id, started_ev.fencing_token) == (
        f"{SAGA_ID}/a",
        "coord-1",
        1,
    )
    # the event time is the injected clock, not the machine's
    assert all(T0 <= e.create_time.ToMilliseconds() <= run.now_ms for e in evs)
    assert p.in_flight == set()


def test_same_inputs_give_the_same_events() -> None:
    defn = S.SagaDefinition(steps=[step("a"), step("b", "a")])
    runs = []
    for _ in range(2):
        p, _started = new_saga(defn)
        agent = Agent({(E, "b"): [fail("UNAVAILABLE")]})
        runs.append([e.SerializeToString(deterministic=True) for e in drive(p, agent).events])
    assert runs[0] == runs[1]


def test_input_mapping_and_condition_read_earlier_outputs() -> None:
    p, log = new_saga(
        S.SagaDefinition(
            steps=[
                step("a"),
                step("b", "a", input_mapping={"got": "steps.a.index", "k": "input.k + 1"}),
                step("skipped", "a", condition="input.k > 5"),
            ]
        ),
        {"k": 2},
    )
    run = drive(p, Agent())
    b = next(c for batch in run.batches for c in batch if c.step == "b")
    assert b.input == {"got": SINGLE, "k": 3}
    assert status(p, "skipped") == "SKIPPED"
    assert state(p) == "COMPLETED"
    log_of(p, log, run.events)


# ---- retries, backoff, timeouts -----------------------------------------------------


def test_retry_waits_its_backoff_on_the_injected_clock() -> None:
    retry = S.RetryPolicy(max_attempts=3, initial_backoff=ms(100), multiplier=2.0)
    p, log = new_saga(S.SagaDefinition(steps=[step("a", retry_policy=retry)]))
    evs: list[S.SagaEvent] = []

    plan = p.plan(now_ms=T0)
    evs += plan.events
    [c1] = plan.calls
    ev = p.classify(c1, fail("UNAVAILABLE"), now_ms=T0 + 10)
    evs.append(ev)
    assert types([ev]) == ["STEP_ATTEMPT_FAILED"]
    assert ev.backoff.ToMilliseconds() == 100
    assert p.next_due_ms() == T0 + 110

    early = p.plan(now_ms=T0 + 109)  # not due yet: nothing happens
    assert (early.events, early.calls) == ([], [])
    plan = p.plan(now_ms=T0 + 110)
    evs += plan.events
    [c2] = plan.calls
    assert (c2.key, c2.attempt, c2.input) == (c1.key, 2, c1.input)  # same key, next attempt

    ev = p.classify(c2, fail("DEADLINE_EXCEEDED"), now_ms=T0 + 120)
    evs.append(ev)
    assert ev.backoff.ToMilliseconds() == 200  # initial * multiplier
    assert p.plan(now_ms=T0 + 319).calls == []
    plan = p.plan(now_ms=T0 + 320)
    evs += plan.events
    [c3] = plan.calls
    assert c3.attempt == 3
    evs.append(p.classify(c3, ok(v=1), now_ms=T0 + 330))
    evs += p.plan(now_ms=T0 + 330).events
    assert state(p) == "COMPLETED"
    assert p.record.steps["a"].attempts == 3
    log_of(p, log, evs)


def test_backoff_is_capped_at_max_backoff() -> None:
    retry = S.RetryPolicy(
        max_attempts=10, initial_backoff=ms(100), multiplier=10.0, max_backoff=ms(500)
    )
    p, _ = new_saga(S.SagaDefinition(steps=[step("a", retry_policy=retry)]))
    run = drive(p, Agent({(E, "a"): [fail("UNAVAILABLE")] * 3}))
    backoffs = [
        e.backoff.ToMilliseconds()
        for e in run.events
        if e.type == S.SAGA_EVENT_TYPE_STEP_ATTEMPT_FAILED
    ]
    assert backoffs == [100, 500, 500]
    assert state(p) == "COMPLETED"


def test_retries_exhausted_fail_the_step_and_compensate() -> None:
    retry = S.RetryPolicy(max_attempts=2)
    p, log = new_saga(S.SagaDefinition(steps=[step("a"), step("b", "a", retry_policy=retry)]))
    agent = Agent({(E, "b"): [fail("UNAVAILABLE"), fail("UNAVAILABLE")]})
    run = drive(p, agent)
    b_execs = [c.attempt for c in agent.calls if (c.kind, c.step) == (E, "b")]
    assert b_execs == [1, 2]
    assert "STEP_FAILED" in types(run.events)
    assert comp_batches(run) == [["b"], ["a"]]  # the failed b may have taken effect
    assert state(p) == "COMPENSATED"
    assert p.record.error is not None and p.record.error["code"] == "UNAVAILABLE"
    log_of(p, log, run.events)


def test_non_retryable_code_fails_at_once() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=[step("a")]))
    agent = Agent({(E, "a"): [fail("INVALID_ARGUMENT")]})
    drive(p, agent)
    assert [c.attempt for c in agent.calls if c.kind is E] == [1]
    assert state(p) == "COMPENSATED"


def test_step_timeout_is_retried_then_fails_and_is_compensated() -> None:
    # A step timeout is the call's gRPC deadline: the agent call ends with
    # DEADLINE_EXCEEDED, which is retryable; the late effect is compensated.
    retry = S.RetryPolicy(max_attempts=2)
    p, log = new_saga(S.SagaDefinition(steps=[step("a", timeout=ms(50), retry_policy=retry)]))
    assert p.definition.by_name["a"].timeout_ms == 50  # what the driver gives the caller
    agent = Agent({(E, "a"): [fail("DEADLINE_EXCEEDED"), fail("DEADLINE_EXCEEDED")]})
    run = drive(p, agent, call_ms=50)
    assert [c.attempt for c in agent.calls if c.kind is E] == [1, 2]
    assert p.record.steps["a"].error == {
        "code": "DEADLINE_EXCEEDED",
        "message": "boom",
        "step_name": "a",
    }
    assert comp_batches(run) == [["a"]]
    assert state(p) == "COMPENSATED"
    log_of(p, log, run.events)


def test_saga_timeout_stops_retries_and_compensates() -> None:
    p, log = new_saga(S.SagaDefinition(timeout=ms(1000), steps=[step("a"), step("b", "a")]))
    evs: list[S.SagaEvent] = []
    plan = p.plan(now_ms=T0)
    evs += plan.events
    evs.append(p.classify(plan.calls[0], ok(), now_ms=T0 + 1))
    plan = p.plan(now_ms=T0 + 1)
    evs += plan.events
    [b] = plan.calls
    evs.append(p.classify(b, fail("UNAVAILABLE"), now_ms=T0 + 2))  # b waits for a retry
    assert p.next_due_ms() == T0 + 2 + 100

    late = p.plan(now_ms=T0 + 1001)  # past the saga's timeout, before b's retry ran
    evs += late.events
    assert types(late.events) == [
        "STEP_FAILED",  # b's waiting retry is not sent
        "COMPENSATION_STARTED",
        "STEP_COMPENSATION_STARTED",
    ]
    assert late.events[1].error.code == "DEADLINE_EXCEEDED"
    assert [(c.kind, c.step) for c in late.calls] == [(C, "b")]
    evs.append(p.classify(late.calls[0], ok(), now_ms=T0 + 1002))
    rest = drive(p, Agent(), now_ms=T0 + 1002)
    assert comp_batches(rest) == [["a"]]
    assert state(p) == "COMPENSATED"
    log_of(p, log, evs, rest.events)


def test_saga_timeout_waits_for_the_call_in_flight() -> None:
    p, log = new_saga(S.SagaDefinition(timeout=ms(1000), steps=[step("a")]))
    plan = p.plan(now_ms=T0)
    [a] = plan.calls
    waiting = p.plan(now_ms=T0 + 2000)
    assert (waiting.events, waiting.calls) == ([], [])  # nothing decided while a is out
    done = p.classify(a, ok(), now_ms=T0 + 2001)
    after = p.plan(now_ms=T0 + 2001)
    assert types(after.events) == ["COMPENSATION_STARTED", "STEP_COMPENSATION_STARTED"]
    assert [(c.kind, c.step, c.original_output) for c in after.calls] == [(C, "a", {})]
    log_of(p, log, plan.events, [done], after.events)


# ---- compensation strategies --------------------------------------------------------

DIAMOND = [step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        # finish order a, b, c, d (d failed; a failed step counts as done)
        (S.COMPENSATION_STRATEGY_BACKWARD, [["d"], ["c"], ["b"], ["a"]]),
        (S.COMPENSATION_STRATEGY_FORWARD, [["a"], ["b"], ["c"], ["d"]]),
        (S.COMPENSATION_STRATEGY_PARALLEL, [["a", "b", "c", "d"]]),
        (S.COMPENSATION_STRATEGY_SELECTIVE, [["d"]]),  # completed steps keep their effect
        (S.COMPENSATION_STRATEGY_CASCADE, [["d"], ["b", "c"], ["a"]]),  # dependents first
    ],
    ids=["backward", "forward", "parallel", "selective", "cascade"],
)
def test_compensation_strategy_order(strategy: int, expected: list[list[str]]) -> None:
    p, log = new_saga(
        S.SagaDefinition(steps=DIAMOND, compensation_strategy=strategy)  # type: ignore[arg-type]
    )
    agent = Agent({(E, "d"): [fail("FAILED_PRECONDITION")]})
    run = drive(p, agent)
    assert comp_batches(run) == expected
    comps = [c for c in agent.calls if c.kind is C]
    assert all(c.key == f"{SAGA_ID}/{c.step}" and c.attempt == 1 for c in comps)
    outputs = {c.step: c.original_output for c in comps}
    assert outputs.get("a") in (None, {"step": "a", "index": SINGLE})
    assert outputs.get("d", None) is None  # d never completed: no output to undo
    evs = log_of(p, log, run.events)
    keys = [e.idempotency_key for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_COMPENSATION_STARTED]
    assert keys == [f"{SAGA_ID}/{n}/compensate" for b in expected for n in b]
    assert state(p) == "COMPENSATED"
    for n in {n for b in expected for n in b}:
        assert status(p, n) == "COMPENSATED"
    assert types(evs)[-2:] == ["COMPENSATION_COMPLETED", "SAGA_COMPENSATED"]


def test_steps_without_compensation_action_are_left_out() -> None:
    p, _ = new_saga(
        S.SagaDefinition(steps=[step("a"), step("b", "a", compensation_action=""), step("c", "b")])
    )
    run = drive(p, Agent({(E, "c"): [fail("NOT_FOUND")]}))
    assert comp_batches(run) == [["c"], ["a"]]
    assert status(p, "b") == "COMPLETED"


def test_compensation_failure_after_retries_fails_the_saga() -> None:
    retry = S.RetryPolicy(max_attempts=2)
    p, log = new_saga(S.SagaDefinition(steps=[step("a", retry_policy=retry), step("b", "a")]))
    agent = Agent(
        {
            (E, "b"): [fail("INVALID_ARGUMENT")],
            (C, "a"): [fail("UNAVAILABLE"), fail("UNAVAILABLE")],
        }
    )
    run = drive(p, agent)
    assert [c.attempt for c in agent.calls if (c.kind, c.step) == (C, "a")] == [1, 2]
    evs = log_of(p, log, run.events)
    assert types(evs)[-2:] == ["STEP_COMPENSATION_FAILED", "SAGA_FAILED"]
    assert state(p) == "FAILED"
    assert status(p, "a") == "COMPENSATION_FAILED"
    assert "compensation of step 'a' failed" in evs[-1].error.message


def test_cancel_compensates_and_ends_cancelled() -> None:
    p, log = new_saga(S.SagaDefinition(steps=[step("a"), step("b", "a")]))
    first = p.plan(now_ms=T0)
    done = p.classify(first.calls[0], ok(), now_ms=T0 + 1)
    cancel = p.plan(now_ms=T0 + 2, cancel_requested=True, cancel_reason="user asked")
    assert types(cancel.events) == [
        "CANCEL_REQUESTED",
        "COMPENSATION_STARTED",
        "STEP_COMPENSATION_STARTED",
    ]
    assert cancel.events[1].error.code == "CANCELLED"
    assert cancel.events[1].error.message == "user asked"
    assert [(c.kind, c.step) for c in cancel.calls] == [(C, "a")]
    undone = p.classify(cancel.calls[0], ok(), now_ms=T0 + 3)
    rest = drive(p, Agent(), now_ms=T0 + 3)
    # a cancel that is seen again is not logged twice
    assert "CANCEL_REQUESTED" not in types(rest.events)
    evs = log_of(p, log, first.events, [done], cancel.events, [undone], rest.events)
    assert types(evs)[-1] == "SAGA_CANCELLED"
    assert state(p) == "CANCELLED"


# ---- pivot -------------------------------------------------------------------------

PIVOTED = [
    step("a"),
    step("p", "a", is_pivot=True, compensation_action=""),
    step("b", "p", retry_policy=S.RetryPolicy(max_attempts=2)),
]


def test_after_the_pivot_steps_retry_forward_past_max_attempts() -> None:
    p, log = new_saga(S.SagaDefinition(steps=PIVOTED))
    agent = Agent({(E, "b"): [fail("UNAVAILABLE")] * 4})
    run = drive(p, agent)
    assert [c.attempt for c in agent.calls if (c.kind, c.step) == (E, "b")] == [1, 2, 3, 4, 5]
    assert comp_batches(run) == []
    assert state(p) == "COMPLETED"
    log_of(p, log, run.events)


def test_failure_after_the_pivot_fails_the_saga_without_compensation() -> None:
    p, log = new_saga(S.SagaDefinition(steps=PIVOTED))
    run = drive(p, Agent({(E, "b"): [fail("PERMISSION_DENIED")]}))
    evs = log_of(p, log, run.events)
    assert comp_batches(run) == []
    assert types(evs)[-1] == "SAGA_FAILED"
    assert "failed after the pivot" in evs[-1].error.message
    assert state(p) == "FAILED"


def test_failure_before_the_pivot_compensates() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=PIVOTED))
    run = drive(p, Agent({(E, "p"): [fail("NOT_FOUND")]}))
    assert comp_batches(run) == [["a"]]  # the pivot has no compensation
    assert state(p) == "COMPENSATED"


def test_cancel_and_timeout_are_ignored_after_the_pivot() -> None:
    p, log = new_saga(S.SagaDefinition(timeout=ms(100), steps=PIVOTED))
    evs: list[S.SagaEvent] = []
    for _ in range(2):  # a, then the pivot
        plan = p.plan(now_ms=T0)
        evs += plan.events
        evs += [p.classify(c, ok(), now_ms=T0) for c in plan.calls]
    assert p.next_due_ms() is None  # no saga timeout once past the pivot
    plan = p.plan(now_ms=T0 + 10_000, cancel_requested=True, cancel_reason="too late")
    evs += plan.events
    assert types(plan.events) == ["STEP_STARTED"]
    assert [(c.kind, c.step) for c in plan.calls] == [(E, "b")]
    log_of(p, log, evs)


# ---- map and loop ------------------------------------------------------------------


def test_map_runs_items_with_bounded_concurrency_and_reduces() -> None:
    p, log = new_saga(
        S.SagaDefinition(
            steps=[
                step(
                    "m",
                    map=S.MapSpec(
                        items="input.xs", max_concurrency=2, reduce="{'n': size(results)}"
                    ),
                    input_mapping={"x": "item * 10", "i": "index"},
                )
            ]
        ),
        {"xs": [1, 2, 3]},
    )
    run = drive(p, Agent())
    assert [[(c.index, c.key, c.input) for c in b] for b in run.batches] == [
        [(0, f"{SAGA_ID}/m[0]", {"x": 10, "i": 0}), (1, f"{SAGA_ID}/m[1]", {"x": 20, "i": 1})],
        [(2, f"{SAGA_ID}/m[2]", {"x": 30, "i": 2})],
    ]
    evs = log_of(p, log, run.events)
    assert [e.item_index for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED] == [0, 1, 2]
    assert p.record.steps["m"].output == {"n": 3}
    assert p.record.steps["m"].items_total == 3
    assert state(p) == "COMPLETED"


def test_map_without_reduce_lists_results_and_items_default_input() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=[step("m", map=S.MapSpec(items="['x', 'y']"))]))
    run = drive(p, Agent())
    assert [c.input for c in run.batches[0]] == [
        {"item": "x", "index": 0},
        {"item": "y", "index": 1},
    ]
    assert p.record.steps["m"].output == {
        "results": [{"step": "m", "index": 0}, {"step": "m", "index": 1}]
    }


def test_map_item_failure_fails_the_step_and_items_compensate_last_first() -> None:
    p, log = new_saga(
        S.SagaDefinition(
            steps=[
                step("m", map=S.MapSpec(items="[1, 2, 3]", max_concurrency=3)),
                step("after", "m"),
            ]
        )
    )
    agent = Agent()
    failing = iter([ok(), ok(), fail("INVALID_ARGUMENT")])
    run_events: list[S.SagaEvent] = []
    plan = p.plan(now_ms=T0)
    run_events += plan.events
    assert [c.index for c in plan.calls] == [0, 1, 2]
    run_events += [p.classify(c, next(failing), now_ms=T0 + 1) for c in plan.calls]
    # the step fails and compensation starts in the same plan, not at a later timer
    stop = p.plan(now_ms=T0 + 1)
    assert types(stop.events) == [
        "STEP_FAILED",
        "COMPENSATION_STARTED",
        "STEP_COMPENSATION_STARTED",
    ]
    assert stop.events[1].error.code == "INVALID_ARGUMENT"
    undo = [p.classify(c, ok(), now_ms=T0 + 2) for c in stop.calls]
    rest = drive(p, agent, now_ms=T0 + 2)
    assert rest.now_ms < T0 + 100  # no wait for the saga's timeout
    assert status(p, "after") == "PENDING"
    comps = [(c.step, c.index, c.key) for c in agent.calls if c.kind is C]
    assert [(c.step, c.index, c.key) for c in stop.calls] + comps == [
        ("m", 2, f"{SAGA_ID}/m[2]"),
        ("m", 1, f"{SAGA_ID}/m[1]"),
        ("m", 0, f"{SAGA_ID}/m[0]"),
    ]
    assert [len(b) for b in rest.batches] == [1, 1]  # one call site at a time
    assert state(p) == "COMPENSATED"
    assert p.record.error is not None and p.record.error["code"] == "INVALID_ARGUMENT"
    log_of(p, log, run_events, stop.events, undo, rest.events)


def test_loop_iteration_failure_compensates_at_once() -> None:
    p, log = new_saga(
        S.SagaDefinition(steps=[step("l", loop=S.LoopSpec(condition="true", max_iterations=5))])
    )
    agent = Agent({(E, "l"): [ok(), fail("NOT_FOUND")]})
    run = drive(p, agent)
    assert [(c.kind, c.index) for c in agent.calls] == [(E, 0), (E, 1), (C, 1), (C, 0)]
    assert run.now_ms < T0 + 100
    assert p.record.error is not None and p.record.error["code"] == "NOT_FOUND"
    assert state(p) == "COMPENSATED"
    log_of(p, log, run.events)


def test_a_step_listed_before_a_skipped_dependency_starts_in_the_same_plan() -> None:
    p, log = new_saga(S.SagaDefinition(steps=[step("b", "a"), step("a", condition="false")]))
    plan = p.plan(now_ms=T0)
    assert types(plan.events) == ["STEP_SKIPPED", "STEP_STARTED"]
    assert [c.step for c in plan.calls] == ["b"]
    log_of(p, log, plan.events)


def test_a_cel_error_at_run_time_fails_the_step_and_compensates_at_once() -> None:
    p, log = new_saga(
        S.SagaDefinition(steps=[step("a"), step("b", "a", input_mapping={"x": "input.n / 0"})]),
        {"n": 1},
    )
    run = drive(p, Agent())
    assert p.record.steps["b"].error is not None
    assert p.record.steps["b"].error["code"] == "INVALID_ARGUMENT"
    assert comp_batches(run) == [["a"]]  # b never ran: nothing of it to undo
    assert run.now_ms < T0 + 100
    log_of(p, log, run.events)


def test_map_items_that_are_not_a_list_fail_the_step() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=[step("m", map=S.MapSpec(items="input.n"))]), {"n": 4})
    plan = p.plan(now_ms=T0)
    assert plan.calls == []
    failed = [e for e in plan.events if e.type == S.SAGA_EVENT_TYPE_STEP_FAILED]
    assert failed[0].error.code == "INVALID_ARGUMENT"
    assert "not a list" in failed[0].error.message


def test_loop_runs_iterations_in_order_until_the_condition_is_false() -> None:
    p, log = new_saga(
        S.SagaDefinition(
            steps=[
                step(
                    "l",
                    loop=S.LoopSpec(condition="iteration == 0 || last.n < 3", max_iterations=10),
                    input_mapping={"n": "iteration + 1"},
                )
            ]
        )
    )

    class Counter(Agent):
        def __call__(self, c: Call) -> Outcome:
            self.calls.append(c)
            return ok(n=c.input["n"])

    run = drive(p, Counter())
    assert [[(c.index, c.key) for c in b] for b in run.batches] == [
        [(k, f"{SAGA_ID}/l#{k}")] for k in range(3)
    ]
    evs = log_of(p, log, run.events)
    assert [e.iteration for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED] == [0, 1, 2]
    assert p.record.steps["l"].output == {"n": 3}  # the last iteration's output
    assert state(p) == "COMPLETED"


def test_loop_stops_at_max_iterations_and_compensates_each_iteration() -> None:
    p, log = new_saga(
        S.SagaDefinition(
            steps=[
                step("l", loop=S.LoopSpec(condition="true", max_iterations=2)),
                step("z", "l"),
            ]
        )
    )
    agent = Agent({(E, "z"): [fail("INVALID_ARGUMENT")]})
    run = drive(p, agent)
    execs = [(c.step, c.index) for c in agent.calls if c.kind is E]
    assert execs == [("l", 0), ("l", 1), ("z", SINGLE)]
    comps = [(c.step, c.index) for c in agent.calls if c.kind is C]
    assert comps == [("z", SINGLE), ("l", 1), ("l", 0)]
    assert state(p) == "COMPENSATED"
    log_of(p, log, run.events)


# ---- agent reasons ------------------------------------------------------------------


def test_compensated_reason_is_final_even_for_a_retryable_code() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=[step("a")]))
    [a] = p.plan(now_ms=T0).calls
    ev = p.classify(a, fail("ABORTED", reason="COMPENSATED"), now_ms=T0 + 1)
    assert types([ev]) == ["STEP_FAILED"]
    assert ev.error.code == "ABORTED"

    q, _ = new_saga(S.SagaDefinition(steps=[step("a")]))
    [a] = q.plan(now_ms=T0).calls
    plain = q.classify(a, fail("ABORTED"), now_ms=T0 + 1)  # ABORTED alone is retried
    assert types([plain]) == ["STEP_ATTEMPT_FAILED"]


def test_compensated_reason_after_the_pivot_fails_the_saga() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=PIVOTED))
    run = drive(
        p,
        Agent(
            {
                (E, "b"): [
                    Outcome.failure("ABORTED", "x", reason=ErrorReason.ERROR_REASON_COMPENSATED)
                ]
            }
        ),
    )
    assert [c.attempt for c in run.batches[-1]] == [1]
    assert state(p) == "FAILED"


def test_execute_in_flight_is_a_wait_not_a_failure() -> None:
    retry = S.RetryPolicy(max_attempts=2, initial_backoff=ms(100))
    p, log = new_saga(S.SagaDefinition(steps=[step("a", retry_policy=retry), step("b", "a")]))
    in_flight = fail("UNAVAILABLE", reason="EXECUTE_IN_FLIGHT")
    agent = Agent({(E, "b"): [fail("INVALID_ARGUMENT")], (C, "a"): [in_flight] * 5})
    run = drive(p, agent)
    comp_a = [c.attempt for c in agent.calls if (c.kind, c.step) == (C, "a")]
    assert comp_a == [1, 2, 3, 4, 5, 6]  # five waits do not use up max_attempts=2
    waits = [
        e.backoff.ToMilliseconds()
        for e in run.events
        if e.type == S.SAGA_EVENT_TYPE_STEP_COMPENSATION_ATTEMPT_FAILED
    ]
    assert waits == [100] * 5  # each wait is retried at the initial backoff
    assert p.compensation_waits == {("a", SINGLE): 5}
    assert state(p) == "COMPENSATED"
    log_of(p, log, run.events)


def test_unavailable_without_the_reason_uses_up_compensation_attempts() -> None:
    retry = S.RetryPolicy(max_attempts=2)
    p, _ = new_saga(S.SagaDefinition(steps=[step("a", retry_policy=retry), step("b", "a")]))
    agent = Agent({(E, "b"): [fail("INVALID_ARGUMENT")], (C, "a"): [fail("UNAVAILABLE")] * 5})
    drive(p, agent)
    assert [c.attempt for c in agent.calls if (c.kind, c.step) == (C, "a")] == [1, 2]
    assert state(p) == "FAILED"


def test_outcome_parses_reason_strings_and_requires_a_code() -> None:
    assert fail("ABORTED", reason="COMPENSATED").reason == ErrorReason.ERROR_REASON_COMPENSATED
    assert fail("UNAVAILABLE", reason="NOT_A_REASON").reason == 0
    assert ok().ok and not fail("UNAVAILABLE").ok
    with pytest.raises(ValueError):
        Outcome.failure("", "no code")


# ---- crash recovery ------------------------------------------------------------------


def test_a_call_whose_outcome_was_lost_is_resent_with_the_next_attempt() -> None:
    p, log = new_saga(S.SagaDefinition(steps=[step("a"), step("b", "a")]))
    plan = p.plan(now_ms=T0)
    durable = log_of(p, log, plan.events)  # STEP_STARTED(a) is durable ...
    # ... then the coordinator is killed: the outcome of a is never logged.
    rec = replay(durable)
    assert rec.steps["a"].invocations[SINGLE].status == CallStatus.RUNNING
    q = Planner(rec, compile_definition(log[0].definition), writer=Writer("coord-2", 2))
    took = q.lease_acquired(now_ms=T0 + 6000)
    again = q.plan(now_ms=T0 + 6000)
    [a] = again.calls
    assert (a.key, a.attempt) == (f"{SAGA_ID}/a", 2)  # same key, next attempt number
    assert again.events[0].fencing_token == 2
    # a lost attempt does not count against max_attempts (default 3)
    q.classify(a, fail("UNAVAILABLE"), now_ms=T0 + 6001)
    assert q.record.steps["a"].invocations[SINGLE].failures == 1
    assert types(took) == ["LEASE_ACQUIRED"]


def test_a_compensation_whose_outcome_was_lost_is_resent() -> None:
    p, log = new_saga(S.SagaDefinition(steps=[step("a"), step("b", "a")]))
    evs: list[S.SagaEvent] = []
    plan = p.plan(now_ms=T0)
    evs += [*plan.events, p.classify(plan.calls[0], ok(), now_ms=T0)]
    plan = p.plan(now_ms=T0)
    evs += [*plan.events, p.classify(plan.calls[0], fail("NOT_FOUND"), now_ms=T0)]
    plan = p.plan(now_ms=T0)  # compensation of b starts; its outcome is lost
    evs += plan.events
    assert [(c.kind, c.step) for c in plan.calls] == [(C, "b")]
    rec = SagaRecord.from_json(replay([*log, *evs]).to_json())  # via a snapshot
    assert rec.steps["b"].invocations[SINGLE].comp == CompStatus.RUNNING
    q = Planner(rec, compile_definition(log[0].definition), writer=Writer("coord-2", 2))
    q.lease_acquired(now_ms=T0 + 6000)
    [b] = q.plan(now_ms=T0 + 6000).calls
    assert (b.kind, b.step, b.attempt, b.key) == (C, "b", 2, f"{SAGA_ID}/b")
    q.classify(b, ok(), now_ms=T0 + 6001)
    drive(q, Agent(), now_ms=T0 + 6001)
    assert state(q) == "COMPENSATED"


def test_plan_result_is_plain_data() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=[step("a")]))
    plan = p.plan(now_ms=T0)
    assert isinstance(plan, Plan)
    assert plan.calls == [Call(E, "a", SINGLE, 1, f"{SAGA_ID}/a", {})]
    assert p.in_flight == {(E, "a", SINGLE)}


def test_snapshot_json_keeps_the_status_strings_and_loads_them_as_enums() -> None:
    p, _ = new_saga(S.SagaDefinition(steps=[step("a"), step("b", "a")]))
    plan = p.plan(now_ms=T0)
    p.classify(plan.calls[0], fail("UNAVAILABLE"), now_ms=T0)
    raw = p.record.to_json()
    assert '"status":"retry_wait"' in raw and '"comp":""' in raw  # the pre-enum spelling
    inv = SagaRecord.from_json(raw).steps["a"].invocations[SINGLE]
    assert inv.status is CallStatus.RETRY_WAIT
    assert inv.comp is CompStatus.NONE
