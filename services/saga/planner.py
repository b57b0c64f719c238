"""The saga planner: what happens next, decided from the folded record alone.

The coordinator's decisions are pure. `Planner.plan` reads a saga's folded
record (`state.SagaRecord`), its compiled definition and the current time,
and returns the events to append (write-ahead: `STEP_STARTED` before the
call it announces) and the agent calls to send once they are durable.
`Planner.classify` turns one call's outcome (OK with an output, or a gRPC
code name, message and `common.v1.ErrorReason`) into the event that records
it: completed, an attempt failed with its backoff, or failed for good.

Nothing here does I/O, awaits, or reads a clock: time is the `now_ms`
argument (Unix milliseconds), so the same record, definition, time and
outcomes give the same events. The driver (`engine.Runner`) loads the record,
appends the events under the lease, sends the calls, and feeds their
outcomes back. Every event is sealed into the log's hash chain and folded
into the record as it is made (later decisions in the same pass see it), so
the record is the planner's working state and always equals the fold of the
events it returned.

Besides the log, the planner keeps what one driver knows in memory: the calls
in flight (a call returned by `plan` is in flight until `classify` gets its
outcome) and how often each compensation was answered EXECUTE_IN_FLIGHT
(waits, not failures; after a takeover they count, see the README).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.runtime.cel import CelError
from agentmesh.runtime.errors import parse_reason
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.compensation import ready_units, unit_failed
from agentmesh.server.saga.definition import CompiledDefinition, StepKind, StepSpec
from agentmesh.server.saga.events import seal
from agentmesh.server.saga.state import (
    SINGLE,
    CallStatus,
    CompStatus,
    SagaRecord,
    StepRecord,
    dict_to_struct,
    ms_ts,
)

T = saga_pb2
_DONE = (T.STEP_STATUS_COMPLETED, T.STEP_STATUS_SKIPPED)
_MAX_PASSES = 64


class CallKind(enum.Enum):
    """Which AgentService RPC a call is."""

    EXECUTE = "execute"
    COMPENSATE = "compensate"


#: (kind, step name, invocation index): one call site's action or compensation.
CallSite = tuple[CallKind, str, int]


def call_key(saga_id: str, spec: StepSpec, index: int) -> str:
    """Idempotency key of a call site (see Step in saga.proto)."""
    base = f"{saga_id}/{spec.name}"
    if spec.kind == StepKind.MAP:
        return f"{base}[{index}]"
    if spec.kind == StepKind.LOOP:
        return f"{base}#{index}"
    return base


@dataclass(frozen=True)
class Call:
    """One call to send after its STEP_STARTED/STEP_COMPENSATION_STARTED is durable.

    Attributes:
        kind: Execute or Compensate.
        step: step name.
        index: invocation index (SINGLE, map item, loop iteration).
        attempt: attempt number (1-based) of this call site's action or compensation.
        key: the call site's idempotency key (`call_key`), the Execute's key.
        input: the action's input.
        original_output: the Execute's output, for a compensation (None if unknown).
    """

    kind: CallKind
    step: str
    index: int
    attempt: int
    key: str
    input: dict[str, Any]
    original_output: dict[str, Any] | None = None

    @property
    def site(self) -> CallSite:
        """The call site this call belongs to."""
        return (self.kind, self.step, self.index)


@dataclass(frozen=True)
class Outcome:
    """What an agent call returned.

    Attributes:
        code: gRPC status code name ("UNAVAILABLE", ...); "" for OK.
        message: the error message.
        reason: the `google.rpc.ErrorInfo` reason as an ErrorReason
            (UNSPECIFIED when none or unknown).
        output: the Execute's output when OK.
    """

    code: str = ""
    message: str = ""
    reason: ErrorReason.ValueType = ErrorReason.ERROR_REASON_UNSPECIFIED
    output: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return not self.code

    @classmethod
    def success(cls, output: dict[str, Any] | None = None) -> Outcome:
        """An OK answer with the Execute's output (None for a Compensate)."""
        return cls(output=output)

    @classmethod
    def failure(
        cls, code: str, message: str, *, reason: str | ErrorReason.ValueType = ""
    ) -> Outcome:
        """A failed call.

        Args:
            code: gRPC status code name; must not be "".
            message: the error message.
            reason: an ErrorReason, or its ErrorInfo spelling ("COMPENSATED").

        Raises:
            ValueError: `code` is empty.
        """
        if not code:
            raise ValueError("a failed call needs a status code name")
        return cls(
            code=code,
            message=message,
            reason=parse_reason(reason) if isinstance(reason, str) else reason,
        )


