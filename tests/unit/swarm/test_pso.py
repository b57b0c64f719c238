"""PSO building blocks: topology, velocity rule, clamping, boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from agentmesh.server.swarm.engine.pso import (
    BoundaryMode,
    VelocityInit,
    apply_bounds,
    clamp_velocity,
    inertia_weight,
    initial_velocities,
    neighbourhood_best,
    ring_neighbourhood,
    velocity_update,
)


def test_ring_neighbourhood_wraps_around() -> None:
    nb = ring_neighbourhood(6, 1)
    assert nb.tolist()[0] == [5, 0, 1]
    assert nb.tolist()[5] == [4, 5, 0]
    assert ring_neighbourhood(4, 3).shape == (4, 4)  # 2k+1 >= n: everyone


def test_neighbourhood_best_picks_lowest_fitness_in_ring() -> None:
    fit = np.array([5.0, 1.0, 7.0, 9.0, 0.5, 8.0])
    best = neighbourhood_best(fit, ring_neighbourhood(6, 1))
    assert best.tolist() == [1, 1, 1, 4, 4, 4]


def test_velocity_update_matches_the_formula() -> None:
    rng = np.random.default_rng(3)
    x, v, p = (rng.normal(size=(4, 3)) for _ in range(3))
    g = rng.normal(size=3)
    got = velocity_update(v, x, p, g, w=0.7, c1=1.5, c2=1.2, rng=np.random.default_rng(9))
    r = np.random.default_rng(9).random((2, 4, 3))
    want = 0.7 * v + 1.5 * r[0] * (p - x) + 1.2 * r[1] * (g - x)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)


def test_inertia_schedule() -> None:
    assert inertia_weight(10, 100, 0.7, None) == 0.7
    assert inertia_weight(0, 101, 0.9, 0.4) == pytest.approx(0.9)
    assert inertia_weight(50, 101, 0.9, 0.4) == pytest.approx(0.65)
    assert inertia_weight(100, 101, 0.9, 0.4) == pytest.approx(0.4)
    assert inertia_weight(500, 101, 0.9, 0.4) == pytest.approx(0.4)


def test_half_diff_initial_velocity_is_half_way_to_a_uniform_point() -> None:
    lower, upper = np.array([-1.0, 0.0]), np.array([1.0, 10.0])
    rng = np.random.default_rng(3)
    x = lower + rng.random((500, 2)) * (upper - lower)
    v = initial_velocities(x, lower, upper, VelocityInit.HALF_DIFF, np.random.default_rng(5))
    u = lower + np.random.default_rng(5).random((500, 2)) * (upper - lower)
    np.testing.assert_allclose(v, (u - x) / 2, rtol=0, atol=1e-15)
    assert np.all((x + v >= lower) & (x + v <= upper))
    # Toward the middle on average: particles near a wall head away from it.
    near_low = x[:, 0] < -0.5
    assert v[near_low, 0].mean() > 0.0 > v[x[:, 0] > 0.5, 0].mean()


def test_zero_initial_velocity_draws_nothing() -> None:
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    v = initial_velocities(np.ones((4, 3)), np.zeros(3), np.full(3, 2.0), VelocityInit.ZERO, rng)
    assert v.shape == (4, 3) and not v.any()
    assert rng.bit_generator.state == before


def test_clamp_velocity() -> None:
    v = np.array([[3.0, -3.0], [0.1, -0.1]])
    clamp_velocity(v, np.array([1.0, 2.0]))
    assert v.tolist() == [[1.0, -2.0], [0.1, -0.1]]


@pytest.mark.parametrize("mode", list(BoundaryMode))
def test_every_boundary_mode_lands_inside(mode: BoundaryMode) -> None:
    rng = np.random.default_rng(0)
    lower, upper = np.array([-1.0, 0.0]), np.array([1.0, 10.0])
    x = rng.uniform(-50, 50, (1000, 2))
    v = np.ones_like(x)
    inside = (x >= lower) & (x <= upper)
    apply_bounds(x, v, lower, upper, mode, rng)
    assert np.all((x >= lower) & (x <= upper))
    assert np.all(v[inside] == 1.0)  # untouched coordinates keep their velocity
    expected = {BoundaryMode.CLIP: 0.0, BoundaryMode.RANDOM: 0.0, BoundaryMode.REFLECT: -1.0}
    assert np.all(v[~inside] == expected[mode])


def test_reflect_mirrors_the_overshoot() -> None:
    x = np.array([[1.25, -1.5, 3.5]])
    v = np.zeros_like(x)
    apply_bounds(
        x, v, np.full(3, -1.0), np.full(3, 1.0), BoundaryMode.REFLECT, np.random.default_rng()
    )
    # 1.25 -> 0.75; -1.5 -> -0.5; 3.5 -> overshoot 2.5 = one full bounce + 0.5 -> -0.5
    np.testing.assert_allclose(x, [[0.75, -0.5, -0.5]])


def test_clip_is_the_absorbing_wall() -> None:
    x = np.array([[2.0, -0.5]])
    v = np.array([[1.0, 1.0]])
    apply_bounds(
        x, v, np.full(2, -1.0), np.full(2, 1.0), BoundaryMode.CLIP, np.random.default_rng()
    )
    assert x.tolist() == [[1.0, -0.5]] and v.tolist() == [[0.0, 1.0]]
