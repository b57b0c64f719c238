"""A saga's state folded from its event log (event sourcing).

`SagaRecord.fold(event)` is the only way state changes, both while a replica
drives a saga and when one replays the log after a crash, so the two can never
disagree. A snapshot is the JSON of a record at some sequence; the state at
sequence N is the snapshot folded with events snapshot.seq+1..N.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass, field, fields
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from agentmesh.saga.v1 import saga_pb2

#: Invocation index of a plain (non-map, non-loop) step.
SINGLE = -1

FINAL_STATES = frozenset(
    {
        saga_pb2.SAGA_STATE_COMPLETED,
        saga_pb2.SAGA_STATE_COMPENSATED,
        saga_pb2.SAGA_STATE_FAILED,
        saga_pb2.SAGA_STATE_CANCELLED,
    }
)
_FINAL_EVENT_STATE = {
    saga_pb2.SAGA_EVENT_TYPE_SAGA_COMPLETED: saga_pb2.SAGA_STATE_COMPLETED,
    saga_pb2.SAGA_EVENT_TYPE_SAGA_COMPENSATED: saga_pb2.SAGA_STATE_COMPENSATED,
    saga_pb2.SAGA_EVENT_TYPE_SAGA_CANCELLED: saga_pb2.SAGA_STATE_CANCELLED,
    saga_pb2.SAGA_EVENT_TYPE_SAGA_FAILED: saga_pb2.SAGA_STATE_FAILED,
}


class CallStatus(enum.StrEnum):
    """Where one call site's action stands (`Invocation.status`).

    A str enum: the values are the snapshot JSON's spelling, so snapshots
    written before the enum existed still load. A call site has no proto
    message of its own; the step-level status is the proto's StepStatus.
    """

    PENDING = "pending"
    #: an attempt is logged (STEP_STARTED) and its outcome is not
    RUNNING = "running"
    #: the last attempt failed; the next one is due at `retry_at_ms`
    RETRY_WAIT = "retry_wait"
    COMPLETED = "completed"
    FAILED = "failed"


class CompStatus(enum.StrEnum):
    """Where one call site's compensation stands (`Invocation.comp`); see CallStatus."""

    #: no compensation was started
    NONE = ""
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    COMPENSATED = "compensated"
    FAILED = "failed"


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """Struct → plain dict."""
    return json_format.MessageToDict(s)


def dict_to_struct(d: dict[str, Any] | None) -> struct_pb2.Struct:
    """Plain JSON-shaped dict → Struct."""
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def ts_ms(t: timestamp_pb2.Timestamp) -> int:
    """Timestamp → Unix milliseconds."""
    return t.seconds * 1000 + t.nanos // 1_000_000


def ms_ts(ms: int) -> timestamp_pb2.Timestamp:
    """Unix milliseconds → Timestamp."""
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(int(ms))
    return t


def error_dict(e: saga_pb2.StepError) -> dict[str, str]:
    """StepError → {"code", "message", "step_name"}."""
    return {"code": e.code, "message": e.message, "step_name": e.step_name}


def error_proto(d: dict[str, str] | None) -> saga_pb2.StepError | None:
    """{"code", "message", "step_name"} → StepError (None stays None)."""
    return saga_pb2.StepError(**d) if d else None


@dataclass
class Invocation:
    """One call site of a step: the step itself, a map item or a loop iteration.

    Attributes:
        status: the action's CallStatus.
        attempts: number of the last attempt sent.
        failures: attempts that returned an error.
        retry_at_ms: when the next attempt is due (Unix ms), in RETRY_WAIT.
        comp: the compensation's CompStatus.
    """

    status: CallStatus = CallStatus.PENDING
    attempts: int = 0
    failures: int = 0
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    retry_at_ms: int = 0
    comp: CompStatus = CompStatus.NONE
    comp_attempts: int = 0
    comp_failures: int = 0
    comp_retry_at_ms: int = 0

    @property
    def attempted(self) -> bool:
        """True when at least one attempt was sent (so it may have taken effect)."""
        return self.attempts > 0


@dataclass
class StepRecord:
    """A step's folded state.

    Attributes:
        status: StepStatus value.
        invocations: by index (SINGLE for a plain step, item index, iteration).
        items_total: number of map items, once known.
        finish_seq: sequence of the step-level STEP_COMPLETED/STEP_FAILED.
    """

    name: str
    status: int = saga_pb2.STEP_STATUS_PENDING
    invocations: dict[int, Invocation] = field(default_factory=dict)
    items_total: int | None = None
    attempts: int = 0
    comp_attempts: int = 0
    output: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    start_ms: int = 0
    end_ms: int = 0
    finish_seq: int = 0

    def inv(self, index: int) -> Invocation:
        """The invocation at `index`, created on first use."""
        if index not in self.invocations:
            self.invocations[index] = Invocation()
        return self.invocations[index]

    @property
    def attempted(self) -> bool:
        """True when any invocation was attempted."""
        return any(i.attempted for i in self.invocations.values())


