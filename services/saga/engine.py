"""The saga engine: replicas take leases on sagas and drive them from their log.

One `Runner` drives one saga while this replica holds its lease. It is the
thin, I/O-doing half; the decisions are the pure `planner.Planner`'s. Its loop
is write-ahead: the planner decides what happens next from the folded record,
the runner appends those events to the log (one atomic, fenced Redis call per
batch), and only then sends the calls they announce. Outcomes become events
(`Planner.classify`) that are appended with the next batch. Because the record
is only ever changed by folding events, a replica that replays the log after
a SIGKILL reaches the same record and makes the same decisions; a call whose
outcome was not logged is sent again with the same idempotency key and the
next attempt number.

`Engine` owns the runners, renews every held lease in one pipelined round
trip per interval (seeing cancel requests on the way), and runs a recovery
loop that takes sagas whose lease is free or expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentmesh.runtime.dataset_epoch import detected_reset
from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga import metrics
from agentmesh.server.saga.agents import AgentCaller, CallError
from agentmesh.server.saga.definition import CompiledDefinition, compile_definition
from agentmesh.server.saga.planner import Call, CallKind, Outcome, Planner, Writer
from agentmesh.server.saga.state import SagaRecord
from agentmesh.server.saga.store import Fenced, Lease, SagaStore, lease_keys
from agentmesh.server.saga.tracing import attempt_span

log = logging.getLogger("agentmesh.saga.engine")
T = saga_pb2
_FINAL_METRIC = {
    T.SAGA_EVENT_TYPE_SAGA_COMPLETED: "completed",
    T.SAGA_EVENT_TYPE_SAGA_COMPENSATED: "compensated",
    T.SAGA_EVENT_TYPE_SAGA_CANCELLED: "cancelled",
    T.SAGA_EVENT_TYPE_SAGA_FAILED: "failed",
}


def now_ms() -> int:
    """Wall clock, Unix milliseconds: the clock the planner is given."""
    return int(time.time() * 1000)


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


class Wakeup:
    """What a runner waits on between turns: a call finishing (its task's done
    callback fires this), a due timer, or `set()` (a cancel, a lost lease).

    One future per wait, where an `asyncio.Event` needed a task of its own and
    an `asyncio.wait` over every call task on each turn.
    """

    def __init__(self) -> None:
        self._flag = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the runner now (or at its next wait)."""
        self._flag = True
        self.fire()

    def fire(self, *_: Any) -> None:
        """Wake a runner that is waiting (a done callback of its call tasks)."""
        f = self._fut
        if f is not None and not f.done():
            f.set_result(None)

    async def wait(self, *, timeout_s: float | None, ready: bool) -> None:
        """Return at once if `ready` or set since the last wait, else at the
        first fire/set or after `timeout_s` (None: no timer)."""
        if not (self._flag or ready):
            loop = asyncio.get_running_loop()
            self._fut = f = loop.create_future()
            timer = None if timeout_s is None else loop.call_later(timeout_s, self.fire)
            try:
                await f
            finally:
                self._fut = None
                if timer is not None:
                    timer.cancel()
        self._flag = False


