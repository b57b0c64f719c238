"""Reynolds' rules: direction and magnitude of each, neighbour radius, cap."""

from __future__ import annotations

import numpy as np
import pytest

from agentmesh.server.swarm.engine.arrays import FloatArray
from agentmesh.server.swarm.engine.boids import MAX_BOIDS_PARTICLES, boids_acceleration


def _acc(
    x: list[list[float]],
    v: list[list[float]] | None = None,
    *,
    radius: float = 2.0,
    separation: float = 0.0,
    alignment: float = 0.0,
    cohesion: float = 0.0,
) -> FloatArray:
    xa = np.asarray(x, dtype=np.float64)
    va = np.zeros_like(xa) if v is None else np.asarray(v, dtype=np.float64)
    return boids_acceleration(
        xa, va, radius=radius, separation=separation, alignment=alignment, cohesion=cohesion
    )


def test_cohesion_steers_to_the_neighbours_centre() -> None:
    acc = _acc([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], cohesion=1.0)
    # particle 0: centre of its two neighbours is (0.5, 0.5)
    np.testing.assert_allclose(acc[0], [0.5, 0.5])


def test_alignment_matches_the_neighbours_heading() -> None:
    acc = _acc([[0.0, 0.0], [1.0, 0.0]], v=[[0.0, 0.0], [2.0, -2.0]], alignment=0.5)
    np.testing.assert_allclose(acc, [[1.0, -1.0], [-1.0, 1.0]])


def test_separation_pushes_apart_with_linear_falloff() -> None:
    acc = _acc([[0.0, 0.0], [0.5, 0.0]], separation=1.0, radius=2.0)
    # (x_i - x_j) * (r/d - 1) = (-0.5, 0) * (4 - 1)
    np.testing.assert_allclose(acc, [[-1.5, 0.0], [1.5, 0.0]])
    assert np.linalg.norm(acc[0]) <= 2.0


def test_no_neighbours_within_radius_means_no_force() -> None:
    acc = _acc([[0.0, 0.0], [5.0, 0.0]], separation=1.0, alignment=1.0, cohesion=1.0, radius=2.0)
    assert np.all(acc == 0.0)


def test_coincident_particles_do_not_blow_up() -> None:
    acc = _acc([[1.0, 1.0], [1.0, 1.0]], separation=1.0)
    assert np.all(np.isfinite(acc))


def test_blocks_give_the_same_result_as_one_pass() -> None:
    # 1200 particles spans three row blocks of 512.
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 10, (1200, 3))
    v = rng.normal(size=(1200, 3))
    acc = boids_acceleration(x, v, radius=1.5, separation=0.3, alignment=0.2, cohesion=0.1)
    i = 1100
    d = np.linalg.norm(x - x[i], axis=1)
    nb = (d <= 1.5) & (np.arange(1200) != i)
    coh = x[nb].mean(0) - x[i]
    ali = v[nb].mean(0) - v[i]
    sep = ((x[i] - x[nb]) * (1.5 / d[nb] - 1.0)[:, None]).mean(0)
    np.testing.assert_allclose(acc[i], 0.3 * sep + 0.2 * ali + 0.1 * coh, rtol=1e-9, atol=1e-12)


def test_cap_on_swarm_size() -> None:
    x = np.zeros((MAX_BOIDS_PARTICLES + 1, 2))
    with pytest.raises(ValueError, match="limited"):
        boids_acceleration(x, x, radius=1.0, separation=1.0, alignment=0.0, cohesion=0.0)
    # With all weights zero nothing is computed, so no cap applies.
    assert not boids_acceleration(
        x, x, radius=1.0, separation=0.0, alignment=0.0, cohesion=0.0
    ).any()