@dataclass
class SagaRecord:
    """A saga's folded state; see module docstring."""

    saga_id: str
    definition: saga_pb2.SagaDefinition
    input: dict[str, Any]
    idempotency_key: str = ""
    state: int = saga_pb2.SAGA_STATE_PENDING
    steps: dict[str, StepRecord] = field(default_factory=dict)
    seq: int = 0
    last_hash: str = "0" * 64
    create_ms: int = 0
    update_ms: int = 0
    end_ms: int = 0
    coordinator_id: str = ""
    fencing_token: int = 0
    cancel_logged: bool = False
    cancel_reason: str = ""
    comp_cause: dict[str, str] | None = None
    error: dict[str, str] | None = None
    output: dict[str, Any] | None = None
    #: W3C traceparent of the saga's span (SAGA_STARTED), parent of its step spans.
    traceparent: str = ""

    # ---- folding ----------------------------------------------------------
    @classmethod
    def start(cls, ev: saga_pb2.SagaEvent, step_names: list[str]) -> SagaRecord:
        """The record after SAGA_STARTED (sequence 1)."""
        rec = cls(
            saga_id=ev.saga_id,
            definition=ev.definition,
            input=struct_to_dict(ev.input),
            idempotency_key=ev.idempotency_key,
            create_ms=ts_ms(ev.create_time),
            steps={n: StepRecord(name=n) for n in step_names},
            traceparent=ev.traceparent,
        )
        rec._advance(ev)
        return rec

    def _advance(self, ev: saga_pb2.SagaEvent) -> None:
        self.seq = ev.sequence
        self.last_hash = ev.provenance.hash
        self.update_ms = ts_ms(ev.create_time)

    def fold(self, ev: saga_pb2.SagaEvent) -> None:
        """Apply one event (sequence must be seq+1).

        Raises:
            ValueError: on a gap in the sequence.
        """
        if ev.sequence != self.seq + 1:
            raise ValueError(f"saga {self.saga_id}: event {ev.sequence} after {self.seq}")
        t = ev.type
        now = ts_ms(ev.create_time)
        T = saga_pb2
        step = self.steps.get(ev.step_name) if ev.step_name else None
        index = (
            ev.item_index
            if ev.HasField("item_index")
            else ev.iteration
            if ev.HasField("iteration")
            else SINGLE
        )
        if t == T.SAGA_EVENT_TYPE_LEASE_ACQUIRED:
            self.coordinator_id = ev.coordinator_id
            self.fencing_token = ev.fencing_token
            if self.state == T.SAGA_STATE_PENDING:
                self.state = T.SAGA_STATE_RUNNING
        elif t == T.SAGA_EVENT_TYPE_CANCEL_REQUESTED:
            self.cancel_logged = True
            self.cancel_reason = ev.error.message
        elif t == T.SAGA_EVENT_TYPE_STEP_STARTED and step:
            inv = step.inv(index)
            inv.status = CallStatus.RUNNING
            inv.attempts = ev.attempt
            inv.input = struct_to_dict(ev.input)
            step.attempts += 1
            step.status = T.STEP_STATUS_RUNNING
            step.start_ms = step.start_ms or now
        elif t == T.SAGA_EVENT_TYPE_STEP_ATTEMPT_FAILED and step:
            inv = step.inv(index)
            inv.status = CallStatus.RETRY_WAIT
            inv.failures += 1
            inv.error = error_dict(ev.error)
            inv.retry_at_ms = now + int(ev.backoff.ToMilliseconds())
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPLETED and step:
            if index != SINGLE or (step.invocations.get(SINGLE) and len(step.invocations) == 1):
                inv = step.inv(index)
                inv.status = CallStatus.COMPLETED
                inv.output = struct_to_dict(ev.output)
            if index == SINGLE:
                step.status = T.STEP_STATUS_COMPLETED
                step.output = struct_to_dict(ev.output)
                step.end_ms = now
                step.finish_seq = ev.sequence
        elif t == T.SAGA_EVENT_TYPE_STEP_FAILED and step:
            if index != SINGLE or SINGLE in step.invocations:
                inv = step.inv(index)
                inv.status = CallStatus.FAILED
                inv.error = error_dict(ev.error)
            if index == SINGLE:
                step.status = T.STEP_STATUS_FAILED
                step.error = error_dict(ev.error)
                step.end_ms = now
                step.finish_seq = ev.sequence
        elif t == T.SAGA_EVENT_TYPE_STEP_SKIPPED and step:
            step.status = T.STEP_STATUS_SKIPPED
            step.end_ms = now
        elif t == T.SAGA_EVENT_TYPE_COMPENSATION_STARTED:
            self.state = T.SAGA_STATE_COMPENSATING
            self.comp_cause = error_dict(ev.error)
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATION_STARTED and step:
            inv = step.inv(index)
            inv.comp = CompStatus.RUNNING
            inv.comp_attempts = ev.attempt
            step.comp_attempts += 1
            step.status = T.STEP_STATUS_COMPENSATING
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATION_ATTEMPT_FAILED and step:
            inv = step.inv(index)
            inv.comp = CompStatus.RETRY_WAIT
            inv.comp_failures += 1
            inv.comp_retry_at_ms = now + int(ev.backoff.ToMilliseconds())
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATED and step:
            step.inv(index).comp = CompStatus.COMPENSATED
            done = CompStatus.COMPENSATED
            if all(i.comp == done for i in step.invocations.values() if i.attempted):
                step.status = T.STEP_STATUS_COMPENSATED
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED and step:
            step.inv(index).comp = CompStatus.FAILED
            step.status = T.STEP_STATUS_COMPENSATION_FAILED
            step.error = error_dict(ev.error)
        elif t in _FINAL_EVENT_STATE:
            self.state = _FINAL_EVENT_STATE[t]
            self.end_ms = now
            if ev.HasField("error"):
                self.error = error_dict(ev.error)
            if t == T.SAGA_EVENT_TYPE_SAGA_COMPLETED:
                self.output = struct_to_dict(ev.output)
        if self.error is None and self.comp_cause is not None:
            self.error = self.comp_cause
        self._advance(ev)

    # ---- queries ------------------------------------------------------------
    @property
    def final(self) -> bool:
        """True in a final state."""
        return self.state in FINAL_STATES

    def pivot_passed(self, pivot: str | None) -> bool:
        """True once the pivot step has completed."""
        return bool(pivot) and self.steps[pivot or ""].status == saga_pb2.STEP_STATUS_COMPLETED

    def context(self) -> dict[str, Any]:
        """The CEL context: {"input": ..., "steps": {name: output}}."""
        return {
            "input": self.input,
            "steps": {
                n: s.output
                for n, s in self.steps.items()
                if s.status in (saga_pb2.STEP_STATUS_COMPLETED,) and s.output is not None
            },
        }

    # ---- snapshots ----------------------------------------------------------
    def to_json(self) -> str:
        """Snapshot JSON: the record's fields, the definition as base64 of its
        serialization (made once per record: the definition never changes).

        Built from shallow views of the dataclasses rather than `asdict`, which
        deep-copies every value (the definition message too) only for
        json.dumps to read them once; the JSON is the same.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        cached = self.__dict__.get("_definition_b64")
        if cached is None or cached[0] is not self.definition:
            cached = (
                self.definition,
                base64.b64encode(self.definition.SerializeToString()).decode(),
            )
            self.__dict__["_definition_b64"] = cached
        d["definition"] = cached[1]
        d["steps"] = {
            n: {**vars(st), "invocations": {k: vars(i) for k, i in st.invocations.items()}}
            for n, st in self.steps.items()
        }
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> SagaRecord:
        """Inverse of to_json."""
        d = json.loads(raw)
        defn = saga_pb2.SagaDefinition()
        defn.ParseFromString(base64.b64decode(d.pop("definition")))
        steps = {}
        for name, s in d.pop("steps").items():
            invs = {}
            for k, i in s.pop("invocations").items():
                # the JSON holds the enums' string values
                i["status"], i["comp"] = CallStatus(i["status"]), CompStatus(i["comp"])
                invs[int(k)] = Invocation(**i)
            steps[name] = StepRecord(invocations=invs, **s)
        return cls(definition=defn, steps=steps, **d)

    # ---- API view -----------------------------------------------------------
    def to_proto(self, *, summary: bool = False) -> saga_pb2.Saga:
        """The Saga message; `summary` leaves out the definition and outputs."""
        s = saga_pb2.Saga(
            saga_id=self.saga_id,
            state=self.state,  # type: ignore[arg-type]
            idempotency_key=self.idempotency_key,
            create_time=ms_ts(self.create_ms),
            update_time=ms_ts(self.update_ms),
            last_sequence=self.seq,
            coordinator_id=self.coordinator_id,
            fencing_token=self.fencing_token,
        )
        if self.end_ms:
            s.end_time.CopyFrom(ms_ts(self.end_ms))
        err = error_proto(self.error)
        if err is not None:
            s.error.CopyFrom(err)
        if summary:
            s.definition.name = self.definition.name
            s.definition.version = self.definition.version
        else:
            s.definition.CopyFrom(self.definition)
            s.input.CopyFrom(dict_to_struct(self.input))
            s.output.CopyFrom(
                dict_to_struct(
                    {n: st.output for n, st in self.steps.items() if st.output is not None}
                )
            )
        for st in self.steps.values():
            ss = s.steps.add(
                name=st.name,
                status=st.status,
                attempts=st.attempts,
                compensation_attempts=st.comp_attempts,
            )
            if st.output is not None and not summary:
                ss.output.CopyFrom(dict_to_struct(st.output))
            e = error_proto(st.error)
            if e is not None:
                ss.error.CopyFrom(e)
            if st.start_ms:
                ss.start_time.CopyFrom(ms_ts(st.start_ms))
            if st.end_ms:
                ss.end_time.CopyFrom(ms_ts(st.end_ms))
        return s
