"""Role assignment by rank, counts, and the role move rules."""

from __future__ import annotations

import numpy as np
import pytest

from agentmesh.server.swarm.engine import InvalidConfigError, Role, RoleFractions
from agentmesh.server.swarm.engine.roles import (
    GCPSO_FAILURE_LIMIT,
    GCPSO_SUCCESS_LIMIT,
    QueenState,
    assign_roles,
    levy_steps,
    role_counts,
    soldier_positions,
)


def test_roles_follow_fitness_rank_bands() -> None:
    fr = RoleFractions(soldier=0.2, nurse=0.1, forager=0.2, scout=0.1)
    fit = np.arange(10, dtype=np.float64)[::-1].copy()  # particle 9 is best
    roles = assign_roles(fit, fr)
    by_rank = [Role(int(roles[i])) for i in np.argsort(fit)]
    assert by_rank == [
        Role.QUEEN,
        Role.SOLDIER,
        Role.SOLDIER,
        Role.NURSE,
        Role.WORKER,
        Role.WORKER,
        Role.WORKER,
        Role.FORAGER,
        Role.FORAGER,
        Role.SCOUT,
    ]
    assert role_counts(roles) == {
        "queen": 1,
        "soldier": 2,
        "nurse": 1,
        "worker": 3,
        "forager": 2,
        "scout": 1,
    }


def test_counts_always_sum_to_n_and_workers_only_is_plain_pso() -> None:
    fr = RoleFractions(soldier=0.33, nurse=0.33, forager=0.33)
    for n in (1, 2, 3, 7, 100):
        assert sum(fr.counts(n).values()) == n
    assert RoleFractions.workers_only().counts(5)[Role.WORKER] == 5


def test_fraction_validation() -> None:
    with pytest.raises(InvalidConfigError):
        RoleFractions(soldier=0.6, scout=0.6).validate()
    with pytest.raises(InvalidConfigError):
        RoleFractions(nurse=-0.1).validate()


def test_queen_radius_doubles_after_successes_and_halves_after_failures() -> None:
    q = QueenState(rho=0.1)
    for _ in range(GCPSO_SUCCESS_LIMIT + 1):
        q = q.advance(3, True)
    assert q.rho == pytest.approx(0.2)
    for _ in range(GCPSO_FAILURE_LIMIT + 1):
        q = q.advance(3, False)
    assert q.rho == pytest.approx(0.1)
    q = q.advance(4, False)  # a new Queen restarts the counters
    assert (q.index, q.successes, q.failures) == (4, 0, 1)


def test_soldiers_sample_around_the_best() -> None:
    s = soldier_positions(
        np.array([1.0, -2.0]), 20_000, np.array([0.1, 0.01]), np.random.default_rng(0)
    )
    np.testing.assert_allclose(s.mean(0), [1.0, -2.0], atol=2e-3)
    np.testing.assert_allclose(s.std(0), [0.1, 0.01], rtol=0.03)


def test_levy_steps_are_heavy_tailed() -> None:
    steps = np.abs(levy_steps((200_000, 1), np.random.default_rng(1))).ravel()
    gauss = np.abs(np.random.default_rng(1).standard_normal(200_000))
    # Same median scale, far longer tail than a Gaussian.
    assert 0.3 < np.median(steps) < 1.0
    assert np.quantile(steps, 0.999) > 5 * np.quantile(gauss, 0.999)
