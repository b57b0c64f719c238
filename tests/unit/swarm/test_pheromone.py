"""Pheromone: the Ant System update rule, deposits, biased sampling."""

from __future__ import annotations

import numpy as np
import pytest

from agentmesh.server.swarm.engine import InvalidConfigError
from agentmesh.server.swarm.engine.pheromone import (
    PheromoneGrid,
    evaporate_deposit,
    fitness_quality,
    random_proportional,
)


def test_evaporation_and_deposit_follow_tau_rule() -> None:
    tau = np.array([1.0, 2.0, 4.0])
    out = evaporate_deposit(tau, np.array([0.0, 0.5, 0.0]), 0.25)
    np.testing.assert_allclose(out, [0.75, 2.0, 3.0])


def test_pure_evaporation_decays_geometrically() -> None:
    tau = np.array([8.0])
    for _ in range(10):
        tau = evaporate_deposit(tau, np.zeros(1), 0.1)
    assert tau[0] == pytest.approx(8.0 * 0.9**10, rel=1e-14)


def test_constant_deposit_converges_to_deposit_over_rho() -> None:
    tau = np.array([0.0])
    for _ in range(500):
        tau = evaporate_deposit(tau, np.array([0.3]), 0.1)
    assert tau[0] == pytest.approx(3.0, rel=1e-12)


def test_random_proportional_rule() -> None:
    p = random_proportional(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 0.5]), 1.0, 2.0)
    w = np.array([1.0, 2.0, 4.0 * 0.25])
    np.testing.assert_allclose(p, w / w.sum())
    np.testing.assert_allclose(random_proportional(np.zeros(4), None, 1.0, 1.0), 0.25)


def test_fitness_quality_is_min_max_scaled() -> None:
    q = fitness_quality(np.array([3.0, 1.0, 5.0, np.inf]))
    np.testing.assert_allclose(q, [0.5, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(fitness_quality(np.array([2.0, 2.0])), [1.0, 1.0])


def test_grid_update_evaporates_everything_and_deposits_where_particles_are() -> None:
    g = PheromoneGrid(np.zeros(2), np.ones(2), bins=4, rho=0.5, tau0=1.0, tau_min=0.0)
    x = np.array([[0.1, 0.9], [0.6, 0.9]])
    g.update(x, np.array([0.0, 1.0]))  # first is best (q=1), second worst (q=0)
    want = np.full((2, 4), 0.5)
    want[0, 0] += 0.5  # q=1 / n=2 in dim 0, cell 0
    want[1, 3] += 0.5  # and in dim 1, cell 3
    np.testing.assert_allclose(g.tau, want)


def test_tau_floor() -> None:
    g = PheromoneGrid(np.zeros(1), np.ones(1), bins=2, rho=1.0, tau_min=0.01)
    g.update(np.array([[0.1]]), np.array([1.0]))
    np.testing.assert_allclose(g.tau, [[1.0, 0.01]])


def test_sampling_is_biased_toward_strong_trails() -> None:
    g = PheromoneGrid(np.array([0.0, -1.0]), np.array([1.0, 1.0]), bins=10, rho=0.1)
    g.tau[:] = 1.0
    g.tau[0, 7] = 30.0
    g.tau[1, 2] = 30.0
    s = g.sample(20_000, np.random.default_rng(5))
    assert np.all((s >= [0.0, -1.0]) & (s < [1.0, 1.0]))
    cells = g.cell_index(s)
    share = np.mean(cells == [7, 2], axis=0)
    np.testing.assert_allclose(share, 30 / 39, atol=0.02)


def test_grid_validates_arguments() -> None:
    with pytest.raises(InvalidConfigError) as e:
        PheromoneGrid(np.zeros(1), np.ones(1), bins=8, rho=0.0)
    assert e.value.field == "pheromone_evaporation"