@dataclass(frozen=True)
class Writer:
    """Who writes the events: the lease holder, stamped on every event.

    Attributes:
        coordinator_id: the replica holding the lease.
        fencing_token: the lease's fencing token.
    """

    coordinator_id: str
    fencing_token: int


@dataclass(frozen=True)
class Plan:
    """One planning pass.

    Attributes:
        events: sealed events, already folded into the record, to append in order.
        calls: calls to send once `events` are durable.
    """

    events: list[saga_pb2.SagaEvent]
    calls: list[Call]


class Planner:
    """Decides a saga's next events and calls; see the module docstring.

    Args:
        record: the saga's folded record; the planner folds its events into it.
        definition: the saga's compiled definition.
        writer: the lease holder stamped on the events.
    """

    def __init__(
        self, record: SagaRecord, definition: CompiledDefinition, *, writer: Writer
    ) -> None:
        self.record = record
        self.definition = definition
        self.writer = writer
        self.in_flight: set[CallSite] = set()
        # Compensation attempts the agent answered EXECUTE_IN_FLIGHT, per call
        # site: waits, not failures. In memory only; after a takeover they count.
        self.compensation_waits: dict[tuple[str, int], int] = {}
        self._now = 0
        self._out: list[saga_pb2.SagaEvent] = []

    # ---- events -----------------------------------------------------------------
    def _emit(
        self, type_: int, *, step: str = "", index: int = SINGLE, **fields: Any
    ) -> saga_pb2.SagaEvent:
        """Build, seal and fold the next event."""
        rec = self.record
        ev = saga_pb2.SagaEvent(
            saga_id=rec.saga_id,
            sequence=rec.seq + 1,
            type=type_,  # type: ignore[arg-type]
            step_name=step,
            coordinator_id=self.writer.coordinator_id,
            fencing_token=self.writer.fencing_token,
            create_time=ms_ts(self._now),
        )
        if index != SINGLE:
            spec = self.definition.by_name[step]
            if spec.kind == StepKind.MAP:
                ev.item_index = index
            else:
                ev.iteration = index
        for k, v in fields.items():
            if k in ("input", "output"):
                getattr(ev, k).CopyFrom(dict_to_struct(v))
            elif k == "error":
                ev.error.CopyFrom(v)
            elif k == "backoff_ms":
                ev.backoff.FromMilliseconds(int(v))
            else:
                setattr(ev, k, v)
        prev = rec.last_hash
        rec.fold(ev)
        ev.state = rec.state  # type: ignore[assignment]
        rec.last_hash = seal(ev, prev)
        self._out.append(ev)
        return ev

    def lease_acquired(self, *, now_ms: int) -> list[saga_pb2.SagaEvent]:
        """The LEASE_ACQUIRED event a driver logs first (a PENDING saga starts RUNNING)."""
        self._now, self._out = now_ms, []
        self._emit(T.SAGA_EVENT_TYPE_LEASE_ACQUIRED)
        return self._out

    # ---- outcomes -----------------------------------------------------------------
    def classify(self, call: Call, outcome: Outcome, *, now_ms: int) -> saga_pb2.SagaEvent:
        """The event that records `call`'s outcome; the call is no longer in flight.

        An Execute: STEP_COMPLETED; STEP_ATTEMPT_FAILED with the backoff when the
        code is retryable and attempts remain (always, after the pivot); else
        STEP_FAILED. ABORTED with reason COMPENSATED is final: the agent already
        ran this call site's compensation and refuses the action for good.
        A Compensate: STEP_COMPENSATED, STEP_COMPENSATION_ATTEMPT_FAILED or
        STEP_COMPENSATION_FAILED by the same rules; EXECUTE_IN_FLIGHT is a wait
        (retried at the initial backoff, not counted against max_attempts).

        Args:
            call: a call returned by `plan`.
            outcome: what the agent answered.
            now_ms: current time, Unix milliseconds (the event's time; a
                retry is due at now_ms + backoff).
        """
        self._now, self._out = now_ms, []
        self.in_flight.discard(call.site)
        spec = self.definition.by_name[call.step]
        inv = self.record.steps[call.step].inv(call.index)
        err = (
            None
            if outcome.ok
            else T.StepError(code=outcome.code, message=outcome.message, step_name=call.step)
        )
        if call.kind is CallKind.EXECUTE:
            if err is None:
                return self._emit(
                    T.SAGA_EVENT_TYPE_STEP_COMPLETED,
                    step=call.step,
                    index=call.index,
                    output=outcome.output or {},
                    attempt=call.attempt,
                )
            failures = inv.failures + 1
            forward = self.record.pivot_passed(self.definition.pivot)
            if (
                outcome.reason != ErrorReason.ERROR_REASON_COMPENSATED
                and outcome.code not in spec.retry.non_retryable
                and (forward or failures < spec.retry.max_attempts)
            ):
                return self._emit(
                    T.SAGA_EVENT_TYPE_STEP_ATTEMPT_FAILED,
                    step=call.step,
                    index=call.index,
                    attempt=call.attempt,
                    error=err,
                    backoff_ms=spec.retry.backoff_ms(failures=failures),
                )
            return self._emit(
                T.SAGA_EVENT_TYPE_STEP_FAILED,
                step=call.step,
                index=call.index,
                attempt=call.attempt,
                error=err,
            )
        if err is None:
            return self._emit(
                T.SAGA_EVENT_TYPE_STEP_COMPENSATED,
                step=call.step,
                index=call.index,
                attempt=call.attempt,
            )
        # EXECUTE_IN_FLIGHT: the agent holds the compensation until the
        # action it undoes has finished; waiting is not failing.
        waiting = outcome.reason == ErrorReason.ERROR_REASON_EXECUTE_IN_FLIGHT
        waits = self.compensation_waits.get((call.step, call.index), 0) + waiting
        self.compensation_waits[(call.step, call.index)] = waits
        failures = max(1, inv.comp_failures + 1 - waits)
        if waiting or (
            outcome.code not in spec.retry.non_retryable and failures < spec.retry.max_attempts
        ):
            return self._emit(
                T.SAGA_EVENT_TYPE_STEP_COMPENSATION_ATTEMPT_FAILED,
                step=call.step,
                index=call.index,
                attempt=call.attempt,
                error=err,
                backoff_ms=spec.retry.backoff_ms(failures=failures),
            )
        return self._emit(
            T.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED,
            step=call.step,
            index=call.index,
            attempt=call.attempt,
            error=err,
        )

    # ---- timers -------------------------------------------------------------------
    def next_due_ms(self) -> int | None:
        """When the next timer is due (Unix ms): a retry, a compensation retry or
        the saga's timeout (before the pivot); None when nothing is waiting."""
        rec = self.record
        due: list[int] = []
        for st in rec.steps.values():
            for inv in st.invocations.values():
                if inv.status == CallStatus.RETRY_WAIT:
                    due.append(inv.retry_at_ms)
                if inv.comp == CompStatus.RETRY_WAIT:
                    due.append(inv.comp_retry_at_ms)
        if rec.state == T.SAGA_STATE_RUNNING and not rec.pivot_passed(self.definition.pivot):
            due.append(rec.create_ms + int(self.definition.timeout_ms))
        return min(due) if due else None

    # ---- planning -----------------------------------------------------------------
    def plan(self, *, now_ms: int, cancel_requested: bool = False, cancel_reason: str = "") -> Plan:
        """Decide the next events and calls.

        Args:
            now_ms: current time, Unix milliseconds: due retries, the saga
                timeout, and every event's time.
            cancel_requested: CancelSaga was called (the driver saw the flag).
            cancel_reason: its reason.

        Passes repeat while one logs events without sending calls, so the
        result is everything decidable at `now_ms` (a failed map item fails its
        step and starts compensation in one plan).

        Returns:
            The events (folded into the record) and the calls, which are in
            flight from now on.
        """
        self._now, self._out = now_ms, []
        calls: list[Call] = []
        # A pass can log an event that lets the next pass decide more without
        # any outcome arriving: a map item or loop iteration that failed for
        # good fails its step, a CEL error fails a step, a skip unblocks a step
        # listed before it. Plan again until a pass sends calls or logs
        # nothing; else the driver would sleep until its next timer (the
        # saga's timeout, by default minutes) with the next decision already
        # in hand. Each pass that goes on logged at least one event; the cap
        # is only a guard.
        for _ in range(_MAX_PASSES):
            logged = len(self._out)
            if self.record.state == T.SAGA_STATE_RUNNING:
                calls += self._plan_forward(cancel_requested, cancel_reason)
            if self.record.state == T.SAGA_STATE_COMPENSATING:
                calls += self._plan_compensation()
            if calls or self.record.final or len(self._out) == logged:
                break
        self.in_flight.update(c.site for c in calls)
        return Plan(events=self._out, calls=calls)

    def _in_flight(self, step: str) -> bool:
        return any(s == step for _, s, _ in self.in_flight)

    def _start(self, spec: StepSpec, index: int, attempt: int, inp: dict[str, Any]) -> Call:
        key = call_key(self.record.saga_id, spec, index)
        self._emit(
            T.SAGA_EVENT_TYPE_STEP_STARTED,
            step=spec.name,
            index=index,
            attempt=attempt,
            input=inp,
            idempotency_key=key,
        )
        return Call(CallKind.EXECUTE, spec.name, index, attempt, key, inp)

    def _resume(self, spec: StepSpec, index: int) -> Call | None:
        """A retry that is due, or a call whose outcome a crash lost."""
        inv = self.record.steps[spec.name].invocations.get(index)
        if inv is None or (CallKind.EXECUTE, spec.name, index) in self.in_flight:
            return None
        if (
            inv.status == CallStatus.RETRY_WAIT and inv.retry_at_ms <= self._now
        ) or inv.status == CallStatus.RUNNING:
            return self._start(spec, index, inv.attempts + 1, inv.input or {})
        return None

    def _fail_step(self, name: str, code: str, message: str) -> None:
        self._emit(
            T.SAGA_EVENT_TYPE_STEP_FAILED,
            step=name,
            error=T.StepError(code=code, message=message, step_name=name),
        )

    def _stop_cause(self) -> saga_pb2.StepError | None:
        rec, comp = self.record, self.definition
        if rec.cancel_logged:
            return T.StepError(code="CANCELLED", message=rec.cancel_reason or "cancelled")
        if self._now > rec.create_ms + comp.timeout_ms:
            return T.StepError(
                code="DEADLINE_EXCEEDED",
                message=f"saga timed out after {comp.timeout_ms:.0f}ms",
            )
        for spec in comp.steps:
            st = rec.steps[spec.name]
            if st.status == T.STEP_STATUS_FAILED:
                e = st.error or {}
                return T.StepError(
                    code=e.get("code", "UNKNOWN"),
                    message=f"step {spec.name!r} failed: {e.get('message', '')}",
                    step_name=spec.name,
                )
        return None

    def _plan_forward(self, cancel_requested: bool, cancel_reason: str) -> list[Call]:
        rec, comp = self.record, self.definition
        forward = rec.pivot_passed(comp.pivot)
        if cancel_requested and not rec.cancel_logged and not forward:
            self._emit(
                T.SAGA_EVENT_TYPE_CANCEL_REQUESTED,
                error=T.StepError(code="CANCELLED", message=cancel_reason),
            )
        cause = None if forward else self._stop_cause()
        fatal = next(
            (s for s in comp.steps if forward and rec.steps[s.name].status == T.STEP_STATUS_FAILED),
            None,
        )
        if cause is not None or fatal is not None:
            code = cause.code if cause is not None else "ABORTED"
            for spec in comp.steps:
                st = rec.steps[spec.name]
                for idx, inv in list(st.invocations.items()):
                    if (CallKind.EXECUTE, spec.name, idx) in self.in_flight:
                        continue
                    if inv.status in (CallStatus.RETRY_WAIT, CallStatus.RUNNING):
                        # not re-sent: the saga is stopping; its effect (if any) is compensated
                        self._emit(
                            T.SAGA_EVENT_TYPE_STEP_FAILED,
                            step=spec.name,
                            index=idx,
                            error=T.StepError(
                                code=code,
                                message="stopped: the saga is compensating",
                                step_name=spec.name,
                            ),
                        )
            if self.in_flight:
                return []
            for spec in comp.steps:
                if rec.steps[spec.name].status == T.STEP_STATUS_RUNNING:
                    self._fail_step(spec.name, code, "stopped before every call site ran")
            if fatal is not None:
                st = rec.steps[fatal.name]
                self._emit(
                    T.SAGA_EVENT_TYPE_SAGA_FAILED,
                    error=T.StepError(
                        code=(st.error or {}).get("code", "UNKNOWN"),
                        message=f"step {fatal.name!r} failed after the pivot: "
                        f"{(st.error or {}).get('message', '')}",
                        step_name=fatal.name,
                    ),
                )
                return []
            assert cause is not None
            self._emit(T.SAGA_EVENT_TYPE_COMPENSATION_STARTED, error=cause)
            return []

        calls: list[Call] = []
        for spec in comp.steps:
            st = rec.steps[spec.name]
            if st.status == T.STEP_STATUS_PENDING:
                if all(rec.steps[d].status in _DONE for d in spec.deps):
                    calls += self._begin(spec)
            elif st.status == T.STEP_STATUS_RUNNING:
                calls += self._advance(spec, st)
        if (
            rec.state == T.SAGA_STATE_RUNNING
            and all(s.status in _DONE for s in rec.steps.values())
            and not calls
        ):
            self._emit(
                T.SAGA_EVENT_TYPE_SAGA_COMPLETED,
                output={n: s.output for n, s in rec.steps.items() if s.output is not None},
            )
        return calls

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        ctx = self.record.context()
        ctx.update(extra)
        return ctx

    def _input(
        self, spec: StepSpec, ctx: dict[str, Any], default: dict[str, Any]
    ) -> dict[str, Any]:
        if not spec.input_mapping:
            return default
        return {k: e.evaluate(ctx) for k, e in spec.input_mapping.items()}

    def _begin(self, spec: StepSpec) -> list[Call]:
        ctx = self._ctx()
        try:
            if spec.condition is not None and not spec.condition.evaluate_bool(ctx):
                self._emit(T.SAGA_EVENT_TYPE_STEP_SKIPPED, step=spec.name)
                return []
            if spec.kind == StepKind.SINGLE:
                return [self._start(spec, SINGLE, 1, self._input(spec, ctx, self.record.input))]
        except CelError as e:
            self._fail_step(spec.name, "INVALID_ARGUMENT", str(e))
            return []
        return self._advance(spec, self.record.steps[spec.name])

    def _advance(self, spec: StepSpec, st: StepRecord) -> list[Call]:
        if spec.kind == StepKind.SINGLE:
            c = self._resume(spec, SINGLE)
            return [c] if c else []
        try:
            if spec.kind == StepKind.MAP:
                return self._advance_map(spec, st)
            return self._advance_loop(spec, st)
        except CelError as e:
            if not self._in_flight(spec.name):
                self._fail_step(spec.name, "INVALID_ARGUMENT", str(e))
            return []

    def _items(self, spec: StepSpec, st: StepRecord) -> list[Any]:
        assert spec.map_items is not None
        items = spec.map_items.evaluate(self._ctx())
        if not isinstance(items, list):
            raise CelError(f"map.items yielded {type(items).__name__}, not a list")
        st.items_total = len(items)
        return items

    def _advance_map(self, spec: StepSpec, st: StepRecord) -> list[Call]:
        items = self._items(spec, st)
        calls = [c for i in list(st.invocations) if (c := self._resume(spec, i))]
        failed = [i for i in st.invocations.values() if i.status == CallStatus.FAILED]
        if failed:
            if (
                not self._in_flight(spec.name)
                and not calls
                and not any(i.status == CallStatus.RETRY_WAIT for i in st.invocations.values())
            ):
                e = failed[0].error or {}
                self._fail_step(spec.name, e.get("code", "UNKNOWN"), e.get("message", ""))
            return calls
        active = sum(
            1
            for i in st.invocations.values()
            if i.status in (CallStatus.RUNNING, CallStatus.RETRY_WAIT)
        )
        ctx = self._ctx()
        for i, item in enumerate(items):
            if active >= spec.map_concurrency:
                break
            if i in st.invocations:
                continue
            default = {"item": item, "index": i}
            calls.append(self._start(spec, i, 1, self._input(spec, {**ctx, **default}, default)))
            active += 1
        if len(st.invocations) == len(items) and all(
            i.status == CallStatus.COMPLETED for i in st.invocations.values()
        ):
            results = [st.invocations[i].output for i in range(len(items))]
            if spec.map_reduce is not None:
                out = spec.map_reduce.evaluate({**ctx, "results": results})
                out = out if isinstance(out, dict) else {"value": out}
            else:
                out = {"results": results}
            self._emit(T.SAGA_EVENT_TYPE_STEP_COMPLETED, step=spec.name, output=out)
        return calls

    def _advance_loop(self, spec: StepSpec, st: StepRecord) -> list[Call]:
        assert spec.loop_condition is not None
        if st.invocations:
            k = max(st.invocations)
            inv = st.invocations[k]
            c = self._resume(spec, k)
            if c:
                return [c]
            if inv.status == CallStatus.FAILED:
                e = inv.error or {}
                self._fail_step(spec.name, e.get("code", "UNKNOWN"), e.get("message", ""))
                return []
            if inv.status != CallStatus.COMPLETED:
                return []
            nxt, last = k + 1, inv.output or {}
        else:
            nxt, last = 0, {}
        ctx = self._ctx(iteration=nxt, last=last)
        if nxt >= spec.loop_max_iterations or not spec.loop_condition.evaluate_bool(ctx):
            self._emit(T.SAGA_EVENT_TYPE_STEP_COMPLETED, step=spec.name, output=last)
            return []
        default = {"iteration": nxt, "last": last}
        return [self._start(spec, nxt, 1, self._input(spec, ctx, default))]

    def _plan_compensation(self) -> list[Call]:
        rec, comp = self.record, self.definition
        failed = next((n for n, st in rec.steps.items() if unit_failed(st)), None)
        if failed is not None:
            if any(k is CallKind.COMPENSATE for k, _, _ in self.in_flight):
                return []
            st = rec.steps[failed]
            e = st.error or {}
            self._emit(
                T.SAGA_EVENT_TYPE_SAGA_FAILED,
                error=T.StepError(
                    code=e.get("code", "UNKNOWN"),
                    message=f"compensation of step {failed!r} failed: {e.get('message', '')}",
                    step_name=failed,
                ),
            )
            return []
        ready, all_done = ready_units(rec, comp)
        if all_done:
            self._emit(T.SAGA_EVENT_TYPE_COMPENSATION_COMPLETED)
            if rec.cancel_logged:
                self._emit(T.SAGA_EVENT_TYPE_SAGA_CANCELLED)
            else:
                self._emit(T.SAGA_EVENT_TYPE_SAGA_COMPENSATED)
            return []
        calls: list[Call] = []
        for name in ready:
            st = rec.steps[name]
            spec = comp.by_name[name]
            # call sites of one step are undone one at a time, last first
            for idx in sorted((i for i, v in st.invocations.items() if v.attempted), reverse=True):
                inv = st.invocations[idx]
                if inv.comp == CompStatus.COMPENSATED:
                    continue
                if (CallKind.COMPENSATE, name, idx) in self.in_flight:
                    break
                if inv.comp == CompStatus.RETRY_WAIT and inv.comp_retry_at_ms > self._now:
                    break
                attempt = inv.comp_attempts + 1
                key = call_key(rec.saga_id, spec, idx)
                self._emit(
                    T.SAGA_EVENT_TYPE_STEP_COMPENSATION_STARTED,
                    step=name,
                    index=idx,
                    attempt=attempt,
                    idempotency_key=key + "/compensate",
                )
                calls.append(
                    Call(CallKind.COMPENSATE, name, idx, attempt, key, inv.input or {}, inv.output)
                )
                break
        return calls
