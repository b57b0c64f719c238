"""Convergence: the relative-improvement and spread tests, and in a real run."""

from __future__ import annotations

import math

import numpy as np

from agentmesh.server.swarm.engine import SwarmConfig, SwarmOptimizer
from agentmesh.server.swarm.engine.convergence import (
    ConvergenceCriterion,
    ConvergenceMonitor,
    normalised_spread,
    relative_improvement,
)
from agentmesh.server.swarm.engine.functions import sphere


def test_relative_improvement_is_relative_above_one_and_absolute_below() -> None:
    assert relative_improvement(200.0, 100.0) == 0.5
    assert relative_improvement(1e-3, 0.0) == 1e-3
    assert relative_improvement(-10.0, -20.0) == 0.5
    assert relative_improvement(math.inf, 5.0) == math.inf


def test_spread_is_mean_distance_to_centroid_over_diagonal() -> None:
    x = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert normalised_spread(x, diagonal=4.0) == 0.25
    assert normalised_spread(np.ones((5, 3)), diagonal=1.0) == 0.0


def test_monitor_needs_a_full_window_then_both_conditions() -> None:
    mon = ConvergenceMonitor(ConvergenceCriterion(threshold=1e-6, window=3, spread_threshold=0.01))
    assert [mon.update(1.0, 0.0) for _ in range(3)] == [False] * 3  # t <= W
    assert mon.update(1.0, 0.0) is True  # flat best, tiny spread
    assert mon.update(1.0, 0.5) is False  # spread too large
    mon2 = ConvergenceMonitor(ConvergenceCriterion(threshold=1e-6, window=3, spread_threshold=0.01))
    for g in (10.0, 9.0, 8.0, 7.0):
        converged = mon2.update(g, 0.0)
    assert converged is False and mon2.last_relative_improvement == 0.3


def test_sphere_run_converges_and_is_not_converged_early() -> None:
    cfg = SwarmConfig(n_particles=30, dimensions=5, seed=3, max_iterations=2000)
    opt = SwarmOptimizer(cfg, fitness=sphere)
    history = []
    while not opt.done:
        history.append(opt.step())
    last = history[-1]
    assert last.converged and opt.converged and last.done
    assert last.iteration < cfg.max_iterations
    assert not any(s.converged for s in history[:-1])
    assert all(s.relative_improvement == math.inf for s in history[: cfg.convergence_window])
    assert last.relative_improvement < cfg.convergence_threshold
    assert last.spread < cfg.spread_threshold
    # Early on the swarm is spread out and still improving.
    assert history[10].spread > 10 * cfg.spread_threshold


def test_spread_threshold_above_one_ignores_the_spread() -> None:
    cfg = SwarmConfig(
        n_particles=20,
        dimensions=2,
        seed=1,
        spread_threshold=2.0,
        convergence_threshold=1e-3,
        convergence_window=5,
    )
    st = SwarmOptimizer(cfg, fitness=lambda x: np.zeros(x.shape[0])).run()
    assert st.converged and st.iteration == cfg.convergence_window + 1
