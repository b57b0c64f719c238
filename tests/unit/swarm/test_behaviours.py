"""Each behaviour changes the dynamics the way behaviours.py documents.

Medians over 5 seeds on 10-D Sphere (40 particles, 60 iterations), so one
unlucky seed cannot flip an ordering.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from agentmesh.server.swarm.engine import Behaviour, SwarmConfig, SwarmOptimizer
from agentmesh.server.swarm.engine.arrays import FloatArray
from agentmesh.server.swarm.engine.behaviours import migration_goal
from agentmesh.server.swarm.engine.functions import sphere

SEEDS = range(5)
ITERATIONS = 60


@dataclass(frozen=True)
class Run:
    spread: float  # IterationStats.spread after ITERATIONS
    polarisation: float  # mean ||sum v|| / sum ||v|| over iterations 6..60
    centroid: FloatArray  # (d,) mean position after ITERATIONS
    optimizer: SwarmOptimizer


@functools.cache
def _runs(behaviour: Behaviour) -> tuple[Run, ...]:
    out = []
    for seed in SEEDS:
        cfg = SwarmConfig(
            n_particles=40,
            dimensions=10,
            behaviour=behaviour,
            seed=seed,
            max_iterations=10_000,
            spread_threshold=1e-12,
        )
        opt = SwarmOptimizer(cfg, fitness=sphere)
        polar = []
        for _ in range(ITERATIONS):
            st = opt.step()
            v = opt.velocities
            polar.append(np.linalg.norm(v.sum(0)) / max(np.linalg.norm(v, axis=1).sum(), 1e-300))
        out.append(Run(st.spread, float(np.mean(polar[5:])), opt.positions.mean(0), opt))
    return tuple(out)


def _median(b: Behaviour, attr: str) -> float:
    return float(np.median([getattr(r, attr) for r in _runs(b)]))


def test_spread_dispersing_above_flocking_above_clustering() -> None:
    disp = _median(Behaviour.DISPERSING, "spread")
    flock = _median(Behaviour.FLOCKING, "spread")
    clus = _median(Behaviour.CLUSTERING, "spread")
    assert disp > 2 * flock > 2 * clus


def test_flocking_aligns_velocities() -> None:
    assert _median(Behaviour.FLOCKING, "polarisation") > 1.2 * _median(
        Behaviour.SWARMING, "polarisation"
    )


def test_migrating_centroid_drifts_with_the_goal() -> None:
    lower, upper = np.full(10, -5.12), np.full(10, 5.12)
    goal = migration_goal(ITERATIONS, lower, upper, speed=0.01)
    heading = goal / np.linalg.norm(goal)

    def drift(b: Behaviour) -> float:
        return float(np.median([r.centroid @ heading for r in _runs(b)]))

    assert drift(Behaviour.MIGRATING) > 0.3
    assert abs(drift(Behaviour.SWARMING)) < 0.1


def test_migration_goal_sweeps_and_stays_inside() -> None:
    lower, upper = np.zeros(2), np.ones(2)
    goals = np.array([migration_goal(t, lower, upper, speed=0.05) for t in range(400)])
    assert np.all((goals >= 0.0) & (goals <= 1.0))
    np.testing.assert_allclose(goals[0], [0.5, 0.5])
    assert goals[:, 0].max() > 0.99 and goals[:, 0].min() < 0.01  # reaches both walls


def test_foraging_keeps_a_pheromone_field_and_every_role() -> None:
    opt = _runs(Behaviour.FORAGING)[0].optimizer
    tau = opt.pheromone
    assert tau is not None and tau.shape == (10, 32)
    # Trails concentrate where the swarm found good points (around 0).
    centre = tau[:, 14:18].mean()
    edge = np.concatenate([tau[:, :4], tau[:, -4:]], axis=1).mean()
    assert centre > 3 * edge
    assert all(c > 0 for c in opt.step().role_counts.values())
    assert _runs(Behaviour.SWARMING)[0].optimizer.pheromone is None