class Runner:
    """Drives one saga under one lease: the planner decides, the runner does the I/O.

    Each turn: `Planner.plan` (events and calls), append the events in one
    fenced round trip, send the calls, wait for an outcome, a due timer or a
    wake-up (cancel, lease loss), and turn each outcome into an event with
    `Planner.classify`; those are appended with the next turn's events.
    """

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
        #: The `pipeline` label of a saga started from a pipeline definition, else None.
        self.pipeline = (
            metrics.pipeline_label(comp.proto.name) if comp.proto.HasField("pipeline") else None
        )
        self.cancel_seen = cancel_requested
        self.cancel_reason = cancel_reason
        self.lost = False
        self.wake = Wakeup()
        self.planner = Planner(
            rec, comp, writer=Writer(coordinator_id=lease.owner, fencing_token=lease.fence)
        )
        self.pending: list[saga_pb2.SagaEvent] = []
        self.durable_seq = rec.seq
        self.snap_seq = rec.seq
        self.tasks: dict[asyncio.Task[Any], Call] = {}

    # ---- events -----------------------------------------------------------------
    async def flush(self, *, publish: bool = True) -> list[saga_pb2.SagaEvent]:
        """Append pending events atomically under the lease.

        Args:
            publish: hand the batch to local watchers now; False leaves that
                to the caller (`Engine.publish`), which sends the calls the
                batch announces first: a watcher's stream write then runs
                while the agent works, not before the call goes out.

        Returns:
            The batch appended (empty when nothing was pending).

        Raises:
            Fenced: the lease is lost.
        """
        if not self.pending:
            return []
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
        batch, self.pending = self.pending, []
        if publish:
            # durable now: local watchers get them without reading the log back
            self.engine.publish(self.rec, batch)
        return batch

    def _observe(self, ev: saga_pb2.SagaEvent) -> None:
        t = ev.type
        idx_level = ev.HasField("item_index") or ev.HasField("iteration")
        if t == T.SAGA_EVENT_TYPE_STEP_COMPLETED and not idx_level:
            metrics.STEPS.labels(metrics.step_label(ev.step_name), "completed").inc()
            if self.pipeline is not None:
                started = self.rec.steps[ev.step_name].start_ms
                end = ev.create_time.ToMilliseconds()
                metrics.PIPELINE_STAGE_MS.labels(
                    self.pipeline, metrics.step_label(ev.step_name)
                ).observe(max(0, end - started) if started else 0)
        elif t == T.SAGA_EVENT_TYPE_STEP_FAILED and not idx_level:
            metrics.STEPS.labels(metrics.step_label(ev.step_name), "failed").inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_SKIPPED:
            metrics.STEPS.labels(metrics.step_label(ev.step_name), "skipped").inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATED:
            metrics.COMPENSATIONS.inc()
        elif t == T.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED:
            metrics.COMPENSATION_FAILURES.inc()
            # WARNING, not ERROR: the cause is often the definition a client
            # sent (an action its agent refuses); operators see it in the
            # saga's state, the compensation-failure metric and its alert.
            log.warning(
                "compensation failed; saga needs intervention",
                extra={"saga_id": ev.saga_id, "step": ev.step_name, "error": ev.error.message},
            )
        elif t in _FINAL_METRIC:
            status = _FINAL_METRIC[t]
            metrics.EXECUTIONS.labels(status).inc()
            metrics.DURATION.labels(status).observe(max(0, self.rec.end_ms - self.rec.create_ms))
            if self.pipeline is not None:
                metrics.PIPELINE_EXECUTIONS.labels(self.pipeline, status).inc()
                metrics.PIPELINE_THROUGHPUT.finished(self.pipeline)

    # ---- main loop ----------------------------------------------------------------
    async def run(self, *, started: bool = False) -> None:
        """Drive until final, lease loss or engine stop.

        Args:
            started: a saga this replica created with its lease
                (`Engine.start_saga`): its first plan's events are durable
                already (or pending, when they ended the saga) and its calls
                were launched once they were.
        """
        try:
            if not started:
                self.pending += self.planner.lease_acquired(now_ms=now_ms())
            else:
                await self.flush()
                if self.rec.final:
                    return
                await self._wait()
                self._collect()
            while True:
                plan = self.planner.plan(
                    now_ms=now_ms(),
                    cancel_requested=self.cancel_seen,
                    cancel_reason=self.cancel_reason,
                )
                self.pending += plan.events
                batch = await self.flush(publish=False)
                if not self.rec.final:
                    for c in plan.calls:
                        self._launch(c)
                if batch:
                    self.engine.publish(self.rec, batch)
                if self.rec.final:
                    return
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
        t.add_done_callback(self.wake.fire)
        self.tasks[t] = c

    async def _send(self, c: Call) -> dict[str, Any] | None:
        with attempt_span(self.rec.saga_id, self.rec.traceparent, c):
            return await self._send_call(c)

    async def _send_call(self, c: Call) -> dict[str, Any] | None:
        spec = self.comp.by_name[c.step]
        md = {"saga_id": self.rec.saga_id, "step": c.step}
        if spec.proto.metadata:
            # Step labels first: validation refuses the reserved keys, and the
            # coordinator's own values win even on a definition written by hand.
            md = {**spec.proto.metadata, **md}
        if c.kind is CallKind.EXECUTE:
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
            timeout_ms=spec.compensation_timeout_ms,
            metadata=md,
        )
        return None

    async def _wait(self) -> None:
        await self.wake.wait(
            timeout_s=self._next_timer_s(), ready=any(t.done() for t in self.tasks)
        )
        if self.lost:
            raise Fenced("lease lost")

    def _next_timer_s(self) -> float | None:
        due = self.planner.next_due_ms()
        if due is None:
            return None if self.tasks else 1.0
        return max(0.0, (due - now_ms()) / 1000.0) + 0.001

    # ---- outcomes -----------------------------------------------------------------
    def _collect(self) -> None:
        for t in [t for t in self.tasks if t.done()]:
            c = self.tasks.pop(t)
            self.pending.append(self.planner.classify(c, _outcome(t), now_ms=now_ms()))


