"""The saga engine: replicas take leases on sagas and drive them from their log.

One `Runner` drives one saga while this replica holds its lease. Its loop is
write-ahead: decide what happens next from the folded record (`_plan`), append
those events to the log (one atomic, fenced Redis call per batch), and only
then send the calls they announce. Outcomes become events that are appended
with the next batch. Because the record is only ever changed by folding
events, a replica that replays the log after a SIGKILL reaches the same
record and makes the same decisions; a call whose outcome was not logged is
sent again with the same idempotency key and the next attempt number.

`Engine` owns the runners, renews every held lease in one pipelined round
trip per interval (seeing cancel requests on the way), and runs a recovery
loop that takes sagas whose lease is free or expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.saga.v1 import saga_pb2
from services.saga import metrics
from services.saga.agents import AgentCaller, CallError
from services.saga.compensation import ready_units, unit_failed
from services.saga.definition import CompiledDefinition, StepSpec, compile_definition
from services.saga.events import seal
from services.saga.state import SINGLE, SagaRecord, StepRecord, dict_to_struct, ms_ts
from services.saga.store import Fenced, Lease, SagaStore

log = logging.getLogger("agentmesh.saga.engine")
T = saga_pb2
_DONE = (T.STEP_STATUS_COMPLETED, T.STEP_STATUS_SKIPPED)
_FINAL_METRIC = {
    T.SAGA_EVENT_TYPE_SAGA_COMPLETED: "completed",
    T.SAGA_EVENT_TYPE_SAGA_COMPENSATED: "compensated",
    T.SAGA_EVENT_TYPE_SAGA_CANCELLED: "cancelled",
    T.SAGA_EVENT_TYPE_SAGA_FAILED: "failed",
}


def now_ms() -> int:
    """Wall clock, Unix milliseconds."""
    return int(time.time() * 1000)


def call_key(saga_id: str, spec: StepSpec, index: int) -> str:
    """Idempotency key of a call site (see Step in saga.proto)."""
    base = f"{saga_id}/{spec.name}"
    if spec.kind == "map":
        return f"{base}[{index}]"
    if spec.kind == "loop":
        return f"{base}#{index}"
    return base


@dataclass(frozen=True)
class Call:
    """One call to send after its STEP_STARTED/STEP_COMPENSATION_STARTED is durable."""

    kind: str  # "execute" | "compensate"
    step: str
    index: int
    attempt: int
    key: str
    input: dict[str, Any]
    original_output: dict[str, Any] | None = None


@dataclass(frozen=True)
class EngineOptions:
    """Engine tuning.

    Attributes:
        coordinator_id: this replica's id (unique per process).
        lease_ttl_ms: lease length; a killed replica's sagas move after this.
        renew_interval_ms: how often held leases are renewed (and cancels seen).
        recovery_interval_ms: how often free or expired leases are looked for.
        max_active: sagas this replica drives at once.
        snapshot_every: events between snapshots.
    """

    coordinator_id: str
    lease_ttl_ms: int = 5000
    renew_interval_ms: int = 1000
    recovery_interval_ms: int = 1000
    max_active: int = 1000
    snapshot_every: int = 16


class Runner:
    """Drives one saga under one lease; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        lease: Lease,
        rec: SagaRecord,
        comp: CompiledDefinition,
        *,
        cancel_requested: bool,
        cancel_reason: str,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.lease = lease
        self.rec = rec
        self.comp = comp
        self.cancel_seen = cancel_requested
        self.cancel_reason = cancel_reason
        self.lost = False
        self.wake = asyncio.Event()
        self.pending: list[saga_pb2.SagaEvent] = []
        self.durable_seq = rec.seq
        self.snap_seq = rec.seq
        self.tasks: dict[asyncio.Task[Any], Call] = {}
        self.busy: set[tuple[str, str, int]] = set()
        # Compensation attempts the agent answered EXECUTE_IN_FLIGHT, per call
        # site: waits, not failures. In memory only; after a takeover they count.
        self.comp_waits: dict[tuple[str, int], int] = {}

    # ---- events -----------------------------------------------------------------
    def emit(self, type_: int, *, step: str = "", index: int = SINGLE, **fields: Any) -> None:
        """Build, seal and fold the next event; it becomes durable at the next flush."""
        ev = saga_pb2.SagaEvent(
            saga_id=self.rec.saga_id,
            sequence=self.rec.seq + 1,
            type=type_,  # type: ignore[arg-type]
            step_name=step,
            coordinator_id=self.lease.owner,
            fencing_token=self.lease.fence,
            create_time=ms_ts(now_ms()),
        )
        if index != SINGLE:
            spec = self.comp.by_name[step]
            if spec.kind == "map":
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
        prev = self.rec.last_hash
        self.rec.fold(ev)
        ev.state = self.rec.state  # type: ignore[assignment]
        self.rec.last_hash = seal(ev, prev)
        self.pending.append(ev)

    async def flush(self) -> None:
        """Append pending events atomically under the lease.

        Raises:
            Fenced: the lease is lost.
        """
        if not self.pending:
            return
        if self.lost:
            raise Fenced("lease lost")
        snapshot, snap_seq = "", 0
        if self.rec.final or self.rec.seq - self.snap_seq >= self.engine.opts.snapshot_every:
            snapshot, snap_seq = self.rec.to_json(), self.rec.seq
        await self.store.append(
            self.lease,
            self.pending,
            expected_seq=self.durable_seq,
            last_hash=self.rec.last_hash,
            state=self.rec.state,
            final=self.rec.final,
            snapshot=snapshot,
            snap_seq=snap_seq,
        )
        if snap_seq:
            self.snap_seq = snap_seq
        for ev in self.pending:
            self._observe(ev)
        self.durable_seq = self.rec.seq
        self.pending.clear()

    def _observe(self, ev: saga_pb2.SagaEvent) -> None:
        t = ev.type
        idx_level = ev.HasField("item_index") or ev.HasField("iteration")
        if t == T.SAGA_EVENT_TYPE_STEP_COMPLETED and not idx_level:
            metrics.STEPS.labels(metrics.step_label(ev.step_name), "completed").inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_FAILED and not idx_level:
            metrics.STEPS.labels(metrics.step_label(ev.step_name), "failed").inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_SKIPPED:
            metrics.STEPS.labels(metrics.step_label(ev.step_name), "skipped").inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATED:
            metrics.COMPENSATIONS.inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED:
            metrics.COMPENSATION_FAILURES.inc()
            log.error(
                "compensation failed; saga needs intervention",
                extra={"saga_id": ev.saga_id, "step": ev.step_name, "error": ev.error.message},
            )
        elif t in _FINAL_METRIC:
            status = _FINAL_METRIC[t]
            metrics.EXECUTIONS.labels(status).inc()
            metrics.DURATION.labels(status).observe(max(0, self.rec.end_ms - self.rec.create_ms))

    # ---- main loop ----------------------------------------------------------------
    async def run(self) -> None:
        """Drive until final, lease loss or engine stop."""
        try:
            self.emit(T.SAGA_EVENT_TYPE_LEASE_ACQUIRED)
            while True:
                calls = self._plan()
                await self.flush()
                if self.rec.final:
                    return
                for c in calls:
                    self._launch(c)
                await self._wait()
                self._collect()
        except Fenced as e:
            log.warning(
                "lease lost; stopping", extra={"saga_id": self.rec.saga_id, "reason": str(e)}
            )
            self.lost = True
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("saga runner crashed", extra={"saga_id": self.rec.saga_id})
        finally:
            for t in self.tasks:
                t.cancel()
            self.engine._runner_done(self)

    def _launch(self, c: Call) -> None:
        t = asyncio.ensure_future(self._send(c))
        self.tasks[t] = c
        self.busy.add((c.kind, c.step, c.index))

    async def _send(self, c: Call) -> dict[str, Any] | None:
        spec = self.comp.by_name[c.step]
        md = {"saga_id": self.rec.saga_id, "step": c.step}
        if c.kind == "execute":
            return await self.engine.caller.execute(
                spec.proto,
                input=c.input,
                key=c.key,
                attempt=c.attempt,
                timeout_ms=spec.timeout_ms,
                metadata=md,
            )
        await self.engine.caller.compensate(
            spec.proto,
            input=c.input,
            original_output=c.original_output,
            key=c.key + "/compensate",
            route_key=c.key,
            attempt=c.attempt,
            timeout_ms=spec.timeout_ms,
            metadata=md,
        )
        return None

    async def _wait(self) -> None:
        timeout_s = self._next_timer_s()
        waiters: set[asyncio.Future[Any]] = set(self.tasks)
        wake = asyncio.ensure_future(self.wake.wait())
        waiters.add(wake)
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        self.wake.clear()
        if self.lost:
            raise Fenced("lease lost")

    def _next_timer_s(self) -> float | None:
        due: list[int] = []
        for st in self.rec.steps.values():
            for inv in st.invocations.values():
                if inv.status == "retry_wait":
                    due.append(inv.retry_at_ms)
                if inv.comp == "retry_wait":
                    due.append(inv.comp_retry_at_ms)
        if self.rec.state == T.SAGA_STATE_RUNNING and not self.rec.pivot_passed(self.comp.pivot):
            due.append(self.rec.create_ms + int(self.comp.timeout_ms))
        if not due:
            return None if self.tasks else 1.0
        return max(0.0, (min(due) - now_ms()) / 1000.0) + 0.001

    # ---- outcomes -----------------------------------------------------------------
    def _collect(self) -> None:
        for t in [t for t in self.tasks if t.done()]:
            c = self.tasks.pop(t)
            self.busy.discard((c.kind, c.step, c.index))
            spec = self.comp.by_name[c.step]
            exc = t.exception() if not t.cancelled() else CallError("CANCELLED", "call cancelled")
            if exc is not None and not isinstance(exc, CallError):
                exc = CallError("INTERNAL", f"{type(exc).__name__}: {exc}")
            st = self.rec.steps[c.step]
            inv = st.inv(c.index)
            if c.kind == "execute":
                if exc is None:
                    self.emit(
                        T.SAGA_EVENT_TYPE_STEP_COMPLETED,
                        step=c.step,
                        index=c.index,
                        output=t.result() or {},
                        attempt=c.attempt,
                    )
                    continue
                assert isinstance(exc, CallError)
                err = T.StepError(code=exc.code, message=exc.message, step_name=c.step)
                failures = inv.failures + 1
                forward = self.rec.pivot_passed(self.comp.pivot)
                # ABORTED/COMPENSATED: the agent already ran this call site's
                # compensation and refuses the action for good; a retry cannot help.
                if exc.reason != "COMPENSATED" and exc.code not in spec.retry.non_retryable and (
                    forward or failures < spec.retry.max_attempts
                ):
                    self.emit(
                        T.SAGA_EVENT_TYPE_STEP_ATTEMPT_FAILED,
                        step=c.step,
                        index=c.index,
                        attempt=c.attempt,
                        error=err,
                        backoff_ms=spec.retry.backoff_ms(failures=failures),
                    )
                else:
                    self.emit(
                        T.SAGA_EVENT_TYPE_STEP_FAILED,
                        step=c.step,
                        index=c.index,
                        attempt=c.attempt,
                        error=err,
                    )
            else:
                if exc is None:
                    self.emit(
                        T.SAGA_EVENT_TYPE_STEP_COMPENSATED,
                        step=c.step,
                        index=c.index,
                        attempt=c.attempt,
                    )
                    continue
                assert isinstance(exc, CallError)
                err = T.StepError(code=exc.code, message=exc.message, step_name=c.step)
                # EXECUTE_IN_FLIGHT: the agent holds the compensation until the
                # action it undoes has finished; waiting is not failing.
                waiting = exc.reason == "EXECUTE_IN_FLIGHT"
                waits = self.comp_waits.get((c.step, c.index), 0) + waiting
                self.comp_waits[(c.step, c.index)] = waits
                failures = max(1, inv.comp_failures + 1 - waits)
                if waiting or (
                    exc.code not in spec.retry.non_retryable
                    and failures < spec.retry.max_attempts
                ):
                    self.emit(
                        T.SAGA_EVENT_TYPE_STEP_COMPENSATION_ATTEMPT_FAILED,
                        step=c.step,
                        index=c.index,
                        attempt=c.attempt,
                        error=err,
                        backoff_ms=spec.retry.backoff_ms(failures=failures),
                    )
                else:
                    self.emit(
                        T.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED,
                        step=c.step,
                        index=c.index,
                        attempt=c.attempt,
                        error=err,
                    )

    # ---- planning -----------------------------------------------------------------
    def _plan(self) -> list[Call]:
        calls: list[Call] = []
        if self.rec.state == T.SAGA_STATE_RUNNING:
            calls += self._plan_forward()
        if self.rec.state == T.SAGA_STATE_COMPENSATING:
            calls += self._plan_compensation()
        return calls

    def _in_flight(self, step: str) -> bool:
        return any(s == step for _, s, _ in self.busy)

    def _start(self, spec: StepSpec, index: int, attempt: int, inp: dict[str, Any]) -> Call:
        key = call_key(self.rec.saga_id, spec, index)
        self.emit(
            T.SAGA_EVENT_TYPE_STEP_STARTED,
            step=spec.name,
            index=index,
            attempt=attempt,
            input=inp,
            idempotency_key=key,
        )
        return Call("execute", spec.name, index, attempt, key, inp)

    def _resume(self, spec: StepSpec, index: int, now: int) -> Call | None:
        """A retry that is due, or a call whose outcome a crash lost."""
        inv = self.rec.steps[spec.name].invocations.get(index)
        if inv is None or ("execute", spec.name, index) in self.busy:
            return None
        if (inv.status == "retry_wait" and inv.retry_at_ms <= now) or inv.status == "running":
            return self._start(spec, index, inv.attempts + 1, inv.input or {})
        return None

    def _fail_step(self, name: str, code: str, message: str) -> None:
        self.emit(
            T.SAGA_EVENT_TYPE_STEP_FAILED,
            step=name,
            error=T.StepError(code=code, message=message, step_name=name),
        )

    def _stop_cause(self, now: int) -> T.StepError | None:
        rec = self.rec
        if rec.cancel_logged:
            return T.StepError(code="CANCELLED", message=rec.cancel_reason or "cancelled")
        if now > rec.create_ms + self.comp.timeout_ms:
            return T.StepError(
                code="DEADLINE_EXCEEDED",
                message=f"saga timed out after {self.comp.timeout_ms:.0f}ms",
            )
        for spec in self.comp.steps:
            st = rec.steps[spec.name]
            if st.status == T.STEP_STATUS_FAILED:
                e = st.error or {}
                return T.StepError(
                    code=e.get("code", "UNKNOWN"),
                    message=f"step {spec.name!r} failed: {e.get('message', '')}",
                    step_name=spec.name,
                )
        return None

    def _plan_forward(self) -> list[Call]:
        rec, comp = self.rec, self.comp
        now = now_ms()
        forward = rec.pivot_passed(comp.pivot)
        if self.cancel_seen and not rec.cancel_logged and not forward:
            self.emit(
                T.SAGA_EVENT_TYPE_CANCEL_REQUESTED,
                error=T.StepError(code="CANCELLED", message=self.cancel_reason),
            )
        cause = None if forward else self._stop_cause(now)
        fatal = next(
            (s for s in comp.steps if forward and rec.steps[s.name].status == T.STEP_STATUS_FAILED),
            None,
        )
        if cause is not None or fatal is not None:
            code = cause.code if cause is not None else "ABORTED"
            for spec in comp.steps:
                st = rec.steps[spec.name]
                for idx, inv in list(st.invocations.items()):
                    if ("execute", spec.name, idx) in self.busy:
                        continue
                    if inv.status == "retry_wait" or inv.status == "running":
                        # not re-sent: the saga is stopping; its effect (if any) is compensated
                        self.emit(
                            T.SAGA_EVENT_TYPE_STEP_FAILED,
                            step=spec.name,
                            index=idx,
                            error=T.StepError(
                                code=code,
                                message="stopped: the saga is compensating",
                                step_name=spec.name,
                            ),
                        )
            if self.busy:
                return []
            for spec in comp.steps:
                if rec.steps[spec.name].status == T.STEP_STATUS_RUNNING:
                    self._fail_step(spec.name, code, "stopped before every call site ran")
            if fatal is not None:
                st = rec.steps[fatal.name]
                self.emit(
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
            self.emit(T.SAGA_EVENT_TYPE_COMPENSATION_STARTED, error=cause)
            return []

        calls: list[Call] = []
        for spec in comp.steps:
            st = rec.steps[spec.name]
            if st.status == T.STEP_STATUS_PENDING:
                if all(rec.steps[d].status in _DONE for d in spec.deps):
                    calls += self._begin(spec, st)
            elif st.status == T.STEP_STATUS_RUNNING:
                calls += self._advance(spec, st, now)
        if (
            rec.state == T.SAGA_STATE_RUNNING
            and all(s.status in _DONE for s in rec.steps.values())
            and not calls
        ):
            self.emit(
                T.SAGA_EVENT_TYPE_SAGA_COMPLETED,
                output={n: s.output for n, s in rec.steps.items() if s.output is not None},
            )
        return calls

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        ctx = self.rec.context()
        ctx.update(extra)
        return ctx

    def _input(
        self, spec: StepSpec, ctx: dict[str, Any], default: dict[str, Any]
    ) -> dict[str, Any]:
        if not spec.input_mapping:
            return default
        return {k: e.evaluate(ctx) for k, e in spec.input_mapping.items()}

    def _begin(self, spec: StepSpec, st: StepRecord) -> list[Call]:
        from agentmesh.runtime.cel import CelError

        ctx = self._ctx()
        try:
            if spec.condition is not None and not spec.condition.evaluate_bool(ctx):
                self.emit(T.SAGA_EVENT_TYPE_STEP_SKIPPED, step=spec.name)
                return []
            if spec.kind == "single":
                return [self._start(spec, SINGLE, 1, self._input(spec, ctx, self.rec.input))]
        except CelError as e:
            self._fail_step(spec.name, "INVALID_ARGUMENT", str(e))
            return []
        return self._advance(spec, st, now_ms())

    def _advance(self, spec: StepSpec, st: StepRecord, now: int) -> list[Call]:
        from agentmesh.runtime.cel import CelError

        if spec.kind == "single":
            c = self._resume(spec, SINGLE, now)
            return [c] if c else []
        try:
            if spec.kind == "map":
                return self._advance_map(spec, st, now)
            return self._advance_loop(spec, st, now)
        except CelError as e:
            if not self._in_flight(spec.name):
                self._fail_step(spec.name, "INVALID_ARGUMENT", str(e))
            return []

    def _items(self, spec: StepSpec, st: StepRecord) -> list[Any]:
        from agentmesh.runtime.cel import CelError

        assert spec.map_items is not None
        items = spec.map_items.evaluate(self._ctx())
        if not isinstance(items, list):
            raise CelError(f"map.items yielded {type(items).__name__}, not a list")
        st.items_total = len(items)
        return items

    def _advance_map(self, spec: StepSpec, st: StepRecord, now: int) -> list[Call]:
        items = self._items(spec, st)
        calls = [c for i in list(st.invocations) if (c := self._resume(spec, i, now))]
        failed = [i for i in st.invocations.values() if i.status == "failed"]
        if failed:
            if (
                not self._in_flight(spec.name)
                and not calls
                and not any(i.status == "retry_wait" for i in st.invocations.values())
            ):
                e = failed[0].error or {}
                self._fail_step(spec.name, e.get("code", "UNKNOWN"), e.get("message", ""))
            return calls
        active = sum(1 for i in st.invocations.values() if i.status in ("running", "retry_wait"))
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
            i.status == "completed" for i in st.invocations.values()
        ):
            results = [st.invocations[i].output for i in range(len(items))]
            if spec.map_reduce is not None:
                out = spec.map_reduce.evaluate({**ctx, "results": results})
                out = out if isinstance(out, dict) else {"value": out}
            else:
                out = {"results": results}
            self.emit(T.SAGA_EVENT_TYPE_STEP_COMPLETED, step=spec.name, output=out)
        return calls

    def _advance_loop(self, spec: StepSpec, st: StepRecord, now: int) -> list[Call]:
        assert spec.loop_condition is not None
        if st.invocations:
            k = max(st.invocations)
            inv = st.invocations[k]
            c = self._resume(spec, k, now)
            if c:
                return [c]
            if inv.status == "failed":
                e = inv.error or {}
                self._fail_step(spec.name, e.get("code", "UNKNOWN"), e.get("message", ""))
                return []
            if inv.status != "completed":
                return []
            nxt, last = k + 1, inv.output or {}
        else:
            nxt, last = 0, {}
        ctx = self._ctx(iteration=nxt, last=last)
        if nxt >= spec.loop_max_iterations or not spec.loop_condition.evaluate_bool(ctx):
            self.emit(T.SAGA_EVENT_TYPE_STEP_COMPLETED, step=spec.name, output=last)
            return []
        default = {"iteration": nxt, "last": last}
        return [self._start(spec, nxt, 1, self._input(spec, ctx, default))]

    def _plan_compensation(self) -> list[Call]:
        rec, comp = self.rec, self.comp
        now = now_ms()
        failed = next((n for n, st in rec.steps.items() if unit_failed(st)), None)
        if failed is not None:
            if any(k == "compensate" for k, _, _ in self.busy):
                return []
            st = rec.steps[failed]
            e = st.error or {}
            self.emit(
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
            self.emit(T.SAGA_EVENT_TYPE_COMPENSATION_COMPLETED)
            if rec.cancel_logged:
                self.emit(T.SAGA_EVENT_TYPE_SAGA_CANCELLED)
            else:
                self.emit(T.SAGA_EVENT_TYPE_SAGA_COMPENSATED)
            return []
        calls: list[Call] = []
        for name in ready:
            st = rec.steps[name]
            spec = comp.by_name[name]
            # call sites of one step are undone one at a time, last first
            for idx in sorted((i for i, v in st.invocations.items() if v.attempted), reverse=True):
                inv = st.invocations[idx]
                if inv.comp == "compensated":
                    continue
                if ("compensate", name, idx) in self.busy:
                    break
                if inv.comp == "retry_wait" and inv.comp_retry_at_ms > now:
                    break
                attempt = inv.comp_attempts + 1
                key = call_key(rec.saga_id, spec, idx)
                self.emit(
                    T.SAGA_EVENT_TYPE_STEP_COMPENSATION_STARTED,
                    step=name,
                    index=idx,
                    attempt=attempt,
                    idempotency_key=key + "/compensate",
                )
                calls.append(
                    Call("compensate", name, idx, attempt, key, inv.input or {}, inv.output)
                )
                break
        return calls


class Engine:
    """Leases, runners, renewal and recovery for one coordinator replica.

    Args:
        store: Redis persistence.
        caller: agent client.
        opts: tuning.
    """

    def __init__(self, store: SagaStore, caller: AgentCaller, opts: EngineOptions) -> None:
        self.store = store
        self.caller = caller
        self.opts = opts
        self.runners: dict[str, Runner] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._compiled: dict[bytes, CompiledDefinition] = {}
        self._starting: set[str] = set()

    async def start(self) -> None:
        """Start the renewal and recovery loops."""
        self._loops = [
            asyncio.ensure_future(self._renew_loop()),
            asyncio.ensure_future(self._recovery_loop()),
        ]

    async def stop(self) -> None:
        """Stop driving: cancel runners and hand their leases back at once."""
        runners = list(self.runners.values())
        # cancel_and_wait: one cancel can be lost inside a redis-py call on 3.11.
        await asyncio.gather(
            *(cancel_and_wait(t) for t in [*self._loops, *self._tasks]), return_exceptions=True
        )
        for r in runners:
            with contextlib.suppress(Exception):
                await self.store.release(r.lease)
        await self.caller.close()

    def kick(self, saga_id: str) -> None:
        """Try to drive a saga now (after StartSaga), without waiting for recovery."""
        self._spawn(self.try_drive(saga_id, reason="start"))

    def notify_cancel(self, saga_id: str, reason: str) -> None:
        """Tell the local runner (if any) that the saga was cancelled."""
        r = self.runners.get(saga_id)
        if r is not None:
            r.cancel_seen = True
            r.cancel_reason = reason
            r.wake.set()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def compile(self, defn: saga_pb2.SagaDefinition) -> CompiledDefinition:
        """Compile (cached by content) a definition that was validated at StartSaga."""
        key = defn.SerializeToString(deterministic=True)
        c = self._compiled.get(key)
        if c is None:
            if len(self._compiled) > 1000:
                self._compiled.clear()
            c = self._compiled[key] = compile_definition(defn)
        return c

    async def try_drive(self, saga_id: str, *, reason: str) -> bool:
        """Take the saga's lease if free and start driving it; True on success."""
        if saga_id in self.runners or saga_id in self._starting:
            return False
        if len(self.runners) + len(self._starting) >= self.opts.max_active:
            return False
        self._starting.add(saga_id)
        try:
            lease = await self.store.acquire(
                saga_id, owner=self.opts.coordinator_id, ttl_ms=self.opts.lease_ttl_ms
            )
            if lease is None:
                return False
            try:
                rec = await self.store.load(saga_id)
                if rec is None:
                    await self.store.release(lease)
                    return False
                cancel, why = await self.store.cancel_flag(saga_id)
                runner = Runner(
                    self,
                    lease,
                    rec,
                    self.compile(rec.definition),
                    cancel_requested=cancel,
                    cancel_reason=why,
                )
            except Exception:
                with contextlib.suppress(Exception):
                    await self.store.release(lease)
                raise
            self.runners[saga_id] = runner
            metrics.ACTIVE.set(len(self.runners))
            metrics.TAKEOVERS.labels(reason).inc()
            self._spawn(runner.run())
            return True
        except Exception:
            log.exception("cannot take saga", extra={"saga_id": saga_id})
            return False
        finally:
            self._starting.discard(saga_id)

    def _runner_done(self, r: Runner) -> None:
        if self.runners.get(r.rec.saga_id) is r:
            del self.runners[r.rec.saga_id]
        metrics.ACTIVE.set(len(self.runners))
        if not r.lost and not r.rec.final:
            # crashed or stopping runner: give the saga back for another replica
            self._spawn(self._release_quietly(r.lease))

    async def _release_quietly(self, lease: Lease) -> None:
        with contextlib.suppress(Exception):
            await self.store.release(lease)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.renew_interval_ms / 1000.0)
            runners: Sequence[Runner] = list(self.runners.values())
            try:
                res = await self.store.renew(
                    [r.lease for r in runners], ttl_ms=self.opts.lease_ttl_ms
                )
            except Exception:
                log.exception("lease renewal failed")
                continue
            for r, (held, cancel) in zip(runners, res, strict=True):
                if not held:
                    r.lost = True
                    r.wake.set()
                elif cancel and not r.cancel_seen:
                    r.cancel_seen = True
                    _, r.cancel_reason = await self.store.cancel_flag(r.rec.saga_id)
                    r.wake.set()

    async def _recovery_loop(self) -> None:
        while True:
            interval = self.opts.recovery_interval_ms / 1000.0
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))  # spread replicas
            try:
                # the retention sweep rides on this loop: every replica runs it, and
                # pruning twice is harmless (ZREM), so it needs no leader
                await self.store.prune_expired(limit=500)
            except Exception:
                log.exception("retention sweep failed")
            free = self.opts.max_active - len(self.runners) - len(self._starting)
            if free <= 0:
                continue
            try:
                ids = await self.store.expired(limit=min(free, 200))
            except Exception:
                log.exception("recovery scan failed")
                continue
            for saga_id in ids:
                if saga_id not in self.runners:
                    await self.try_drive(saga_id, reason="recovery")
