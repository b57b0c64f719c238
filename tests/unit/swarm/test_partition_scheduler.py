"""PartitionScheduler: pheromone dispatch, leases, exactly-once, snapshots."""

from __future__ import annotations

import heapq
import json
import math

import numpy as np
import pytest

from agentmesh.server.swarm.engine import (
    CompletionStatus,
    InvalidConfigError,
    InvalidStateError,
    PartitionScheduler,
    SnapshotError,
    UnknownNameError,
)
from agentmesh.server.swarm.engine.partitions import PartitionState


class FakeClock:
    """Injected time, in seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sched(
    n: int = 100,
    *,
    lease_s: float = 10.0,
    beta: float = 1.0,
    tau_min_fraction: float = 0.05,
    max_attempts: int = 5,
) -> tuple[PartitionScheduler, FakeClock]:
    clock = FakeClock()
    s = PartitionScheduler(
        [f"p{i}" for i in range(n)],
        lease_s=lease_s,
        clock=clock,
        seed=1,
        beta=beta,
        tau_min_fraction=tau_min_fraction,
        max_attempts=max_attempts,
    )
    return s, clock


def _simulate(
    s: PartitionScheduler,
    clock: FakeClock,
    seconds_per_partition: dict[str, float],
    values: dict[str, float],
    *,
    die: tuple[str, float] | None = None,
) -> None:
    """Discrete-event run: agents finish after a fixed time per partition.

    ``die = (agent, t)`` removes the agent at time t; its in-flight results
    are still delivered later (a "zombie"), which must count at most once.
    """
    events: list[tuple[float, int, str, str]] = []
    dead = False
    while not s.finished:
        if die and not dead and clock.now >= die[1]:
            s.remove_agent(die[0])
            dead = True
        s.expire()
        for lease in s.assign_all():
            done_at = clock.now + seconds_per_partition[lease.agent_id]
            heapq.heappush(events, (done_at, lease.lease_id, lease.agent_id, lease.partition_id))
        t, lid, _agent, pid = heapq.heappop(events)
        clock.now = t
        s.complete(lid, records=100, value=values[pid])
    # Deliver whatever is still outstanding (late results of reclaimed leases).
    while events:
        t, lid, _agent, pid = heapq.heappop(events)
        clock.now = t
        assert s.complete(lid, records=100, value=values[pid]).status is CompletionStatus.DUPLICATE


def test_faster_agent_gets_more_partitions() -> None:
    s, clock = _sched(300)
    for a in ("fast", "slow"):
        s.add_agent(a, max_in_flight=3)
    values = {f"p{i}": 1.0 for i in range(300)}
    _simulate(s, clock, {"fast": 1.0, "slow": 5.0}, values)
    st = s.stats()
    fast, slow = st.agents["fast"], st.agents["slow"]
    assert fast.counted > 4 * slow.counted
    assert fast.pheromone == pytest.approx(100.0) and slow.pheromone == pytest.approx(20.0)
    assert st.done == 300 and st.value_total == 300.0


def _two_observed_agents(
    n: int, a_records_per_s: int, b_records_per_s: int, *, tau_min_fraction: float = 0.05
) -> PartitionScheduler:
    """Agents a and b, each with one observed result, then unlimited slots.

    beta = 0 so only the trail term decides.
    """
    s, clock = _sched(n, beta=0.0, tau_min_fraction=tau_min_fraction)
    s.add_agent("a")
    la = s.assign()
    s.add_agent("b")
    lb = s.assign()  # a is full, so b
    assert la is not None and lb is not None and lb.agent_id == "b"
    clock.now = 1.0
    s.complete(la.lease_id, records=a_records_per_s)
    s.complete(lb.lease_id, records=b_records_per_s)
    s.set_capacity("a", 10**6)
    s.set_capacity("b", 10**6)
    return s


def test_choice_is_proportional_to_pheromone() -> None:
    # beta = 0 and unlimited slots isolate the trail term: P(a) = tau_a / sum tau.
    s = _two_observed_agents(10_000, 300, 100)
    picks = [lease.agent_id for lease in s.assign_all()]
    assert picks.count("a") / len(picks) == pytest.approx(0.75, abs=0.02)


def test_slow_agent_is_still_sampled_thanks_to_the_floor() -> None:
    s = _two_observed_agents(5000, 10_000, 1, tau_min_fraction=0.05)
    picks = [lease.agent_id for lease in s.assign_all()]
    # b's trail (1 record/s) is floored at 5 % of a's: P(b) = 0.05 / 1.05.
    assert picks.count("b") / len(picks) == pytest.approx(0.05 / 1.05, abs=0.01)


def test_dead_agent_partitions_are_reassigned_and_zombie_results_ignored() -> None:
    s, clock = _sched(3)
    s.add_agent("a", max_in_flight=3)
    leases = s.assign_all()
    assert [le.agent_id for le in leases] == ["a"] * 3
    s.add_agent("b", max_in_flight=3)
    revoked = s.remove_agent("a")
    assert sorted(le.partition_id for le in revoked) == ["p0", "p1", "p2"]
    assert s.stats().pending == 3 and s.stats().in_flight == 0 and s.stats().requeued == 3
    again = s.assign_all()
    assert {le.agent_id for le in again} == {"b"} and all(le.attempt == 2 for le in again)
    assert s.assign() is None  # a is dead, b is full... nothing pending anyway
    clock.now = 2.0
    for le in again:
        assert s.complete(le.lease_id, records=5, value=1.5).status is CompletionStatus.COUNTED
    for le in leases:  # the "dead" agent was only slow: its results come late
        assert s.complete(le.lease_id, records=5, value=99.0).status is CompletionStatus.DUPLICATE
    st = s.stats()
    assert st.done == 3 and st.value_total == 4.5
    assert st.agents["b"].counted == 3 and st.agents["a"].duplicates == 3
    assert s.results()["p0"] == ("b", 5, 1.5)


def test_timeout_reassigns_and_first_result_wins() -> None:
    s, clock = _sched(1, lease_s=5.0)
    s.add_agent("slow")
    first = s.assign()
    assert first is not None
    clock.now = 6.0
    expired = s.expire()
    assert [le.lease_id for le in expired] == [first.lease_id]
    assert s.stats().agents["slow"].timeouts == 1
    s.add_agent("quick")
    second = s.assign()
    assert second is not None and second.attempt == 2
    # The slow agent answers first after all: counted; the new lease is void.
    outcome = s.complete(first.lease_id, records=10, value=7.0)
    assert outcome.status is CompletionStatus.COUNTED
    assert outcome.superseded_lease_id == second.lease_id
    assert s.stats().in_flight == 0
    late = s.complete(second.lease_id, records=10, value=7.0)
    assert late.status is CompletionStatus.DUPLICATE and late.partition_id == "p0"
    assert s.stats().value_total == 7.0 and s.finished


def test_total_is_exact_with_timeouts_deaths_and_duplicates() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    values = {f"p{i}": float(v) for i, v in enumerate(rng.lognormal(0.0, 3.0, n))}
    s, clock = _sched(n, lease_s=4.0)
    speeds = {"a1": 0.5, "a2": 1.0, "a3": 2.0, "laggard": 6.0, "zombie": 1.5}
    for a in speeds:
        s.add_agent(a, max_in_flight=2)
    _simulate(s, clock, speeds, values, die=("zombie", 50.0))
    st = s.stats()
    assert st.done == n and st.failed == 0 and st.pending == 0 and st.in_flight == 0
    assert st.value_total == math.fsum(values.values())  # exact, not approx
    assert sum(a.counted for a in st.agents.values()) == n
    assert st.agents["laggard"].timeouts > 0  # 6 s work on a 4 s lease
    assert sum(a.duplicates for a in st.agents.values()) > 0
    assert st.records_done == 100 * n


def test_failures_and_max_attempts() -> None:
    s, _ = _sched(1, max_attempts=2)
    s.add_agent("a")
    one = s.assign()
    assert one is not None
    assert s.fail(one.lease_id) is not None
    assert s.fail(one.lease_id) is None  # no longer active
    two = s.assign()
    assert two is not None and two.attempt == 2
    s.fail(two.lease_id)
    assert s.partition_state("p0") is PartitionState.FAILED
    assert s.finished and s.stats().failed == 1 and s.assign() is None
    # A late success still rescues it.
    assert s.complete(one.lease_id, records=1, value=2.0).status is CompletionStatus.COUNTED
    assert s.stats().failed == 0 and s.stats().done == 1


def test_no_agents_or_no_capacity_means_no_assignment() -> None:
    s, _ = _sched(5)
    assert s.assign() is None
    s.add_agent("a", max_in_flight=2)
    assert len(s.assign_all()) == 2
    assert s.stats().pending == 3


def test_errors() -> None:
    with pytest.raises(InvalidConfigError):
        PartitionScheduler(["x", "x"], lease_s=1.0, clock=FakeClock())
    with pytest.raises(InvalidConfigError):
        PartitionScheduler(["x"], lease_s=0.0, clock=FakeClock())
    s, _ = _sched(2)
    s.add_agent("a")
    with pytest.raises(InvalidStateError):
        s.add_agent("a")
    with pytest.raises(UnknownNameError):
        s.remove_agent("nobody")
    with pytest.raises(UnknownNameError):
        s.complete(42, records=1)
    lease = s.assign()
    assert lease is not None
    with pytest.raises(InvalidConfigError):
        s.complete(lease.lease_id, records=-1)
    with pytest.raises(InvalidConfigError):
        s.complete(lease.lease_id, records=1, value=math.nan)


def test_removed_agent_can_come_back() -> None:
    s, _ = _sched(2)
    s.add_agent("a")
    s.remove_agent("a")
    assert s.assign() is None
    s.add_agent("a", max_in_flight=2)
    assert len(s.assign_all()) == 2


def test_snapshot_restore_continues_identically() -> None:
    def build() -> tuple[PartitionScheduler, FakeClock]:
        s, clock = _sched(500, lease_s=3.0)
        for a, cap in (("a", 2), ("b", 1), ("c", 3)):
            s.add_agent(a, max_in_flight=cap)
        return s, clock

    def drive(s: PartitionScheduler, clock: FakeClock, steps: int) -> list[tuple[int, str, str]]:
        log = []
        rng = np.random.default_rng(7)  # the same completion order for both runs
        for _ in range(steps):
            s.expire()
            for le in s.assign_all():
                log.append((le.lease_id, le.partition_id, le.agent_id))
            clock.now += 1.0
            if log:
                lid = log[int(rng.integers(len(log)))][0]
                s.complete(lid, records=int(rng.integers(1, 100)), value=1.0)
        return log

    s1, c1 = build()
    drive(s1, c1, 40)
    snap = json.loads(json.dumps(s1.snapshot(), allow_nan=False))
    c2 = FakeClock()
    c2.now = c1.now  # another replica, same time base
    s2 = PartitionScheduler.from_snapshot(snap, clock=c2)
    assert s2.stats() == s1.stats()
    assert drive(s1, c1, 60) == drive(s2, c2, 60)
    assert s1.stats() == s2.stats()
    with pytest.raises(SnapshotError):
        PartitionScheduler.from_snapshot({"format": "nope"}, clock=c1)
    bad = json.loads(json.dumps(s1.snapshot()))
    bad["pending"] = bad["pending"][1:] if bad["pending"] else ["p0"]
    with pytest.raises(SnapshotError):
        PartitionScheduler.from_snapshot(bad, clock=c1)


def test_total_is_correctly_rounded_in_any_completion_order() -> None:
    values = [1e16, 1.0, -1e16, 3.0, 1e-3]
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [1, 3, 4, 0, 2]):
        s, _ = _sched(len(values))
        s.add_agent("a", max_in_flight=10)
        leases = {le.partition_id: le.lease_id for le in s.assign_all()}
        for i in order:
            s.complete(leases[f"p{i}"], records=1, value=values[i])
        assert s.stats().value_total == math.fsum(values) == 4.001
        assert s.agent_stats("a").counted == 5
        restored = PartitionScheduler.from_snapshot(
            json.loads(json.dumps(s.snapshot())), clock=FakeClock()
        )
        assert restored.stats().value_total == 4.001
