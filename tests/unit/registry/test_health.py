"""The health formula and flap damping (pure functions)."""

from __future__ import annotations

import pytest

from agentmesh.server.registry.health import HealthPolicy, damp, health_score, status_for

P = HealthPolicy()


def score(**kw: float) -> float:
    args = {"age_ms": 0.0, "interval_ms": 1000.0, "error_rate": 0.0, "response_time_ms": 0.0,
            "cpu_percent": 0.0}
    args.update(kw)
    return health_score(policy=P, **args)


def test_fresh_idle_agent_is_perfect() -> None:
    assert score() == 1.0


def test_recency_penalty_past_twice_the_interval() -> None:
    assert score(age_ms=2000) == 1.0  # exactly 2x is not yet stale
    assert score(age_ms=2001) == 0.5
    assert score(age_ms=3000) == 0.5
    assert score(age_ms=3001) == 0.0  # past the TTL (3 intervals): critical


def test_error_rate_is_linear() -> None:
    assert [score(error_rate=e) for e in (0.0, 0.25, 0.5, 1.0)] == pytest.approx(
        [1.0, 0.75, 0.5, 0.0])


def test_response_time_penalty_over_two_seconds() -> None:
    assert score(response_time_ms=2000) == 1.0
    assert score(response_time_ms=2001) == pytest.approx(0.8)


def test_cpu_penalty_over_seventy_percent() -> None:
    assert score(cpu_percent=70) == 1.0
    assert score(cpu_percent=70.5) == pytest.approx(0.9)


def test_penalties_multiply() -> None:
    assert score(age_ms=2500, error_rate=0.1, response_time_ms=3000, cpu_percent=90) == \
        pytest.approx(0.5 * 0.9 * 0.8 * 0.9)


def test_status_thresholds() -> None:
    assert [status_for(s, P) for s in (1.0, 0.7, 0.69, 0.3, 0.29, 0.0)] == [
        "ACTIVE", "ACTIVE", "DEGRADED", "DEGRADED", "INACTIVE", "INACTIVE"]


def test_damping_needs_n_in_a_row() -> None:
    state = ("ACTIVE", "", 0)
    seen = []
    for cand in ["INACTIVE", "ACTIVE", "INACTIVE", "INACTIVE", "INACTIVE"]:
        state = damp(status=state[0], pending=state[1], streak=state[2], candidate=cand,
                     policy=P)
        seen.append(state[0])
    assert seen == ["ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE", "INACTIVE"]


def test_damping_restarts_when_the_candidate_changes() -> None:
    s = damp(status="ACTIVE", pending="", streak=0, candidate="DEGRADED", policy=P)
    s = damp(status=s[0], pending=s[1], streak=s[2], candidate="DEGRADED", policy=P)
    assert s == ("ACTIVE", "DEGRADED", 2)
    s = damp(status=s[0], pending=s[1], streak=s[2], candidate="INACTIVE", policy=P)
    assert s == ("ACTIVE", "INACTIVE", 1)


def test_threshold_one_disables_damping() -> None:
    one = HealthPolicy(flap_threshold=1)
    assert damp(status="ACTIVE", pending="", streak=0, candidate="INACTIVE", policy=one) == (
        "INACTIVE", "", 0)