#: Crash-test hook: `1` makes the process SIGKILL itself right after the
#: combined start script of a saga returned (tests/integration/saga).
KILL_AFTER_START_ENV = "AGENTMESH_SAGA_TEST_KILL_AFTER_START"
_KILL_AFTER_START = os.environ.get(KILL_AFTER_START_ENV) == "1"


def _kill_after_start_if_asked() -> None:
    if _KILL_AFTER_START:
        os.kill(os.getpid(), signal.SIGKILL)


def _outcome(t: asyncio.Task[Any]) -> Outcome:
    """A finished call task's result as the planner's Outcome."""
    if t.cancelled():
        return Outcome.failure("CANCELLED", "call cancelled")
    exc = t.exception()
    if exc is None:
        return Outcome.success(t.result() or {})
    if isinstance(exc, CallError):
        return Outcome.failure(exc.code, exc.message, reason=exc.reason)
    return Outcome.failure("INTERNAL", f"{type(exc).__name__}: {exc}")


#: What a feed carries: a batch of durable events with the record after them,
#: or None when the runner stopped before the saga's end (read the log instead).
FeedItem = tuple[SagaRecord, list[saga_pb2.SagaEvent]] | None

#: A watcher whose feed holds this many batches unread is dropped from the
#: feed (it gets None and reads the log from where it is): memory stays bounded.
FEED_MAX_BATCHES = 256


