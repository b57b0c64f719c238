"""Evolution: exhausted particles retire, good ones reproduce, n constant."""

from __future__ import annotations

import numpy as np

from agentmesh.server.swarm.engine import Behaviour, SwarmConfig, SwarmOptimizer
from agentmesh.server.swarm.engine.evolution import (
    EvolutionParams,
    offspring_positions,
    plan_reproduction,
)
from agentmesh.server.swarm.engine.functions import rastrigin


def test_plan_retires_most_stagnant_first_up_to_the_cap() -> None:
    stagnation = np.array([0, 9, 30, 12, 50, 10, 0, 0, 0, 0], dtype=np.int64)
    params = EvolutionParams(patience=10, max_retire_fraction=0.2)
    plan = plan_reproduction(
        stagnation,
        np.array([0, 6], dtype=np.int64),
        np.array([4], dtype=np.int64),
        params,
        np.random.default_rng(0),
    )
    # Exhausted: 2, 3, 4, 5; 4 is protected (the Queen); cap 2 of 10.
    assert plan.retired.tolist() == [2, 3]
    assert set(plan.parents.tolist()) <= {0, 6}


def test_nobody_retires_without_parents_or_exhaustion() -> None:
    params = EvolutionParams(patience=5)
    rng = np.random.default_rng(0)
    none = plan_reproduction(
        np.zeros(4, dtype=np.int64), np.array([0]), np.array([], dtype=np.int64), params, rng
    )
    assert none.retired.size == 0
    only_parent_exhausted = plan_reproduction(
        np.array([9, 0, 0, 0]), np.array([0]), np.array([], dtype=np.int64), params, rng
    )
    assert only_parent_exhausted.retired.size == 0


def test_offspring_are_mutated_clones() -> None:
    parents = np.array([[1.0, 2.0]] * 5000)
    kids = offspring_positions(parents, np.array([0.5, 0.0]), np.random.default_rng(1))
    assert np.all(kids[:, 1] == 2.0)
    assert abs(kids[:, 0].std() - 0.5) < 0.02


def test_in_a_run_population_is_constant_and_exhausted_particles_are_replaced() -> None:
    cfg = SwarmConfig(
        n_particles=30,
        dimensions=6,
        behaviour=Behaviour.FORAGING,
        seed=4,
        patience=5,
        max_iterations=300,
        spread_threshold=1e-12,
    )
    opt = SwarmOptimizer(cfg, fitness=rastrigin)
    retired = 0
    for _ in range(80):
        stagnation_before = opt._stagnation.copy()
        pbest_before = opt._pbest_f.copy()
        st = opt.step()
        assert opt.positions.shape == (30, 6)
        assert sum(st.role_counts.values()) == 30
        retired += st.retired
        replaced = (opt._stagnation == 0) & (stagnation_before + 1 >= cfg.patience)
        # A replaced particle carries a parent's personal best, which is at
        # least as good as the one it had (only particles ranked below every
        # parent retire).
        assert np.all(opt._pbest_f[replaced] <= pbest_before[replaced])
        assert st.best_fitness == opt._pbest_f.min()  # the best is never lost
    assert retired > 0


def test_evolution_off_in_plain_pso() -> None:
    cfg = SwarmConfig(n_particles=20, dimensions=4, seed=0, patience=2, max_iterations=60)
    st = SwarmOptimizer(cfg, fitness=rastrigin).run()
    assert not cfg.evolution_enabled and st.retired == 0
