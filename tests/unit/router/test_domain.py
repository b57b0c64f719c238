"""Unit tests of the router's pure parts: strategies, eligibility, CEL,
aggregation, version constraints and settings."""

from __future__ import annotations

from collections import Counter

import pytest

from agentmesh.catalog import version_matches
from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime.cel import CelError, route_activation, route_condition
from agentmesh.runtime.routing.candidates import Candidate, Eligible, eligible_of
from agentmesh.runtime.routing.strategies import Picker
from agentmesh.runtime.routing.targets import TargetState, TargetStates
from agentmesh.runtime.settings import setting_specs
from agentmesh.server.router import aggregate
from agentmesh.server.router.settings import RouterSettings


def cands(n: int, **kw: float) -> list[Candidate]:
    return [Candidate(f"a{i:03d}", f"h:{i}", "ACTIVE", 1.0, **kw) for i in range(n)]  # type: ignore[arg-type]


def el(cs: list[Candidate]) -> Eligible:
    return Eligible(cs, False, len(cs))


def test_round_robin_even_within_one_over_any_prefix() -> None:
    p = Picker(seed=1)
    e = el(cands(7))
    counts: Counter[str] = Counter()
    for i in range(100):
        counts[p.round_robin("pool", e).agent_id] += 1
        assert max(counts.values()) - min(counts.values(), default=0) <= 1 or i < 7


@pytest.mark.parametrize("n", [10, 50])
def test_consistent_hash_moves_about_one_over_n(n: int) -> None:
    p = Picker(seed=1)
    keys = [f"k{i}" for i in range(5000)]
    before_el = el(cands(n))
    before = [p.consistent_hash("pool", before_el, k).agent_id for k in keys]
    grown = el([*cands(n), Candidate("new", "h:x", "ACTIVE", 1.0)])
    after = [p.consistent_hash("pool", grown, k).agent_id for k in keys]
    moved = [b for a, b in zip(before, after, strict=True) if a != b]
    assert 0 < len(moved) <= 1.25 * len(keys) / (n + 1)
    assert set(moved) == {"new"}
    # removing it again restores every key
    assert [p.consistent_hash("pool", before_el, k).agent_id for k in keys] == before


def test_least_loaded_never_picks_the_most_loaded() -> None:
    p = Picker(seed=3)
    cs = cands(5, capacity=10.0)
    for i, c in enumerate(cs):
        c.queue_size = float(i)
    picks = Counter(p.least_loaded(el(cs)).agent_id for _ in range(2000))
    assert picks["a004"] == 0
    assert picks["a000"] > picks["a001"] > picks["a002"] > picks["a003"]
    # in-flight calls of this replica count as load
    p.inflight["a000"] = 100
    picks = Counter(p.least_loaded(el(cs)).agent_id for _ in range(500))
    assert picks["a000"] == 0


def test_priority_and_failover_orders() -> None:
    p = Picker(seed=1)
    cs = cands(8)
    for i, c in enumerate(cs):
        c.health = 1.0 - i * 0.1
    e = el(cs)
    crit = {p.priority(e, common_pb2.PRIORITY_CRITICAL).agent_id for _ in range(200)}
    assert crit <= {"a000", "a001"}  # the healthiest quarter of 8
    assert len({p.priority(e, common_pb2.PRIORITY_LOW).agent_id for _ in range(200)}) > 2
    assert p.ordered(e, explicit=False)[0].agent_id == "a000"
    assert p.ordered(el(list(reversed(cs))), explicit=True)[0].agent_id == "a007"


def test_eligibility_panic_threshold_and_max_ejection() -> None:
    cs = cands(4)
    cs[3].status = "DECOMMISSIONED"
    states = TargetStates()
    states.put(TargetState("a000", breaker="OPEN", open_until_ms=10_000))
    got = eligible_of(cs, states, now_ms=5_000, panic_threshold=0.5, max_ejection_percent=50)
    assert [c.agent_id for c in got.candidates] == ["a001", "a002"]
    assert got.skipped == {"decommissioned": 1, "breaker_open": 1} and not got.panic
    # the open interval passes: half-open is eligible again
    got = eligible_of(cs, states, now_ms=10_000, panic_threshold=0.5, max_ejection_percent=50)
    assert len(got.candidates) == 3
    # 1 healthy of 3 routable is below 50%: panic spreads over all routable
    cs[1].status = "INACTIVE"
    got = eligible_of(cs, states, now_ms=5_000, panic_threshold=0.5, max_ejection_percent=50)
    assert got.panic and [c.agent_id for c in got.candidates] == ["a000", "a001", "a002"]
    # at most max_ejection_percent of the pool is kept out by ejection
    ej = TargetStates()
    for c in cands(4):
        ej.put(TargetState(c.agent_id, ejected_until_ms=99_999))
    got = eligible_of(cands(4), ej, now_ms=0, panic_threshold=0.0, max_ejection_percent=50)
    assert len(got.candidates) == 2


def test_cel_conditions_compile_check_and_evaluate() -> None:
    m = R.RouteMessage(message_type="calc", priority=common_pb2.PRIORITY_HIGH, metadata={"t": "v"})
    m.payload.struct_value.update({"amount": 150, "tags": ["a", "b"]})
    act = route_activation(m)
    for cond in (
        'message.type == "calc" && payload.amount > 100.0',
        'message.priority == "HIGH" && message.priority_level >= 3',
        'payload.tags.exists(t, t == "b") && message.metadata.t == "v"',
    ):
        assert route_condition(cond).evaluate_bool(act)
    assert not route_condition("has(payload.missing)").evaluate_bool(act)
    for bad in ("payload.amount >", "amount > 1", "nosuch(1)", "1 + 2", '1 + "a"', ""):
        with pytest.raises(CelError):
            route_condition(bad)


def test_aggregations() -> None:
    outs = [
        ("a", {"v": "x", "n": 1, "m": {"p": 1}}),
        ("b", {"v": "y", "n": 3, "m": {"q": 2}}),
        ("c", {"v": "y", "n": "nan?", "m": {"p": 5}}),
        ("d", {"v": "x"}),
    ]
    vote = aggregate.majority_vote(outs, "v")
    assert vote.tie and vote.tied == ['"x"', '"y"'] and vote.result == {"value": "x", "votes": 2}
    assert not vote.majority
    assert aggregate.average(outs, "n") == {"average": 2.0, "count": 2}
    merged, conflicts = aggregate.merge(outs)
    assert merged["m"] == {"p": 5, "q": 2} and conflicts == ["m.p", "n", "v"]
    assert aggregate.at_path({"a": [{"b": 4}]}, "a.0.b") == 4
    assert aggregate.majority_vote([], "v").result == {}


def test_versions_and_settings() -> None:
    assert version_matches("1.4.2", "^1.4") and not version_matches("2.0.0", "^1.4")
    assert version_matches("2.0.5", "~2.0.1") and not version_matches("2.1.0", "~2.0.1")
    assert version_matches("1.5.0", ">=1.2.0, <2.0.0") and not version_matches("junk", ">=1")
    s = RouterSettings.from_strings({"panic_threshold": "0.3", "safety_halt_on_critical": "no"})
    assert s.panic_threshold == 0.3 and s.safety_halt_on_critical is False
    names = {spec.name for spec in setting_specs(RouterSettings)}
    assert names >= {"panic_threshold", "rate_limit_per_s", "vnodes", "invoke_max_attempts"}
    with pytest.raises(ValueError):
        RouterSettings.from_strings({"vnodes": "many"})
