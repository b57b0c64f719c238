"""The task scheduler: takes due tasks off the priority queues, places them on
agents with free capacity, and drives each one (Execute through the one agent
path, retries, cancel, timeouts) while it holds the task's lease.

Loops of one replica:

* **schedule**: when woken (a ScheduleTask on this replica; an entry on the
  store's WAKE stream, written by a replica that queued a task it cannot
  start itself; a capacity slot or driver freed here while due tasks were
  left waiting; a delayed task coming due), else every `poll_interval_ms`
  (a safety net, and BACKLOG_POLL_MS while due tasks wait for room), read
  the due head of each priority queue, serve the classes by
  smooth weighted round-robin (CRITICAL 8, HIGH 4, NORMAL 2, LOW 1: the bus
  backlog's scheme, so LOW is never starved; FIFO within a class), take a
  capacity slot on the agent the task's strategy prefers, then the task's
  lease, and commit SCHEDULED;
* **renew**: every `renew_interval_ms` renew the leases and slots of the
  tasks this replica drives (one pipeline each) and read their cancel flags;
  a task whose lease was lost is dropped at once (its new holder continues);
* **recover**: every `recovery_interval_ms` look at the non-terminal tasks:
  one left SCHEDULED, RUNNING or RETRYING without a lease (its replica died)
  is taken over and resumed on the agent it was assigned to (waiting for room
  there while that agent stays eligible), with the same idempotency key
  `task/<task_id>` and the next attempt number, so an agent that dedupes by
  key takes effect once; a PENDING one missing from its queue is queued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from agentmesh import catalog
from agentmesh.agent.v1 import agent_pb2
from agentmesh.registry.v1 import registry_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.agents import AgentClient, CallOutcome, call_message
from agentmesh.runtime.dataset_epoch import detected_reset
from agentmesh.runtime.errors import AgentMeshError, ErrorReason, Unavailable, from_rpc_error
from agentmesh.runtime.lease import Lease, LeaseLost
from agentmesh.runtime.priority import CLASSES, WEIGHTS
from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.server.saga import metrics
from agentmesh.server.saga.definition import DEFAULT_NON_RETRYABLE
from agentmesh.server.saga.tasks import placement
from agentmesh.server.saga.tasks.store import (
    CLASS_NAMES,
    TERMINAL,
    StaleRevision,
    TaskStore,
    priority_class,
)
from agentmesh.server.saga.tracing import traced_attempt
from agentmesh.task.v1 import task_pb2

log = logging.getLogger("agentmesh.saga.tasks")

T = task_pb2

#: gRPC codes that end a task at once (the saga RetryPolicy's default list).
NON_RETRYABLE = DEFAULT_NON_RETRYABLE  # the saga steps' default set

#: How long an agent's registered descriptor (capacity, capabilities, tags) is cached, s.
DESCRIPTOR_TTL_S = 2.0

#: How long a read of the slots held on an agent (by every replica) is used
#: for ordering candidates, s; this replica's own changes apply at once.
COUNT_TTL_S = 0.25

#: Most due tasks read per priority class per scheduling pass.
BATCH = 256

#: Scheduling interval while due tasks wait for room (capacity held by other
#: replicas frees without waking this one), ms.
BACKLOG_POLL_MS = 50

#: Most tasks queued by this replica kept for the next pass (see `wake`).
FRESH_MAX = 4096

#: Pools whose Options are kept for reuse (see `_options_for`); pool keys
#: come from requests' selectors, so the map is bounded.
OPTION_POOLS = 256

#: Longest blocking read of the WAKE stream, ms.
WAKE_BLOCK_MS = 1000


@dataclass(frozen=True)
class TaskOptions:
    """How one replica schedules and drives tasks.

    Attributes:
        coordinator_id: this replica's id in task leases.
        lease_ttl_ms / renew_interval_ms / recovery_interval_ms: as for sagas.
        max_active: tasks this replica drives at once; 0 = API only.
        poll_interval_ms: scheduling interval when nothing wakes the pass
            (see the module doc); idle cost, not latency.
        default_timeout_ms: run timeout of an attempt when the task sets none.
        default_capacity: capacity of an agent that reports none; 0 = unlimited.
        strategies: default strategy per task type ("*" = others).
    """

    coordinator_id: str
    lease_ttl_ms: int = 5000
    renew_interval_ms: int = 1000
    recovery_interval_ms: int = 1000
    max_active: int = 1000
    poll_interval_ms: int = 500
    default_timeout_ms: int = 30_000
    default_capacity: int = 0
    strategies: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Static:
    """An agent's registered capacity (ServiceLevel.max_concurrency; 0 =
    none), capabilities and tags."""

    capacity: int
    capabilities: frozenset[str]
    tags: frozenset[str]


_NO_DESCRIPTOR = _Static(0, frozenset(), frozenset())


@dataclass(eq=False)
class _Want:
    """A due task of this pass with the agents it may take, best first."""

    cls: int
    task: task_pb2.Task
    ordered: list[placement.Option]
    idx: int = 0


@dataclass(eq=False)
class Driven:
    """A task this replica drives.

    Attributes:
        lease: its lease.
        task: the task as last committed.
        option: the agent it is placed on (with the slot held), or None.
        cancel: set when a cancel was requested.
        runner: the driver coroutine's task.
    """

    lease: Lease
    task: task_pb2.Task
    option: placement.Option | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[Any] | None = None
    #: the Execute call in flight (a cancel request cancels it)
    call: asyncio.Future[Any] | None = None
    avoid: str = ""
    ended: bool = False


def now_ms() -> int:
    """Wall clock, Unix ms."""
    return int(time.time() * 1000)


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


def due_ms(task: task_pb2.Task) -> int:
    """When the task may first start (create time or not_before), Unix ms."""
    created = task.create_time.ToMilliseconds()
    if task.HasField("not_before"):
        return max(created, task.not_before.ToMilliseconds())
    return created


def start_deadline_ms(task: task_pb2.Task) -> int:
    """When a task that never started times out (schedule-to-start), Unix ms."""
    return due_ms(task) + task.schedule_to_start_timeout.ToMilliseconds()


def backoff_s(policy: task_pb2.TaskRetryPolicy, failures: int) -> float:
    """Wait before the attempt after `failures` failed ones, s (exponential, capped)."""
    init = policy.initial_backoff.ToMilliseconds() if policy.HasField("initial_backoff") else 100
    cap = policy.max_backoff.ToMilliseconds() if policy.HasField("max_backoff") else 10_000
    mult = policy.multiplier or 2.0
    return float(min(cap, init * mult ** max(0, failures - 1))) / 1000.0


def max_attempts(policy: task_pb2.TaskRetryPolicy) -> int:
    """Attempts in all (0 means 3)."""
    return policy.max_attempts or 3


def route_message(task: task_pb2.Task) -> router_pb2.RouteMessage:
    """The task's call as the routing engine and its guardrails see it."""
    by_id = task.WhichOneof("target") == "agent_id"
    return call_message(
        action=task.task_type,
        payload=task.payload,
        agent_id=task.agent_id if by_id else "",
        selector=None if by_id else task.selector,
        metadata={"task_id": task.task_id},
    )