@dataclass
class Started:
    """A saga `Engine.start_saga` created and leased, driven by this replica.

    Attributes:
        events: its durable events 1..N (SAGA_STARTED, LEASE_ACQUIRED, the
            first STEP_STARTEDs), in order.
        feed: its later durable batches (`Engine.subscribe`), when asked for.
    """

    events: list[saga_pb2.SagaEvent]
    feed: asyncio.Queue[FeedItem] | None


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
        self._feeds: dict[str, set[asyncio.Queue[FeedItem]]] = {}

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

    # ---- in-process watchers -------------------------------------------------------
    def subscribe(self, saga_id: str) -> asyncio.Queue[FeedItem] | None:
        """A feed of the saga's durable event batches while this replica drives it.

        Returns:
            None when no runner of this replica drives the saga (read the log).
            Else a queue that gets each batch once it is durable, and None
            when the runner stops (final: after the final batch; lease lost,
            crash, shutdown or a slow reader: read the log from there on).
            `unsubscribe` it when done.
        """
        if saga_id not in self.runners:
            return None
        q: asyncio.Queue[FeedItem] = asyncio.Queue()
        self._feeds.setdefault(saga_id, set()).add(q)
        return q

    def unsubscribe(self, saga_id: str, q: asyncio.Queue[FeedItem]) -> None:
        """Stop feeding `q` (idempotent)."""
        qs = self._feeds.get(saga_id)
        if qs is not None:
            qs.discard(q)
            if not qs:
                del self._feeds[saga_id]

    def publish(self, rec: SagaRecord, events: list[saga_pb2.SagaEvent]) -> None:
        """Hand a durable batch to the saga's local watchers (a runner calls this
        after each append; `events` must not change afterwards)."""
        qs = self._feeds.get(rec.saga_id)
        if not qs:
            return
        for q in list(qs):
            if q.qsize() >= FEED_MAX_BATCHES:
                qs.discard(q)
                q.put_nowait(None)
            else:
                q.put_nowait((rec, events))

    def _close_feeds(self, saga_id: str) -> None:
        for q in self._feeds.pop(saga_id, ()):
            q.put_nowait(None)

    # ---- starting -------------------------------------------------------------------
    def has_room(self) -> bool:
        """True when this replica can drive one more saga now."""
        return len(self.runners) + len(self._starting) < self.opts.max_active

    async def start_saga(
        self,
        ev: saga_pb2.SagaEvent,
        comp: CompiledDefinition,
        *,
        idempotency_key: str,
        fingerprint: str,
        feed: bool = False,
    ) -> Started | tuple[str, str]:
        """Create a saga, take its lease and log its first plan in one Redis call
        (`SagaStore.start`), then drive it from memory: no acquire, load or
        re-read of what was just written.

        The first plan is made before the write, for fencing token 1 (the
        token a new saga's first lease gets), and its calls are sent only once
        the write succeeded: write-ahead as in every later turn.

        Args:
            ev: the sealed SAGA_STARTED event (sequence 1).
            comp: its compiled definition.
            idempotency_key: "" for none.
            fingerprint: the StartSaga request's fingerprint.
            feed: subscribe to the saga's later batches (`Started.feed`).

        Returns:
            Started, or (existing saga id, its fingerprint) when the
            idempotency key had started a saga (nothing written).

        Raises:
            DatasetReset, redis errors: nothing was started.
        """
        saga_id = ev.saga_id
        rec = SagaRecord.start(ev, [st.name for st in comp.steps])
        lease = Lease(lease_keys(saga_id), self.opts.coordinator_id, 1)
        runner = Runner(self, lease, rec, comp, cancel_requested=False, cancel_reason="")
        t = now_ms()
        events = [ev, *runner.planner.lease_acquired(now_ms=t)]
        plan = runner.planner.plan(now_ms=t, cancel_requested=False, cancel_reason="")
        if rec.final:
            # A saga that ends in its first plan (every step skipped): the
            # runner's append writes the final state with its bookkeeping.
            runner.pending = list(plan.events)
        else:
            events += plan.events
        self._starting.add(saga_id)
        try:
            out = await self.store.start(
                events,
                name=comp.proto.name,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
                owner=lease.owner,
                ttl_ms=self.opts.lease_ttl_ms,
                state=events[-1].state,
            )
        finally:
            self._starting.discard(saga_id)
        if isinstance(out, tuple):
            return out
        _kill_after_start_if_asked()
        runner.durable_seq = runner.snap_seq = events[-1].sequence
        self.runners[saga_id] = runner
        metrics.ACTIVE.set(len(self.runners))
        metrics.TAKEOVERS.labels("start").inc()
        q = self.subscribe(saga_id) if feed else None
        if not rec.final:
            # durable: the first calls may go (write-ahead as in every turn)
            for c in plan.calls:
                runner._launch(c)
        self._spawn(runner.run(started=True))
        # One loop pass for the calls' tasks to send their requests before
        # the caller builds and writes its response: the agent works while
        # the coordinator answers, instead of after.
        await asyncio.sleep(0)
        return Started(events, q)

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
            self._close_feeds(r.rec.saga_id)
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
            if free <= 0 or detected_reset() is not None:
                continue
            try:
                ids = await self.store.expired(limit=min(free, 200))
            except Exception:
                log.exception("recovery scan failed")
                continue
            for saga_id in ids:
                if saga_id not in self.runners:
                    await self.try_drive(saga_id, reason="recovery")
