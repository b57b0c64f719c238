"""SwarmOptimizer: quality, determinism, snapshots, ask/tell contract."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from agentmesh.server.swarm.engine import (
    SNAPSHOT_FORMAT,
    Behaviour,
    BoundaryMode,
    InvalidConfigError,
    InvalidStateError,
    IterationStats,
    RoleFractions,
    SnapshotError,
    SwarmConfig,
    SwarmOptimizer,
    Topology,
    VelocityInit,
    get_benchmark,
)
from agentmesh.server.swarm.engine.functions import rastrigin, rosenbrock, sphere


def _cfg(**kw: Any) -> SwarmConfig:
    base: dict[str, Any] = {"n_particles": 30, "dimensions": 5, "seed": 11, "max_iterations": 300}
    base.update(kw)
    return SwarmConfig(**base)


def _state(opt: SwarmOptimizer) -> tuple[bytes, ...]:
    return (
        opt.positions.tobytes(),
        opt.velocities.tobytes(),
        opt.best_position.tobytes(),
        np.float64(opt.best_fitness).tobytes(),
        opt.roles.tobytes(),
    )


def _same_stats(a: IterationStats, b: IterationStats) -> bool:
    return (
        a.iteration == b.iteration
        and a.best_fitness == b.best_fitness
        and np.array_equal(a.best_position, b.best_position)
        and (a.mean_fitness == b.mean_fitness)
        and a.spread == b.spread
        and a.role_counts == b.role_counts
        and a.converged == b.converged
        and a.retired == b.retired
    )


def test_sphere_reaches_the_optimum() -> None:
    bench = get_benchmark("sphere")
    cfg = _cfg(dimensions=10, bounds=bench.bounds(), max_iterations=2000)
    st = SwarmOptimizer(cfg, fitness=bench.function).run()
    assert st.best_fitness < 1e-6
    assert np.max(np.abs(st.best_position - bench.optimum_position(10))) < 1e-3


# Measured on the reference machine (see perf/swarm/RESULTS.md), 40 particles,
# 10-D Rastrigin on [-5.12, 5.12]^10, up to 1000 iterations, seeds 0-9, with
# the default half-diff initial velocities:
#   SWARMING  best per seed 18.9 2.98 4.97 3.98 7.96 2.98 7.96 2.98 4.97 4.97
#             -> median 4.97, worst 18.9 (converges after 243-774 iterations)
#   FORAGING  median 10.9, worst 15.9
# (Zero initial velocities gave median 5.97 / worst 11.9 and 9.95 / 14.9. Over
# seeds 0-39 half-diff is no worse for SWARMING: median 4.97 both, mean 5.35
# vs 6.14, 90th percentile 7.96 vs 11.9; seed 0 is its one outlier.)
# Asserted with margin for other BLAS/CPU rounding paths.
@pytest.mark.parametrize(
    ("behaviour", "median_bound", "worst_bound"),
    [(Behaviour.SWARMING, 8.0, 21.0), (Behaviour.FORAGING, 13.0, 20.0)],
)
def test_rastrigin_10d_quality(
    behaviour: Behaviour, median_bound: float, worst_bound: float
) -> None:
    best = []
    for seed in range(10):
        cfg = SwarmConfig(
            n_particles=40, dimensions=10, behaviour=behaviour, seed=seed, max_iterations=1000
        )
        best.append(SwarmOptimizer(cfg, fitness=rastrigin).run().best_fitness)
    assert float(np.median(best)) <= median_bound
    assert max(best) <= worst_bound


def test_foraging_beats_plain_pso_in_the_rosenbrock_valley() -> None:
    bench = get_benchmark("rosenbrock")

    def median_best(b: Behaviour) -> float:
        best = []
        for seed in range(5):
            cfg = SwarmConfig(
                n_particles=40,
                dimensions=10,
                bounds=bench.bounds(),
                behaviour=b,
                seed=seed,
                max_iterations=600,
            )
            best.append(SwarmOptimizer(cfg, fitness=rosenbrock).run().best_fitness)
        return float(np.median(best))

    assert median_best(Behaviour.FORAGING) < median_best(Behaviour.SWARMING)


def test_initial_velocities_follow_the_config() -> None:
    bounds = [(-5.0, 5.0), (0.0, 1.0), (-1.0, 3.0)]
    half = SwarmOptimizer(_cfg(dimensions=3, bounds=bounds))
    zero = SwarmOptimizer(_cfg(dimensions=3, bounds=bounds, velocity_init=VelocityInit.ZERO))
    assert half.config.velocity_init is VelocityInit.HALF_DIFF  # the default
    assert np.array_equal(half.positions, zero.positions)  # drawn first, same stream
    assert not zero.velocities.any()
    lower, upper = half.config.lower, half.config.upper
    v, x = half.velocities, half.positions
    assert np.all(np.abs(v) > 0.0)
    assert np.all((x + v >= lower) & (x + v <= upper))  # first free step stays inside
    # A random heading per particle, not a velocity independent of x: the
    # target x + 2v is itself a point of the box.
    assert np.all((x + 2 * v >= lower - 1e-12) & (x + 2 * v <= upper + 1e-12))


@pytest.mark.parametrize("behaviour", list(Behaviour))
def test_same_seed_is_bit_identical(behaviour: Behaviour) -> None:
    cfg = _cfg(behaviour=behaviour, max_iterations=60)
    a = SwarmOptimizer(cfg, fitness=rastrigin)
    b = SwarmOptimizer(cfg, fitness=rastrigin)
    for _ in range(60):
        assert _same_stats(a.step(), b.step())
        assert _state(a) == _state(b)
    c = SwarmOptimizer(_cfg(behaviour=behaviour, max_iterations=60, seed=12), fitness=rastrigin)
    c.step()
    assert _state(c) != _state(SwarmOptimizer(cfg, fitness=rastrigin))


SNAPSHOT_CASES = [{"behaviour": b} for b in Behaviour] + [
    {"topology": Topology.RING, "neighbourhood_k": 1},
    {"boundary": BoundaryMode.REFLECT, "behaviour": Behaviour.FORAGING},
    {"boundary": BoundaryMode.RANDOM, "w": 0.9, "w_end": 0.4},
    {"velocity_init": VelocityInit.ZERO},
    {
        "roles": RoleFractions(soldier=0.1, nurse=0.1, forager=0.3, scout=0.2),
        "evolution": True,
        "bounds": [(-5.0, 5.0), (0.0, 1.0), (-1.0, 3.0), (2.0, 4.0), (-9.0, 9.0)],
    },
]


@pytest.mark.parametrize("kw", SNAPSHOT_CASES)
def test_snapshot_restore_continues_exactly(kw: dict[str, Any]) -> None:
    cfg = _cfg(max_iterations=200, patience=5, spread_threshold=1e-12, **kw)
    straight = SwarmOptimizer(cfg, fitness=rastrigin)
    expected = [straight.step() for _ in range(120)]

    first = SwarmOptimizer(cfg, fitness=rastrigin)
    for _ in range(50):
        first.step()
    wire = json.dumps(first.snapshot(), allow_nan=False)  # strict JSON
    resumed = SwarmOptimizer.from_snapshot(json.loads(wire), fitness=rastrigin)
    got = [resumed.step() for _ in range(70)]
    assert all(_same_stats(a, b) for a, b in zip(expected[50:], got, strict=True))
    assert _state(resumed) == _state(straight)
    assert resumed.evaluations == straight.evaluations


def test_snapshot_between_ask_and_tell() -> None:
    cfg = _cfg(behaviour=Behaviour.FORAGING)
    a = SwarmOptimizer(cfg)
    for _ in range(10):
        a.tell(sphere(a.ask()))
    pos = a.ask()
    snap = json.loads(json.dumps(a.snapshot()))
    b = SwarmOptimizer(_cfg(seed=999))
    b.restore(snap)
    assert np.array_equal(b.ask(), pos)
    assert _same_stats(a.tell(sphere(pos)), b.tell(sphere(pos)))


def test_ask_is_idempotent_and_tell_validates() -> None:
    opt = SwarmOptimizer(_cfg())
    x = opt.ask()
    assert np.array_equal(opt.ask(), x)
    assert np.all((x >= -5.12) & (x <= 5.12))
    with pytest.raises(InvalidConfigError) as e:
        opt.tell(np.zeros(29))
    assert e.value.field == "fitness"
    with pytest.raises(InvalidConfigError):
        opt.tell(np.full(30, -np.inf))
    with pytest.raises(InvalidConfigError):
        opt.tell(["a"] * 30)
    assert opt.iteration == 0 and np.array_equal(opt.ask(), x)  # unchanged


def test_nan_fitness_counts_as_worst() -> None:
    opt = SwarmOptimizer(_cfg())
    f = sphere(opt.ask())
    f[:-1] = np.nan
    st = opt.tell(f.tolist())
    assert st.best_fitness == f[-1]
    assert st.mean_fitness == f[-1]
    st = opt.tell(np.full(30, np.nan))
    assert st.best_fitness == f[-1] and st.mean_fitness == math.inf


def test_done_swarm_refuses_more_work() -> None:
    opt = SwarmOptimizer(_cfg(max_iterations=3), fitness=sphere)
    st = opt.run()
    assert st.done and st.iteration == 3 and opt.evaluations == 90
    with pytest.raises(InvalidStateError):
        opt.ask()
    with pytest.raises(InvalidStateError):
        opt.tell(np.zeros(30))
    with pytest.raises(InvalidStateError):
        opt.run()
    with pytest.raises(InvalidStateError):
        SwarmOptimizer(_cfg()).step()  # no fitness callable


def test_run_async_matches_run() -> None:
    import asyncio

    async def remote(x: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0)
        return sphere(x)

    cfg = _cfg(max_iterations=40)
    seen: list[IterationStats] = []
    a = asyncio.run(SwarmOptimizer(cfg).run_async(remote, on_iteration=seen.append))
    b = SwarmOptimizer(cfg, fitness=sphere).run()
    assert _same_stats(a, b) and len(seen) == 40


def test_seed_none_is_recorded_for_exact_restore() -> None:
    opt = SwarmOptimizer(_cfg(seed=None))
    assert opt.config.seed is not None
    assert opt.snapshot()["config"]["seed"] == opt.config.seed


def test_config_round_trip_and_validation() -> None:
    cfg = _cfg(
        bounds=[(0.0, 1.0)] * 5,
        roles=RoleFractions(scout=0.2),
        migration_direction=(1.0, 0.0, 0.0, 0.0, 0.0),
    )
    again = SwarmConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert SwarmConfig.from_dict({"behaviour": "flocking"}).behaviour is Behaviour.FLOCKING
    zero = SwarmConfig.from_dict({"velocity_init": "zero"})
    assert zero.velocity_init is VelocityInit.ZERO
    assert SwarmConfig.from_dict(zero.to_dict()) == zero
    bad: list[tuple[dict[str, Any], str]] = [
        ({"bounds": (1.0, 1.0)}, "bounds"),
        ({"bounds": [(0.0, 1.0)] * 4}, "bounds"),
        ({"n_particles": 0}, "n_particles"),
        ({"behaviour": "herding"}, "behaviour"),
        ({"pheromone_evaporation": 1.5}, "pheromone_evaporation"),
        ({"roles": RoleFractions(scout=2.0)}, "roles"),
        ({"behaviour": Behaviour.FLOCKING, "n_particles": 6000}, "n_particles"),
        ({"v_max_fraction": 0.0}, "v_max_fraction"),
        ({"velocity_init": "uniform"}, "velocity_init"),
    ]
    for kw, field in bad:
        with pytest.raises(InvalidConfigError) as e:
            _cfg(**kw)
        assert e.value.field == field
    with pytest.raises(InvalidConfigError):
        SwarmConfig.from_dict({"swarm_size": 3})


def test_restore_rejects_bad_snapshots() -> None:
    opt = SwarmOptimizer(_cfg())
    snap = opt.snapshot()
    assert snap["format"] == SNAPSHOT_FORMAT
    with pytest.raises(SnapshotError):
        SwarmOptimizer.from_snapshot({"format": "other"})
    broken = json.loads(json.dumps(snap))
    broken["state"]["positions"]["shape"] = [3, 3]
    with pytest.raises(SnapshotError):
        opt.restore(broken)
    broken = json.loads(json.dumps(snap))
    del broken["state"]["rng"]
    with pytest.raises(SnapshotError):
        opt.restore(broken)
    broken = json.loads(json.dumps(snap))
    broken["config"]["n_particles"] = -1
    with pytest.raises(SnapshotError):
        opt.restore(broken)
    assert _state(opt) == _state(SwarmOptimizer(_cfg()))  # untouched on error
