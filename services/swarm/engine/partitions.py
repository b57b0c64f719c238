"""Partitioned work as foraging: pheromone-guided dispatch of partitions.

The data partitions are the food sources and the worker agents the foragers.
Each decision takes the next pending partition (FIFO; reclaimed ones jump the
queue) and picks an agent among the live ones with a free slot by the
random-proportional rule of Ant System (Dorigo, Maniezzo & Colorni 1996)::

    P(a) = τ_a^alpha · η_a^β / Σ_b τ_b^alpha · η_b^β

* ``τ_a`` is agent ``a``'s trail, in records per second. On every result the
  agent reports, ``τ_a ← (1 - rho)·τ_a + Δτ`` with ``Δτ = rho·y``, where ``y`` is
  the observed throughput (records / elapsed seconds) of that lease; so the
  trail is an exponentially weighted moving average of throughput. A timeout
  or a failure evaporates without deposit (``Δτ = 0``). An agent with no
  result yet counts at the mean trail of the live agents that have one (neutral,
  so newcomers get tried). Trails are floored at ``tau_min_fraction`` of the
  largest trail of a live agent, as in MAX-MIN Ant System (Stützle & Hoos 2000), so a
  slow agent is still sampled now and then and can redeem itself.
* ``η_a = 1 / (1 + in_flight_a)`` is the heuristic desirability: prefer idle
  agents.

Faster agents therefore receive proportionally more partitions.

Leases: every assignment is a lease with a deadline ``now + lease_s``. A
lease is reclaimed, and its partition goes back to the front of the queue,
when :meth:`PartitionScheduler.expire` finds it past its deadline, when the
agent reports failure, or when the agent is removed (died, deregistered).
After ``max_attempts`` attempts a partition is marked failed.

Exactly-once counting: the first result that arrives for a partition is
counted, whichever lease it comes from (a late result from a timed-out agent
is still a valid result); every later result for the same partition is a
:attr:`CompletionStatus.DUPLICATE` and ignored. Any other lease still in
flight for it is voided and returned so the caller can cancel that work.

Pure logic: no I/O, no threads, time comes from the injected ``clock``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from .arrays import BoolArray, FloatArray, IntArray
from .codec import decode_float, decode_rng, encode_float, encode_rng
from .errors import InvalidConfigError, InvalidStateError, SnapshotError, UnknownNameError

__all__ = [
    "SCHEDULER_SNAPSHOT_FORMAT",
    "AgentStats",
    "Completion",
    "CompletionStatus",
    "Lease",
    "PartitionScheduler",
    "PartitionState",
    "SchedulerStats",
]

SCHEDULER_SNAPSHOT_FORMAT = "agentmesh.swarm.engine.partitions/v1"
"""Value of the ``format`` key of :meth:`PartitionScheduler.snapshot` dicts."""

_MIN_ELAPSED_S = 1e-9  # a zero elapsed time must not produce an infinite trail


class PartitionState(StrEnum):
    """Life cycle of one partition."""

    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"


class CompletionStatus(StrEnum):
    """Outcome of reporting a result."""

    COUNTED = "counted"
    """First result for the partition; it is now done."""

    DUPLICATE = "duplicate"
    """The partition was already done; this result is ignored."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One partition handed to one agent.

    Attributes:
        lease_id: Unique, increasing (usable as a fencing token).
        partition_id: The partition.
        agent_id: The agent.
        issued_at_s: Clock reading at assignment, seconds.
        deadline_s: Clock reading after which the lease may be reclaimed.
        attempt: 1 for the first assignment of the partition, then 2, …
    """

    lease_id: int
    partition_id: str
    agent_id: str
    issued_at_s: float
    deadline_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Completion:
    """Result of :meth:`PartitionScheduler.complete`.

    Attributes:
        status: Counted or duplicate.
        partition_id: The partition the lease was for.
        superseded_lease_id: Another agent's lease on the same partition that
            was still in flight and is now void (cancel that work), or None.
    """

    status: CompletionStatus
    partition_id: str
    superseded_lease_id: int | None = None


@dataclass(frozen=True, slots=True)
class AgentStats:
    """Per-agent counters.

    Attributes:
        agent_id: The agent.
        alive: False once removed.
        max_in_flight: Capacity in concurrent leases.
        in_flight: Leases currently held.
        assigned: Leases ever issued to it.
        counted: Its results that were counted.
        duplicates: Its results that were ignored as duplicates.
        timeouts: Its leases reclaimed by :meth:`PartitionScheduler.expire`.
        failures: Its leases it reported as failed.
        records: Records in its counted results.
        pheromone: Trail ``τ`` in records per second (None before its first
            result).
    """

    agent_id: str
    alive: bool
    max_in_flight: int
    in_flight: int
    assigned: int
    counted: int
    duplicates: int
    timeouts: int
    failures: int
    records: int
    pheromone: float | None


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """Scheduler-wide counters.

    Attributes:
        total: Partitions.
        pending: Waiting for an agent.
        in_flight: Leased and not yet reported.
        done: Counted exactly once.
        failed: Gave up after ``max_attempts``.
        decisions: Assignments made.
        requeued: Leases that ended without a result (timeout, failure, agent
            removed) and put their partition back in the queue; the
            ``reassignments`` of the daemon's ``PartitionResult``.
        records_done: Records over counted results.
        value_total: Sum of counted result values, correctly rounded (equal
            to ``math.fsum`` of them, whatever the completion order).
        agents: Per-agent counters by agent id.
    """

    total: int
    pending: int
    in_flight: int
    done: int
    failed: int
    decisions: int
    requeued: int
    records_done: int
    value_total: float
    agents: dict[str, AgentStats]


class _ExactSum:
    """Running float sum, exact until read (Shewchuk 1997 partials, as in
    the "msum" recipe behind ``math.fsum``), so stats stay O(1) in the number
    of partitions and the total still equals ``math.fsum`` of all values."""

    __slots__ = ("_partials",)

    def __init__(self) -> None:
        self._partials: list[float] = []

    def add(self, x: float) -> None:
        i = 0
        for y in self._partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                self._partials[i] = lo
                i += 1
            x = hi
        self._partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self._partials)


@dataclass(slots=True)
class _Partition:
    state: PartitionState = PartitionState.PENDING
    attempts: int = 0
    active_lease: int | None = None
    agent: str | None = None
    records: int = 0
    value: float = 0.0
    lease_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _LeaseRecord:
    partition: str
    agent: int
    issued_at_s: float
    deadline_s: float
    attempt: int
    active: bool = True


class PartitionScheduler:
    """Dispatches partitions to agents by pheromone; leases; exactly-once."""

    def __init__(
        self,
        partition_ids: Iterable[str],
        *,
        lease_s: float,
        clock: Callable[[], float],
        seed: int = 0,
        evaporation: float = 0.3,
        alpha: float = 1.0,
        beta: float = 1.0,
        tau_min_fraction: float = 0.05,
        max_attempts: int = 5,
    ) -> None:
        """Creates a scheduler with every partition pending and no agents.

        Args:
            partition_ids: Unique partition ids, in dispatch order.
            lease_s: Lease duration in seconds (> 0).
            clock: Returns the current time in seconds. Lease deadlines are
                absolute readings of it and are stored in snapshots, so use a
                clock shared by every replica that may restore the snapshot
                (``time.time``), not ``time.monotonic``.
            seed: Seed of the PCG64 generator behind the agent choice.
            evaporation: ``rho`` in (0, 1].
            alpha: Trail exponent ``alpha`` (>= 0).
            beta: Load-heuristic exponent ``β`` (>= 0).
            tau_min_fraction: Trail floor relative to the largest live
                trail, in [0, 1].
            max_attempts: Assignments per partition before it is failed (>= 1).

        Raises:
            InvalidConfigError: On a duplicate partition id or an argument out
                of range.
        """
        if not lease_s > 0.0:
            raise InvalidConfigError("lease_s", "must be > 0")
        if not 0.0 < evaporation <= 1.0:
            raise InvalidConfigError("evaporation", "must be in (0, 1]")
        if not (alpha >= 0.0 and beta >= 0.0):
            raise InvalidConfigError("alpha", "alpha and beta must be >= 0")
        if not 0.0 <= tau_min_fraction <= 1.0:
            raise InvalidConfigError("tau_min_fraction", "must be in [0, 1]")
        if max_attempts < 1:
            raise InvalidConfigError("max_attempts", "must be >= 1")
        self._lease_s = float(lease_s)
        self._clock = clock
        self._seed = seed
        self._rho = float(evaporation)
        self._alpha = float(alpha)
        self._beta = float(beta)
        self._tau_min_fraction = float(tau_min_fraction)
        self._max_attempts = max_attempts
        self._rng = np.random.default_rng(seed)
        self._partitions: dict[str, _Partition] = {}
        for pid in partition_ids:
            if pid in self._partitions:
                raise InvalidConfigError("partition_ids", f"duplicate id {pid!r}")
            self._partitions[pid] = _Partition()
        self._pending: deque[str] = deque(self._partitions)
        self._pending_count = len(self._partitions)
        self._in_flight_count = 0
        self._done_count = 0
        self._failed_count = 0
        self._records_done = 0
        self._value_total = _ExactSum()
        self._decisions = 0
        self._requeued = 0
        self._next_lease_id = 1
        self._leases: dict[int, _LeaseRecord] = {}
        # lease -> (partition, agent, issued_at_s) of reclaimed/superseded
        # leases of counted partitions: only these can still send a result.
        self._stale: dict[int, tuple[str, int, float]] = {}
        self._expiry: list[tuple[float, int]] = []
        # Agents live in parallel arrays so a decision is a few vector ops.
        self._agent_ids: list[str] = []
        self._agent_index: dict[str, int] = {}
        self._agent_leases: list[set[int]] = []
        self._tau: FloatArray = np.zeros(0)
        self._observed: BoolArray = np.zeros(0, dtype=np.bool_)
        self._alive: BoolArray = np.zeros(0, dtype=np.bool_)
        self._in_flight: IntArray = np.zeros(0, dtype=np.int64)
        self._capacity: IntArray = np.zeros(0, dtype=np.int64)
        self._slots: IntArray = np.zeros(0, dtype=np.int64)  # capacity, 0 if dead
        self._base: FloatArray | None = None  # cache of _base_weights()
        # assigned, counted, duplicates, timeouts, failures, records
        self._counters: IntArray = np.zeros((0, 6), dtype=np.int64)

    # Agents ------------------------------------------------------------

    def add_agent(self, agent_id: str, *, max_in_flight: int = 1) -> None:
        """Registers an agent, or revives a removed one (its trail is kept).

        Args:
            agent_id: Unique agent id.
            max_in_flight: Concurrent leases it may hold (>= 1).

        Raises:
            InvalidConfigError: If ``max_in_flight < 1``.
            InvalidStateError: If the agent is already registered and alive.
        """
        if max_in_flight < 1:
            raise InvalidConfigError("max_in_flight", "must be >= 1")
        idx = self._agent_index.get(agent_id)
        if idx is not None:
            if self._alive[idx]:
                raise InvalidStateError(f"agent {agent_id!r} already registered")
            self._alive[idx] = True
            self._capacity[idx] = max_in_flight
            self._slots[idx] = max_in_flight
            self._base = None
            return
        self._agent_index[agent_id] = len(self._agent_ids)
        self._agent_ids.append(agent_id)
        self._agent_leases.append(set())
        self._tau = np.append(self._tau, 0.0)
        self._observed = np.append(self._observed, False)
        self._alive = np.append(self._alive, True)
        self._in_flight = np.append(self._in_flight, 0)
        self._capacity = np.append(self._capacity, max_in_flight)
        self._slots = np.append(self._slots, max_in_flight)
        self._base = None
        self._counters = np.vstack([self._counters, np.zeros((1, 6), dtype=np.int64)])

    def set_capacity(self, agent_id: str, max_in_flight: int) -> None:
        """Changes how many leases an agent may hold at once.

        Leases it already holds beyond the new capacity are kept; it just gets
        no new ones until it is below.

        Raises:
            InvalidConfigError: If ``max_in_flight < 1``.
            UnknownNameError: If the agent was never registered.
        """
        if max_in_flight < 1:
            raise InvalidConfigError("max_in_flight", "must be >= 1")
        idx = self._agent(agent_id)
        self._capacity[idx] = max_in_flight
        if self._alive[idx]:
            self._slots[idx] = max_in_flight

    def remove_agent(self, agent_id: str) -> list[Lease]:
        """Marks an agent dead and reclaims its leases.

        Its partitions go back to the front of the queue (or fail after
        ``max_attempts``). A result it still sends later is accepted if the
        partition is not done by then.

        Returns:
            The reclaimed leases (for the caller to cancel).

        Raises:
            UnknownNameError: If the agent was never registered.
        """
        idx = self._agent(agent_id)
        self._alive[idx] = False
        self._slots[idx] = 0
        self._base = None
        revoked = sorted(self._agent_leases[idx])
        return [self._reclaim(lid) for lid in revoked]

    def _agent(self, agent_id: str) -> int:
        try:
            return self._agent_index[agent_id]
        except KeyError:
            raise UnknownNameError(f"unknown agent {agent_id!r}") from None

    # Decisions ---------------------------------------------------------

    def _base_weights(self) -> FloatArray:
        # tau^alpha with the neutral value and the floor applied; it changes
        # only when a trail, an agent or its liveness changes, so it is cached
        # and a decision costs a handful of vector operations.
        if self._base is not None:
            return self._base
        tau = self._tau.copy()
        seen = self._observed & self._alive
        neutral = float(tau[seen].mean()) if seen.any() else 1.0
        tau[~self._observed] = neutral
        top = float(tau[self._alive].max()) if self._alive.any() else 0.0
        if top <= 0.0:
            base = np.ones_like(tau)  # no positive trail anywhere: uniform
        else:
            base = np.maximum(tau, self._tau_min_fraction * top)
            if self._alpha != 1.0:
                base = base**self._alpha
        self._base = base
        return base

    def _choose_agent(self) -> int | None:
        weight = self._base_weights() * (self._in_flight < self._slots)
        if self._beta != 0.0:
            eta = 1.0 / (1.0 + self._in_flight)
            weight *= eta if self._beta == 1.0 else eta**self._beta
        cum = np.cumsum(weight)
        total = float(cum[-1]) if cum.size else 0.0
        if total <= 0.0:
            return None
        pick = int(np.searchsorted(cum, self._rng.random() * total, side="right"))
        # Rounding at the top edge can land past the last positive weight.
        return pick if pick < cum.size and weight[pick] > 0.0 else int(np.flatnonzero(weight)[-1])

    def _peek_pending(self) -> str | None:
        while self._pending:
            pid = self._pending[0]
            if self._partitions[pid].state is PartitionState.PENDING:
                return pid
            self._pending.popleft()  # stale: done late while waiting
        return None

    def assign(self) -> Lease | None:
        """Leases the next pending partition to an agent chosen by pheromone.

        Does not reclaim expired leases; call :meth:`expire` for that.

        Returns:
            The new lease, or None when nothing is pending or no live agent
            has a free slot.
        """
        pid = self._peek_pending()
        if pid is None:
            return None
        agent = self._choose_agent()
        if agent is None:
            return None
        self._pending.popleft()
        now = self._clock()
        part = self._partitions[pid]
        part.state = PartitionState.LEASED
        part.attempts += 1
        lease_id = self._next_lease_id
        self._next_lease_id += 1
        rec = _LeaseRecord(pid, agent, now, now + self._lease_s, part.attempts)
        self._leases[lease_id] = rec
        part.active_lease = lease_id
        part.lease_ids.append(lease_id)
        self._agent_leases[agent].add(lease_id)
        heapq.heappush(self._expiry, (rec.deadline_s, lease_id))
        self._in_flight[agent] += 1
        self._counters[agent, 0] += 1
        self._pending_count -= 1
        self._in_flight_count += 1
        self._decisions += 1
        return self._lease(lease_id, rec)

    def assign_all(self) -> list[Lease]:
        """Calls :meth:`assign` until it returns None; returns the leases."""
        out: list[Lease] = []
        while (lease := self.assign()) is not None:
            out.append(lease)
        return out

    def _lease(self, lease_id: int, rec: _LeaseRecord) -> Lease:
        return Lease(
            lease_id,
            rec.partition,
            self._agent_ids[rec.agent],
            rec.issued_at_s,
            rec.deadline_s,
            rec.attempt,
        )

    # Outcomes ----------------------------------------------------------

    def _deactivate(self, lease_id: int, rec: _LeaseRecord) -> None:
        rec.active = False
        self._agent_leases[rec.agent].discard(lease_id)
        self._in_flight[rec.agent] -= 1
        self._in_flight_count -= 1
        part = self._partitions[rec.partition]
        if part.active_lease == lease_id:
            part.active_lease = None

    def _evaporate(self, agent: int, throughput: float | None) -> None:
        # τ ← (1 - rho)τ + Δτ with Δτ = rho·y (a result) or 0 (timeout/failure).
        self._base = None
        if not self._observed[agent]:
            if throughput is None:
                return  # nothing learnt about an agent that never delivered
            self._tau[agent] = throughput
            self._observed[agent] = True
            return
        deposit = 0.0 if throughput is None else self._rho * throughput
        self._tau[agent] = (1.0 - self._rho) * self._tau[agent] + deposit

    def _reclaim(self, lease_id: int) -> Lease:
        # The lease ends without a result: requeue at the front or fail.
        rec = self._leases[lease_id]
        self._deactivate(lease_id, rec)
        part = self._partitions[rec.partition]
        if part.attempts >= self._max_attempts:
            part.state = PartitionState.FAILED
            self._failed_count += 1
        else:
            part.state = PartitionState.PENDING
            self._pending.appendleft(rec.partition)
            self._pending_count += 1
            self._requeued += 1
        return self._lease(lease_id, rec)

    def complete(
        self,
        lease_id: int,
        *,
        records: int,
        value: float = 0.0,
        elapsed_s: float | None = None,
    ) -> Completion:
        """Reports the result of a lease.

        Args:
            lease_id: The lease the result belongs to (active or not).
            records: Records processed (>= 0); feeds the throughput trail.
            value: The partition's numeric result; summed exactly over
                counted results in :attr:`SchedulerStats.value_total`.
            elapsed_s: Processing time in seconds; default: clock now minus
                the lease's issue time.

        Returns:
            Whether it was counted, and any superseded lease.

        Raises:
            UnknownNameError: If the lease id was never issued.
            InvalidConfigError: If ``records < 0`` or ``value`` is not finite.
        """
        if records < 0:
            raise InvalidConfigError("records", "must be >= 0")
        if not math.isfinite(value):
            raise InvalidConfigError("value", "must be finite")
        rec = self._leases.get(lease_id)
        if rec is None:
            return self._late_duplicate(lease_id, records, elapsed_s)
        if rec.active:
            self._deactivate(lease_id, rec)
        elapsed = self._clock() - rec.issued_at_s if elapsed_s is None else elapsed_s
        self._evaporate(rec.agent, records / max(elapsed, _MIN_ELAPSED_S))
        part = self._partitions[rec.partition]
        superseded = part.active_lease
        if superseded is not None:
            self._deactivate(superseded, self._leases[superseded])
        if part.state is PartitionState.PENDING:
            self._pending_count -= 1  # its queue entry goes stale
        elif part.state is PartitionState.FAILED:
            self._failed_count -= 1  # a late result rescues it
        part.state = PartitionState.DONE
        part.agent = self._agent_ids[rec.agent]
        part.records = records
        part.value = float(value)
        self._value_total.add(part.value)
        self._done_count += 1
        self._records_done += records
        self._counters[rec.agent, 1] += 1
        self._counters[rec.agent, 5] += records
        # Prune the partition's lease records; keep a slim entry for the
        # other leases, which may still report (late duplicates).
        for lid in part.lease_ids:
            other = self._leases.pop(lid)
            if lid != lease_id:
                self._stale[lid] = (other.partition, other.agent, other.issued_at_s)
        part.lease_ids.clear()
        return Completion(CompletionStatus.COUNTED, rec.partition, superseded)

    def _late_duplicate(self, lease_id: int, records: int, elapsed_s: float | None) -> Completion:
        stale = self._stale.pop(lease_id, None)
        if stale is not None:
            pid, agent, issued = stale
            elapsed = self._clock() - issued if elapsed_s is None else elapsed_s
            # A late result is still a true throughput observation.
            self._evaporate(agent, records / max(elapsed, _MIN_ELAPSED_S))
            self._counters[agent, 2] += 1
            return Completion(CompletionStatus.DUPLICATE, pid)
        if 0 < lease_id < self._next_lease_id:
            # The counting lease reporting twice, or a stale entry already
            # used: the partition is counted.
            return Completion(CompletionStatus.DUPLICATE, "")
        raise UnknownNameError(f"unknown lease {lease_id}")

    def fail(self, lease_id: int) -> Lease | None:
        """Reports that an agent could not process its lease.

        The partition is requeued (or failed after ``max_attempts``) and the
        agent's trail evaporates without deposit.

        Returns:
            The reclaimed lease, or None if the lease was no longer active.

        Raises:
            UnknownNameError: If the lease id was never issued.
        """
        rec = self._leases.get(lease_id)
        if rec is None:
            if 0 < lease_id < self._next_lease_id:
                return None  # its partition is already counted
            raise UnknownNameError(f"unknown lease {lease_id}")
        if not rec.active:
            return None
        self._counters[rec.agent, 4] += 1
        self._evaporate(rec.agent, None)
        return self._reclaim(lease_id)

    def expire(self) -> list[Lease]:
        """Reclaims every active lease whose deadline has passed.

        Each one counts as a timeout for its agent (trail evaporates without
        deposit) and its partition is requeued at the front (or failed).

        Returns:
            The reclaimed leases, by deadline (cancel that work).
        """
        now = self._clock()
        out: list[Lease] = []
        while self._expiry and self._expiry[0][0] <= now:
            _, lease_id = heapq.heappop(self._expiry)
            rec = self._leases.get(lease_id)
            if rec is None or not rec.active:
                continue  # finished or reclaimed already
            self._counters[rec.agent, 3] += 1
            self._evaporate(rec.agent, None)
            out.append(self._reclaim(lease_id))
        return out

    # Views -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True when every partition is done or failed."""
        return self._done_count + self._failed_count == len(self._partitions)

    def partition_state(self, partition_id: str) -> PartitionState:
        """State of one partition.

        Raises:
            UnknownNameError: If the id is not a partition.
        """
        try:
            return self._partitions[partition_id].state
        except KeyError:
            raise UnknownNameError(f"unknown partition {partition_id!r}") from None

    def results(self) -> dict[str, tuple[str, int, float]]:
        """``{partition: (agent, records, value)}`` of every counted result."""
        return {
            pid: (p.agent or "", p.records, p.value)
            for pid, p in self._partitions.items()
            if p.state is PartitionState.DONE
        }

    def agent_stats(self, agent_id: str) -> AgentStats:
        """Counters of one agent, O(1).

        Raises:
            UnknownNameError: If the agent was never registered.
        """
        idx = self._agent(agent_id)
        c = self._counters[idx]
        return AgentStats(
            agent_id=agent_id,
            alive=bool(self._alive[idx]),
            max_in_flight=int(self._capacity[idx]),
            in_flight=int(self._in_flight[idx]),
            assigned=int(c[0]),
            counted=int(c[1]),
            duplicates=int(c[2]),
            timeouts=int(c[3]),
            failures=int(c[4]),
            records=int(c[5]),
            pheromone=float(self._tau[idx]) if self._observed[idx] else None,
        )

    def stats(self) -> SchedulerStats:
        """Counters; O(agents), independent of the number of partitions."""
        return SchedulerStats(
            total=len(self._partitions),
            pending=self._pending_count,
            in_flight=self._in_flight_count,
            done=self._done_count,
            failed=self._failed_count,
            decisions=self._decisions,
            requeued=self._requeued,
            records_done=self._records_done,
            value_total=self._value_total.value,
            agents={aid: self.agent_stats(aid) for aid in self._agent_ids},
        )

    # Snapshots ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Complete state as a strictly-JSON-serialisable dict (exact floats,
        RNG state included). The clock is not included."""
        return {
            "format": SCHEDULER_SNAPSHOT_FORMAT,
            "params": {
                "lease_s": encode_float(self._lease_s),
                "seed": self._seed,
                "evaporation": encode_float(self._rho),
                "alpha": encode_float(self._alpha),
                "beta": encode_float(self._beta),
                "tau_min_fraction": encode_float(self._tau_min_fraction),
                "max_attempts": self._max_attempts,
            },
            "partitions": [
                [
                    pid,
                    p.state.value,
                    p.attempts,
                    p.active_lease,
                    p.agent,
                    p.records,
                    encode_float(p.value),
                    list(p.lease_ids),
                ]
                for pid, p in self._partitions.items()
            ],
            "pending": [
                pid
                for pid in self._pending
                if self._partitions[pid].state is PartitionState.PENDING
            ],
            "leases": [
                [
                    lid,
                    r.partition,
                    r.agent,
                    encode_float(r.issued_at_s),
                    encode_float(r.deadline_s),
                    r.attempt,
                    r.active,
                ]
                for lid, r in self._leases.items()
            ],
            "stale": [
                [lid, pid, agent, encode_float(issued)]
                for lid, (pid, agent, issued) in self._stale.items()
            ],
            "agents": [
                [
                    aid,
                    bool(self._alive[i]),
                    int(self._capacity[i]),
                    encode_float(float(self._tau[i])),
                    bool(self._observed[i]),
                    [int(c) for c in self._counters[i]],
                ]
                for i, aid in enumerate(self._agent_ids)
            ],
            "counters": {
                "records_done": self._records_done,
                "decisions": self._decisions,
                "requeued": self._requeued,
                "next_lease_id": self._next_lease_id,
            },
            "rng": encode_rng(self._rng),
        }

    @classmethod
    def from_snapshot(
        cls, snapshot: Mapping[str, Any], *, clock: Callable[[], float]
    ) -> PartitionScheduler:
        """Rebuilds a scheduler from :meth:`snapshot` output.

        Args:
            snapshot: The dict (possibly JSON round-tripped).
            clock: Clock for the new instance (same time base as before).

        Raises:
            SnapshotError: If the snapshot is malformed or inconsistent.
        """
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != SCHEDULER_SNAPSHOT_FORMAT:
            raise SnapshotError(f"not a {SCHEDULER_SNAPSHOT_FORMAT} snapshot")
        try:
            prm = snapshot["params"]
            s = cls(
                [row[0] for row in snapshot["partitions"]],
                lease_s=decode_float(prm["lease_s"]),
                clock=clock,
                seed=int(prm["seed"]),
                evaporation=decode_float(prm["evaporation"]),
                alpha=decode_float(prm["alpha"]),
                beta=decode_float(prm["beta"]),
                tau_min_fraction=decode_float(prm["tau_min_fraction"]),
                max_attempts=int(prm["max_attempts"]),
            )
            for aid, alive, cap, tau, observed, counters in snapshot["agents"]:
                s.add_agent(str(aid), max_in_flight=int(cap))
                i = s._agent_index[aid]
                s._alive[i] = bool(alive)
                s._slots[i] = int(cap) if alive else 0
                s._tau[i] = decode_float(tau)
                s._observed[i] = bool(observed)
                s._counters[i] = np.asarray(counters, dtype=np.int64)
            for pid, state, attempts, active, agent, records, value, lids in snapshot["partitions"]:
                p = s._partitions[pid]
                p.state = PartitionState(state)
                p.attempts = int(attempts)
                p.active_lease = None if active is None else int(active)
                p.agent = None if agent is None else str(agent)
                p.records = int(records)
                p.value = decode_float(value)
                p.lease_ids = [int(x) for x in lids]
                if p.state is PartitionState.DONE:
                    s._value_total.add(p.value)
            for lid, pid, agent, issued, deadline, attempt, active in snapshot["leases"]:
                rec = _LeaseRecord(
                    str(pid),
                    int(agent),
                    decode_float(issued),
                    decode_float(deadline),
                    int(attempt),
                    bool(active),
                )
                s._leases[int(lid)] = rec
                if rec.active:
                    s._agent_leases[rec.agent].add(int(lid))
                    s._in_flight[rec.agent] += 1
                    heapq.heappush(s._expiry, (rec.deadline_s, int(lid)))
            for lid, pid, agent, issued in snapshot["stale"]:
                s._stale[int(lid)] = (str(pid), int(agent), decode_float(issued))
            s._pending = deque(str(pid) for pid in snapshot["pending"])
            states = [p.state for p in s._partitions.values()]
            s._pending_count = states.count(PartitionState.PENDING)
            s._in_flight_count = int(s._in_flight.sum())
            s._done_count = states.count(PartitionState.DONE)
            s._failed_count = states.count(PartitionState.FAILED)
            cnt = snapshot["counters"]
            s._records_done = int(cnt["records_done"])
            s._decisions = int(cnt["decisions"])
            s._requeued = int(cnt["requeued"])
            s._next_lease_id = int(cnt["next_lease_id"])
            s._rng = decode_rng(snapshot["rng"])
            s._base = None
        except SnapshotError:
            raise
        except (
            InvalidConfigError,
            InvalidStateError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as exc:
            raise SnapshotError(f"malformed scheduler snapshot: {exc!r}") from exc
        if (
            s._pending_count != len(s._pending)
            or states.count(PartitionState.LEASED) != s._in_flight_count
        ):
            raise SnapshotError("inconsistent scheduler snapshot")
        return s