def _error_of(e: AgentMeshError) -> task_pb2.TaskError:
    info = e.detail(error_details_pb2.ErrorInfo)
    reason = info.reason if isinstance(info, error_details_pb2.ErrorInfo) else ""
    return T.TaskError(code=e.code.name, message=e.message, reason=reason)


def _error_of_outcome(out: CallOutcome) -> task_pb2.TaskError:
    if out.error is not None:
        return _error_of(from_rpc_error(out.error))
    return T.TaskError(code=out.code.name, message=out.message)


class TaskScheduler:
    """Schedules and drives tasks for one coordinator replica.

    Args:
        store: the task store.
        client: the coordinator's AgentClient (the one agent path).
        options: see TaskOptions.
        seed: random seed for RANDOM placement (tests); None seeds from the OS.
        wake_store: a store on a separate Redis pool for the blocking read of
            the WAKE stream; None: no cross-replica wake (polling only).
    """

    def __init__(
        self,
        store: TaskStore,
        client: AgentClient,
        options: TaskOptions,
        *,
        seed: int | None = None,
        wake_store: TaskStore | None = None,
    ) -> None:
        self.store = store
        self.wake_store = wake_store
        self.client = client
        self.opts = options
        self.driven: dict[str, Driven] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[Any]] = []
        self._credit = [0] * CLASSES
        self._rotation: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._descriptors: dict[str, tuple[float, _Static]] = {}
        self._counts: dict[str, tuple[float, int]] = {}
        #: per pool key: (candidates, descriptors, Options) of the last placement
        self._options: dict[
            str, tuple[list[Any], list[_Static], list[placement.Option]]
        ] = {}
        #: The last pass left due tasks waiting (full agents, no agent, or
        #: this replica at max_active): a freed slot or driver wakes the next.
        self._backlog = False
        #: When the earliest known delayed task comes due, Unix ms (0 = none).
        self._next_due_ms = 0
        self._timer: asyncio.TimerHandle | None = None
        #: PENDING tasks this replica just queued, by id: the pass takes their
        #: records from here instead of reading them back (see `wake`).
        self._fresh: dict[str, task_pb2.Task] = {}

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Start the loops (none when max_active is 0: the API still works)."""
        if self.opts.max_active <= 0:
            return
        loops = [self._schedule_loop, self._renew_loop, self._recovery_loop]
        if self.wake_store is not None:
            loops.append(self._wake_loop)
        for loop in loops:
            self._loops.append(asyncio.create_task(self._forever(loop)))

    async def stop(self) -> None:
        """Stop the loops and the drivers, and give the leases up so another
        replica resumes the tasks at once (their in-flight calls are cancelled)."""
        for t in self._loops:
            await cancel_and_wait(t)
        self._loops.clear()
        if self._timer is not None:
            self._timer.cancel()
        driven = list(self.driven.values())
        for d in driven:
            if d.runner is not None:
                await cancel_and_wait(d.runner)
        for d in driven:
            with contextlib.suppress(Exception):
                await self.store.release(d.lease)
        self.driven.clear()
        await self.store.close()

    def wake(self, *, due_ms: int = 0, task: task_pb2.Task | None = None) -> None:
        """A task was queued: schedule now (or at `due_ms`, Unix ms, for a
        delayed one) rather than at the next poll.

        Args:
            task: the task as just created (revision 1), so the pass need not
                read it back. A stale copy is safe: the start script checks
                the revision and the cancel flag, and refuses a changed task.
        """
        if task is not None and self._loops:
            if len(self._fresh) >= FRESH_MAX:
                self._fresh.pop(next(iter(self._fresh)))
            self._fresh[task.task_id] = task
        if due_ms > now_ms():
            self._due_at(due_ms)
        else:
            self._wake.set()

    @property
    def starts_locally(self) -> bool:
        """Whether this replica's own pass takes tasks now (it runs the loops
        and drives fewer than max_active); if not, a queued task must wake
        the other replicas."""
        return bool(self._loops) and len(self.driven) < self.opts.max_active

    def _due_at(self, at_ms: int) -> None:
        """Wake the pass when a delayed task comes due (the earliest one known)."""
        if self._next_due_ms and self._next_due_ms <= at_ms:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._next_due_ms = at_ms
        delay_s = max(0.0, (at_ms - now_ms()) / 1000.0)
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._next_due_ms = 0
        self._wake.set()

    def _room(self) -> None:
        """A capacity slot or a driver was freed: wake the pass if due tasks wait."""
        if self._backlog:
            self._wake.set()

    async def _wake_loop(self) -> None:
        """Wake the pass on WAKE entries written by any replica (blocking XREAD)."""
        assert self.wake_store is not None
        last = "$"
        while True:
            got = await self.wake_store.wait_wake(last, block_ms=WAKE_BLOCK_MS)
            if got is not None:
                last = got
                self._wake.set()

    async def _forever(self, loop: Any) -> None:
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:  # a Redis outage must not end the loop
                log.warning("task loop failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)

    # ---- scheduling ------------------------------------------------------------------
    def _serve_order(self, due: Sequence[Sequence[str]]) -> list[tuple[int, str]]:
        """Due tasks in smooth weighted round-robin order over the classes
        (simulated on a copy of the credits; `_charge` books real picks)."""
        credit = list(self._credit)
        heads = [0] * CLASSES
        out: list[tuple[int, str]] = []
        while True:
            ready = [c for c in range(CLASSES) if heads[c] < len(due[c])]
            if not ready:
                return out
            total = 0
            for c in ready:
                credit[c] += WEIGHTS[c]
                total += WEIGHTS[c]
            best = min(ready, key=lambda c: (-credit[c], c))
            credit[best] -= total
            out.append((best, due[best][heads[best]]))
            heads[best] += 1

    def _charge(self, cls: int, backlogged: Sequence[bool]) -> None:
        """Book one pick of `cls` in the real SWRR credits."""
        total = 0
        for c in range(CLASSES):
            if backlogged[c]:
                self._credit[c] += WEIGHTS[c]
                total += WEIGHTS[c]
            else:
                self._credit[c] = 0
        self._credit[cls] -= total

    async def _schedule_loop(self) -> None:
        while True:
            poll_ms = self.opts.poll_interval_ms
            if self._backlog:
                poll_ms = min(poll_ms, BACKLOG_POLL_MS)
            if not self._wake.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll_ms / 1000.0)
            self._wake.clear()
            await self.schedule_once()

    async def schedule_once(self) -> int:
        """One scheduling pass; returns how many tasks it started driving.

        Round trips per pass do not grow with the number of tasks: the due
        heads and their records are read in two pipelines, each task's agent
        order is computed locally (placement counts this pass's choices), the
        capacity slots are taken in one pipeline that Redis runs in serving
        order (a contended slot goes to the task SWRR picked first; a refused
        task tries its next agent in a second round), and the leases in one more.
        """
        free = self.opts.max_active - len(self.driven)
        if free <= 0 or detected_reset() is not None:  # health says why
            self._backlog = free <= 0  # a driver that ends wakes the next pass
            return 0
        now = now_ms()
        due, next_due = await self.store.due(now_ms=now, count=min(free, BATCH))
        if next_due is not None:
            self._due_at(next_due)
        # Cleared only here: a pass that places every due task it read has
        # no backlog unless a queue had more than it read.
        self._backlog = any(len(d) >= min(free, BATCH) for d in due)
        order = self._serve_order(due)
        if not order:
            return 0
        known = [self._fresh.pop(tid, None) for _, tid in order]
        unknown = [tid for (_, tid), t in zip(order, known, strict=True) if t is None]
        read = iter(await self.store.get_many(unknown))
        tasks = [t if t is not None else next(read) for t in known]
        backlogged = [bool(d) for d in due]
        drop: list[tuple[int, str]] = []
        full_pools: set[str] = set()
        wanted: list[_Want] = []
        for (cls, tid), task in zip(order, tasks, strict=True):
            if len(wanted) >= free:
                self._backlog = True
                break
            if tid in self.driven:
                continue
            if task is None or task.state != T.TASK_STATE_PENDING:
                drop.append((cls, tid))
                continue
            if task.cancel_requested or now >= start_deadline_ms(task):
                if await self._end_unstarted(task):
                    drop.append((cls, tid))
                continue
            pool_key = task.agent_id or task.selector.SerializeToString(deterministic=True).hex()
            if pool_key in full_pools:
                self._backlog = True
                continue
            try:
                ordered = await self._candidates(task, route_message(task), prefer="", avoid="")
            except AgentMeshError as e:  # safety rule or bad selector: it can never run
                await self._fail_unstarted(task, _error_of(e))
                drop.append((cls, tid))
                continue
            if not ordered:
                full_pools.add(pool_key)
                self._backlog = True
                continue
            self._bump(ordered[0].candidate.agent_id, 1)  # later tasks see this choice
            wanted.append(_Want(cls, task, ordered))
        placed: list[tuple[_Want, placement.Option]] = []
        pending = wanted
        for _round in range(3):
            calls = [w for w in pending if w.idx < len(w.ordered)]
            if not calls:
                break
            if _round:
                for w in calls:
                    self._bump(w.ordered[w.idx].candidate.agent_id, 1)
            oks = await self.store.acquire_slots(
                [(w.ordered[w.idx].candidate.agent_id, self._member(w.task.task_id),
                  w.ordered[w.idx].capacity)
                 for w in calls],
                ttl_ms=self.opts.lease_ttl_ms,
            )
            pending = []
            for w, ok in zip(calls, oks, strict=True):
                o = w.ordered[w.idx]
                if ok:
                    placed.append((w, o))
                    continue
                # full: the cached count was behind; read it fresh next time
                self._counts.pop(o.candidate.agent_id, None)
                w.idx += 1
                pending.append(w)
        for w in pending:  # every try refused
            self._backlog = True
            if w.idx < len(w.ordered):
                self._bump(w.ordered[w.idx].candidate.agent_id, -1)
        if not placed:
            await self.store.dequeue(drop)
            return 0
        # One round trip takes each placed task's lease and commits SCHEDULED
        # and RUNNING with it (the attempt starts here; the driver only makes
        # the call), and removes the placed tasks from their queues. A task
        # that another replica holds is dequeued too: that replica started
        # it or ends it, and the recovery pass queues a PENDING task again
        # if its entry went missing.
        start = now_ms()
        items = [self._started(w.task, opt, start) for w, opt in placed]
        claims = await self.store.claim_start_many(
            items,
            owner=self.opts.coordinator_id,
            ttl_ms=self.opts.lease_ttl_ms,
            dequeue=[(w.cls, w.task.task_id) for w, _ in placed] + drop,
        )
        started = 0
        for (w, opt), got in zip(placed, claims, strict=True):
            tid = w.task.task_id
            if got is None or got[0].task.state not in (T.TASK_STATE_PENDING,
                                                        T.TASK_STATE_RUNNING):
                await self._free_slot(opt.candidate.agent_id, tid)
                if got is not None:
                    await self.store.release(got[0].lease)
                continue
            claimed, running = got
            self._charge(w.cls, backlogged)
            if running:
                metrics.TASK_WAIT.observe(max(0, start - due_ms(w.task)))
            self._spawn(Driven(claimed.lease, claimed.task, opt))
            started += 1
        return started

    @staticmethod
    def _started(
        task: task_pb2.Task, opt: placement.Option, start_ms: int
    ) -> tuple[task_pb2.Task, task_pb2.Task, task_pb2.Task]:
        """(as read, as SCHEDULED on `opt`, as RUNNING its first attempt)."""
        sched = T.Task()
        sched.CopyFrom(task)
        sched.state = T.TASK_STATE_SCHEDULED
        sched.revision = task.revision + 1
        sched.assigned_agent_id = opt.candidate.agent_id
        sched.cancel_requested = False
        run = T.Task()
        run.CopyFrom(sched)
        run.state = T.TASK_STATE_RUNNING
        run.revision = sched.revision + 1
        run.attempt += 1
        if not run.HasField("start_time"):
            run.start_time.CopyFrom(_ts(start_ms))
        run.ClearField("error")
        return task, sched, run

    async def _sweep_pending(self, tasks: Sequence[task_pb2.Task]) -> None:
        """End the unleased PENDING tasks whose cancel was requested or whose
        schedule-to-start timeout passed, wherever they are in their queue
        (the scheduling pass only looks at each queue's due head, so a task
        behind a long backlog would otherwise wait past its deadline), and
        queue the others again if their entry was lost."""
        now = now_ms()
        ended: list[tuple[int, str]] = []
        keep: list[tuple[int, str, int]] = []
        for t in tasks:
            cls = priority_class(t.priority)
            if t.cancel_requested or now >= start_deadline_ms(t):
                if await self._end_unstarted(t):
                    ended.append((cls, t.task_id))
                continue
            keep.append((cls, t.task_id, due_ms(t)))
        await self.store.dequeue(ended)
        await self.store.requeue(keep)

    async def _end_unstarted(self, task: task_pb2.Task) -> bool:
        """Cancel or time out a PENDING task (cancel requested, or its
        schedule-to-start timeout passed); False when another replica holds it."""
        claimed = await self.store.claim(
            task.task_id, owner=self.opts.coordinator_id, ttl_ms=self.opts.lease_ttl_ms
        )
        if claimed is None:
            return False
        t = claimed.task
        try:
            if t.state != T.TASK_STATE_PENDING:
                return t.state in TERMINAL
            if t.cancel_requested:
                await self._finish(claimed.lease, t, T.TASK_STATE_CANCELLED)
            else:
                t.error.CopyFrom(T.TaskError(
                    code="DEADLINE_EXCEEDED",
                    message="not started within its schedule-to-start timeout "
                    f"({t.schedule_to_start_timeout.ToMilliseconds()} ms); no eligible agent "
                    "with free capacity",
                ))
                await self._finish(claimed.lease, t, T.TASK_STATE_TIMEOUT)
            return True
        except (LeaseLost, StaleRevision):
            return False
        finally:
            await self.store.release(claimed.lease)

    async def _fail_unstarted(self, task: task_pb2.Task, err: task_pb2.TaskError) -> None:
        claimed = await self.store.claim(
            task.task_id, owner=self.opts.coordinator_id, ttl_ms=self.opts.lease_ttl_ms
        )
        if claimed is None:
            return
        try:
            t = claimed.task
            if t.state == T.TASK_STATE_PENDING:
                t.error.CopyFrom(err)
                # PENDING -> FAILED is not a transition: it passes SCHEDULED
                # (on no agent), RUNNING (refused by the guardrails) first.
                await self.store.commit(claimed.lease, t, T.TASK_STATE_SCHEDULED)
                await self.store.commit(claimed.lease, t, T.TASK_STATE_RUNNING)
                await self._finish(claimed.lease, t, T.TASK_STATE_FAILED)
        except (LeaseLost, StaleRevision):
            pass
        finally:
            await self.store.release(claimed.lease)

    # ---- placement -------------------------------------------------------------------
    async def _descriptor(self, agent_ids: Sequence[str]) -> list[_Static]:
        """What placement needs from each agent's registered descriptor, read
        at most every DESCRIPTOR_TTL_S per agent (decoded once per read)."""
        now = time.monotonic()
        got = self._descriptors
        missing = [a for a in agent_ids if a not in got or got[a][0] < now]
        if missing:
            raws = await self.store.redis.mget([catalog.descriptor_key(a) for a in missing])
            for a, raw in zip(missing, raws, strict=True):
                st = _NO_DESCRIPTOR
                if raw:
                    pb = registry_pb2.Agent.FromString(bytes(raw))
                    st = _Static(
                        int(pb.sla.max_concurrency), frozenset(pb.capabilities), frozenset(pb.tags)
                    )
                got[a] = (now + DESCRIPTOR_TTL_S, st)
        return [got[a][1] for a in agent_ids]

    def _options_for(
        self,
        pool_key: str,
        cands: Sequence[Any],
        counts: Sequence[int],
        descs: Sequence[_Static],
    ) -> list[placement.Option]:
        """The pool's Options with these slot counts.

        The Options of the last call for the pool are reused, with only
        their counts set, while its candidates and descriptors are the same
        objects (a new pool snapshot or descriptor read makes new ones):
        building 100 Options per task was a tenth of the scheduling pass.
        Sharing them is safe because only the ordering reads `running`, and
        it does so right after this call; an ordered list keeps its order
        and later reads only the candidate and capacity of an Option.
        """
        cached = self._options.get(pool_key)
        if (
            cached is not None
            and len(cached[0]) == len(cands)
            and all(a is b for a, b in zip(cached[0], cands, strict=True))
            and all(a is b for a, b in zip(cached[1], descs, strict=True))
        ):
            options = cached[2]
            for o, n in zip(options, counts, strict=True):
                o.running = n
            return options
        default_cap = self.opts.default_capacity
        options = [
            placement.Option(
                c,
                n,
                max(0, int(c.capacity)) or max(0, desc.capacity) or default_cap,
                desc.capabilities,
                desc.tags,
            )
            for c, n, desc in zip(cands, counts, descs, strict=True)
        ]
        if pool_key not in self._options and len(self._options) >= OPTION_POOLS:
            self._options.pop(next(iter(self._options)))
        self._options[pool_key] = (list(cands), list(descs), options)
        return options

    async def _candidates(
        self, task: task_pb2.Task, msg: router_pb2.RouteMessage, *, prefer: str, avoid: str
    ) -> list[placement.Option]:
        """The eligible agents with free capacity, in the order the task's strategy prefers.

        Args:
            prefer: only this agent while it is eligible (a resumed task).
            avoid: this agent last (it just failed an attempt).

        Returns:
            The agents to try, best first; empty when none has room.

        Raises:
            FailedPrecondition: a CRITICAL safety rule matched the payload.
            InvalidArgument: a bad selector.
        """
        try:
            d = await self.client.decide(msg, strategy=router_pb2.STRATEGY_BROADCAST)
        except Unavailable as e:
            if e.error_reason == ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET:
                return []
            raise
        cands = d.eligible.candidates
        if not cands:
            return []
        ids = [c.agent_id for c in cands]
        # Sequential, not gathered: both are served from their caches almost
        # always, and a gather would make two tasks per placement.
        counts = await self._slot_counts(ids)
        descs = await self._descriptor(ids)
        options = self._options_for(d.pool.key, cands, counts, descs)
        if prefer:
            pinned = [o for o in options if o.candidate.agent_id == prefer]
            if pinned:
                # A resumed task's last attempt may have taken effect on this
                # agent; only that agent can dedupe the replay by its
                # idempotency key, so the task waits for room there (an empty
                # list while it is full). It moves on only once the agent is no
                # longer eligible (deregistered, unhealthy, ejected): at-least-
                # once is then the best left.
                return [o for o in pinned if o.free]
        strategy = placement.strategy_for(task, self.opts.strategies)
        ordered = placement.order(
            strategy, options, task=task, picker=self.client.engine.picker,
            pool_key=d.pool.key, rng=self._rng, rotation=self._rotation,
        )
        if avoid and len(ordered) > 1:
            ordered.sort(key=lambda o: o.candidate.agent_id == avoid)
        return ordered

    async def _place(
        self, task: task_pb2.Task, msg: router_pb2.RouteMessage, *, prefer: str, avoid: str
    ) -> placement.Option | None:
        """Take a capacity slot on the first agent of `_candidates` with room.

        Returns:
            The agent (slot held), or None when no eligible agent has room.

        Raises:
            FailedPrecondition, InvalidArgument: see _candidates.
        """
        for o in await self._candidates(task, msg, prefer=prefer, avoid=avoid):
            aid = o.candidate.agent_id
            if await self.store.acquire_slot(
                aid, self._member(task.task_id), capacity=o.capacity, ttl_ms=self.opts.lease_ttl_ms
            ):
                self._bump(aid, 1)
                return o
            # full: the cached count was behind; read it fresh next time
            self._counts.pop(aid, None)
        return None

    async def _slot_counts(self, agent_ids: Sequence[str]) -> list[int]:
        """Slots held per agent, read from Redis at most every COUNT_TTL_S per
        agent and kept current with this replica's own takes and releases.
        They only order the candidates: acquire_slot is the atomic check."""
        now = time.monotonic()
        stale = [a for a in agent_ids if self._counts.get(a, (0.0, 0))[0] < now]
        if stale:
            for a, n in zip(stale, await self.store.slot_counts(stale), strict=True):
                self._counts[a] = (now + COUNT_TTL_S, n)
        return [self._counts[a][1] for a in agent_ids]

    def _bump(self, agent_id: str, delta: int) -> None:
        got = self._counts.get(agent_id)
        if got is not None:
            self._counts[agent_id] = (got[0], max(0, got[1] + delta))

    def _member(self, task_id: str) -> str:
        """This replica's slot for the task: `<task id>@<coordinator id>`.

        Per replica, not per task: two replicas may place the same due task
        at once (each takes a slot, then only one gets its lease), and the
        loser frees only its own slot, never the one the winner runs on. A
        dead replica's slot expires with its lease, so a task resumed
        elsewhere counts against the agent until then (its last attempt may
        still be running there)."""
        return f"{task_id}@{self.opts.coordinator_id}"

    async def _free_slot(self, agent_id: str, task_id: str) -> None:
        await self.store.release_slot(agent_id, self._member(task_id))
        self._bump(agent_id, -1)
        self._room()

    # ---- driving ---------------------------------------------------------------------
    def _spawn(self, d: Driven) -> None:
        self.driven[d.task.task_id] = d
        metrics.TASK_ACTIVE.set(len(self.driven))
        d.runner = asyncio.create_task(self._drive(d))

    async def _finish(
        self,
        lease: Lease,
        task: task_pb2.Task,
        state: task_pb2.TaskState.ValueType,
        d: Driven | None = None,
    ) -> None:
        task.end_time.CopyFrom(_ts(now_ms()))
        slot_agent = d.option.candidate.agent_id if d is not None and d.option else ""
        await self.store.commit(
            lease, task, state, slot_agent=slot_agent, slot_member=self._member(task.task_id)
        )
        if d is not None:
            d.option = None
            d.ended = True
            if slot_agent:
                self._bump(slot_agent, -1)
                self._room()
        status = T.TaskState.Name(state).removeprefix("TASK_STATE_").lower()
        metrics.TASK_COMPLETED.labels(metrics.type_label(task.task_type), status).inc()

    async def _drive(self, d: Driven) -> None:
        tid = d.task.task_id
        lost = False
        try:
            await self._run(d)
        except (LeaseLost, StaleRevision):
            lost = True
            log.info("task lease lost; another replica continues", extra={"task_id": tid})
        except asyncio.CancelledError:
            lost = True
            raise
        except Exception:
            lost = True
            log.warning("task driver failed; the task is resumed after its lease expires",
                        extra={"task_id": tid}, exc_info=True)
        finally:
            self.driven.pop(tid, None)
            metrics.TASK_ACTIVE.set(len(self.driven))
            self._room()
            if not lost:
                with contextlib.suppress(Exception):
                    if d.option is not None:
                        await self._free_slot(d.option.candidate.agent_id, tid)
                    if not d.ended:  # a terminal commit released it already
                        await self.store.release(d.lease)

    def _cancelled(self, d: Driven) -> bool:
        return d.cancel.is_set() or d.task.cancel_requested

    async def _release_slot(self, d: Driven) -> None:
        if d.option is not None:
            await self._free_slot(d.option.candidate.agent_id, d.task.task_id)
            d.option = None

    async def _run(self, d: Driven) -> None:
        t = d.task
        while True:
            if t.state in TERMINAL:
                return
            if self._cancelled(d):
                await self._finish(d.lease, t, T.TASK_STATE_CANCELLED, d)
                return
            if t.state == T.TASK_STATE_PENDING and d.option is not None:
                t.assigned_agent_id = d.option.candidate.agent_id
                await self.store.commit(d.lease, t, T.TASK_STATE_SCHEDULED)
                continue
            if t.state in (T.TASK_STATE_SCHEDULED, T.TASK_STATE_RUNNING) and d.option is None:
                # resumed after its driver died: the attempt's outcome is unknown
                t.error.CopyFrom(T.TaskError(
                    code="ABORTED", message="the coordinator driving the task stopped; resumed",
                ))
                await self.store.commit(d.lease, t, T.TASK_STATE_RETRYING)
                continue
            if t.state == T.TASK_STATE_RETRYING:
                if not await self._replace(d):
                    return
                continue
            if t.state == T.TASK_STATE_SCHEDULED:
                await self._attempt(d)
                continue
            if t.state == T.TASK_STATE_RUNNING:  # started by the scheduling pass
                await self._call(d)
                continue
            raise AssertionError(f"unexpected state {T.TaskState.Name(t.state)}")

    async def _replace(self, d: Driven) -> bool:
        """Place a RETRYING task again (only on the assigned agent while it is
        eligible when resumed; any but the agent that failed last otherwise);
        SCHEDULED on success.
        Returns False when the task ended meanwhile (cancel, timeout)."""
        t = d.task
        resumed = t.error.code == "ABORTED"
        prefer = t.assigned_agent_id if resumed else ""
        give_up_ms = now_ms() + t.schedule_to_start_timeout.ToMilliseconds()
        msg = route_message(t)
        while True:
            if self._cancelled(d):
                await self._finish(d.lease, t, T.TASK_STATE_CANCELLED, d)
                return False
            try:
                opt = await self._place(t, msg, prefer=prefer, avoid=d.avoid)
            except AgentMeshError as e:
                t.error.CopyFrom(_error_of(e))
                await self.store.commit(d.lease, t, T.TASK_STATE_SCHEDULED)
                await self.store.commit(d.lease, t, T.TASK_STATE_RUNNING)
                await self._finish(d.lease, t, T.TASK_STATE_FAILED, d)
                return False
            if opt is not None:
                d.option = opt
                t.assigned_agent_id = opt.candidate.agent_id
                await self.store.commit(d.lease, t, T.TASK_STATE_SCHEDULED)
                return True
            if now_ms() >= give_up_ms:
                t.error.CopyFrom(T.TaskError(
                    code="DEADLINE_EXCEEDED",
                    message="no eligible agent with free capacity within the "
                    "schedule-to-start timeout",
                ))
                await self._finish(d.lease, t, T.TASK_STATE_TIMEOUT, d)
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(d.cancel.wait(), self.opts.poll_interval_ms * 5 / 1000.0)

    async def _attempt(self, d: Driven) -> None:
        """Run one attempt of a SCHEDULED task and commit its outcome."""
        t = d.task
        opt = d.option
        assert opt is not None
        t.attempt += 1
        start = now_ms()
        if not t.HasField("start_time"):
            t.start_time.CopyFrom(_ts(start))
            metrics.TASK_WAIT.observe(max(0, start - due_ms(t)))
        t.ClearField("error")
        if await self.store.commit(d.lease, t, T.TASK_STATE_RUNNING):
            d.cancel.set()
        await self._call(d)

    async def _call(self, d: Driven) -> None:
        """Make the Execute call of a RUNNING task's attempt and commit its outcome."""
        t = d.task
        opt = d.option
        assert opt is not None
        msg = route_message(t)
        timeout_ms = t.timeout.ToMilliseconds() or self.opts.default_timeout_ms
        err: task_pb2.TaskError | None = None
        out: CallOutcome | None = None
        t0 = time.perf_counter()
        try:
            await self.client.admit(msg)
        except AgentMeshError as e:
            err = _error_of(e)
        if err is None and not self._cancelled(d):
            req = agent_pb2.ExecuteRequest(
                action=t.task_type,
                input=t.payload,
                idempotency_key=f"task/{t.task_id}",
                attempt=t.attempt,
                metadata={"task_id": t.task_id},
            )
            # One task for the call, which a cancel request cancels
            # (_request_cancel; gRPC cancellation reaches the agent's
            # handler), rather than a second task waiting on the flag.
            call = d.call = asyncio.ensure_future(traced_attempt(
                t, self.client.call(opt.candidate, "Execute", req, timeout_s=timeout_ms / 1000.0)
            ))
            try:
                out = await call
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not (call.cancelled() and d.cancel.is_set()) or (me and me.cancelling()):
                    raise  # the driver itself is being cancelled
            finally:
                d.call = None
        metrics.TASK_RUN.observe((time.perf_counter() - t0) * 1000.0)
        if out is None and err is None:  # cancelled mid-call
            await self._finish(d.lease, t, T.TASK_STATE_CANCELLED, d)
            return
        if out is not None and out.response is not None:
            t.result.CopyFrom(out.response.output)
            await self._finish(d.lease, t, T.TASK_STATE_COMPLETED, d)
            return
        if err is None:
            assert out is not None
            err = _error_of_outcome(out)
            d.avoid = out.agent_id
        t.error.CopyFrom(err)
        t.failed_attempts += 1
        if err.code in NON_RETRYABLE:
            await self._finish(d.lease, t, T.TASK_STATE_FAILED, d)
            return
        if t.failed_attempts >= max_attempts(t.retry_policy):
            final = (
                T.TASK_STATE_TIMEOUT if err.code == "DEADLINE_EXCEEDED" else T.TASK_STATE_FAILED
            )
            await self._finish(d.lease, t, final, d)
            return
        await self._release_slot(d)
        if await self.store.commit(d.lease, t, T.TASK_STATE_RETRYING):
            d.cancel.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(d.cancel.wait(), backoff_s(t.retry_policy, t.failed_attempts))

    # ---- renewal and recovery -------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.renew_interval_ms / 1000.0)
            await self.renew_once()

    async def renew_once(self) -> None:
        """Renew every lease and slot of the driven tasks; flag cancels; drop lost ones."""
        items = list(self.driven.values())
        if not items:
            return
        ttl = self.opts.lease_ttl_ms
        renewals = await self.store.leases.renew_many([d.lease for d in items], ttl_ms=ttl)
        held = [d for d, r in zip(items, renewals, strict=True) if r.held]
        for d, r in zip(items, renewals, strict=True):
            if not r.held and d.runner is not None:
                d.runner.cancel()
        slots = [
            (d.option.candidate.agent_id, self._member(d.task.task_id)) for d in held if d.option
        ]
        if slots:
            await self.store.renew_slots(slots, ttl_ms=ttl)
        flags = await self.store.cancel_flags([d.task.task_id for d in held])
        for d, f in zip(held, flags, strict=True):
            if f:
                self._request_cancel(d)

    @staticmethod
    def _request_cancel(d: Driven) -> None:
        """Flag a cancel for the driver and cancel its call in flight (a call
        that already returned keeps its outcome)."""
        d.cancel.set()
        if d.call is not None and not d.call.done():
            d.call.cancel()

    async def _recovery_loop(self) -> None:
        while True:
            await self.recover_once()
            await asyncio.sleep(self.opts.recovery_interval_ms / 1000.0)

    async def recover_once(self) -> int:
        """Take over orphaned tasks and re-queue lost queue entries; returns
        how many tasks it took over. Also samples the queue depths."""
        if detected_reset() is not None:  # health says why; take no lease
            return 0
        depths = await self.store.depths()
        for cls, n in enumerate(depths):
            metrics.TASK_QUEUE_DEPTH.labels(CLASS_NAMES[cls]).set(n)
        ids = [i for i in await self.store.active(count=2000) if i not in self.driven]
        if not ids:
            return 0
        states = await self.store.lease_states(ids)
        forget: list[str] = []
        pending: list[str] = []
        orphans: list[str] = []
        for tid, (leased, state) in zip(ids, states, strict=True):
            if not state or T.TaskState.Value(state) in TERMINAL:
                forget.append(tid)
            elif leased:
                continue
            elif state == "TASK_STATE_PENDING":
                pending.append(tid)
            else:
                orphans.append(tid)
        await self.store.forget_active(forget)
        if pending:
            await self._sweep_pending([t for t in await self.store.get_many(pending) if t])
        taken = 0
        for tid in orphans:
            if len(self.driven) >= self.opts.max_active:
                break
            claimed = await self.store.claim(tid, owner=self.opts.coordinator_id,
                                             ttl_ms=self.opts.lease_ttl_ms)
            if claimed is None:
                continue
            if claimed.task.state in TERMINAL or claimed.task.state == T.TASK_STATE_PENDING:
                await self.store.release(claimed.lease)
                continue
            metrics.TAKEOVERS.labels("task_recovery").inc()
            log.info("task taken over", extra={"task_id": tid})
            self._spawn(Driven(claimed.lease, claimed.task))
            taken += 1
        return taken
