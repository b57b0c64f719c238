"""Particle swarm optimisation update rules, fully vectorised.

Velocity rule (Kennedy & Eberhart 1995, with the inertia weight of Shi &
Eberhart 1998)::

    v_i ← w·v_i + c1·r1 ⊙ (p_i - x_i) + c2·r2 ⊙ (s_i - x_i)
    x_i ← x_i + v_i

``p_i`` is the particle's personal best, ``s_i`` the social attractor (the
global best for :attr:`Topology.GLOBAL`, the best personal best among the ring
neighbours for :attr:`Topology.RING`, Kennedy 1999), and ``r1, r2 ~ U[0, 1)``
are drawn independently per particle and per dimension.

Defaults ``w = 0.7298, c1 = c2 = 1.49618`` are the constriction coefficients of
Clerc & Kennedy 2002 (χ = 0.7298 for φ = 4.1) rewritten in inertia form, as
recommended by Eberhart & Shi 2000. Velocity clamping to ``±v_max`` per
dimension follows Eberhart, Simpson & Dobbins 1996; boundary handling follows
Robinson & Rahmat-Samii 2004 ("absorbing" and "reflecting" walls) and the
random re-initialisation strategy common in PSO libraries.

Initial velocities (:class:`VelocityInit`) are either zero (Engelbrecht 2012)
or the "half-diff" rule of Standard PSO 2006 (Clerc 2006), analysed by Helwig
& Wanka 2008::

    v_i(0) = (u_i - x_i(0)) / 2,   u_i ~ U[lower, upper]^d

so every particle starts moving towards a random point of the box and its
first free step ``x + v`` (the midpoint of two points of the box) stays
inside: it explores from the start without "roaming" out of the box, which
is what makes velocities drawn independently of ``x`` (pyswarms draws them
uniformly within the clamp) wasteful (Helwig & Wanka 2008; Engelbrecht 2012).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from .arrays import FloatArray, IntArray

__all__ = [
    "DEFAULT_C1",
    "DEFAULT_C2",
    "DEFAULT_W",
    "BoundaryMode",
    "Topology",
    "VelocityInit",
    "apply_bounds",
    "clamp_velocity",
    "inertia_weight",
    "initial_velocities",
    "neighbourhood_best",
    "ring_neighbourhood",
    "velocity_update",
]

DEFAULT_W = 0.7298
"""Inertia weight; Clerc & Kennedy 2002 constriction factor χ for φ = 4.1."""

DEFAULT_C1 = 1.49618
"""Cognitive coefficient; χ·φ/2 (Clerc & Kennedy 2002, Eberhart & Shi 2000)."""

DEFAULT_C2 = 1.49618
"""Social coefficient; χ·φ/2 (Clerc & Kennedy 2002, Eberhart & Shi 2000)."""


class Topology(StrEnum):
    """Who informs whom (Kennedy 1999; Kennedy & Mendes 2002)."""

    GLOBAL = "global"
    """Fully connected ("gbest"): every particle follows the global best."""

    RING = "ring"
    """Ring lattice ("lbest"): particle ``i`` follows the best personal best
    among indices ``i-k … i+k`` (mod n). Slower, more exploratory."""


class BoundaryMode(StrEnum):
    """What happens to a coordinate that leaves ``[lower, upper]``."""

    CLIP = "clip"
    """Absorbing wall: clip to the bound and zero that velocity component."""

    REFLECT = "reflect"
    """Reflecting wall: mirror the overshoot back inside (repeatedly, so any
    overshoot lands inside) and negate that velocity component."""

    RANDOM = "random"
    """Re-draw the coordinate uniformly in ``[lower, upper]`` and zero that
    velocity component."""


class VelocityInit(StrEnum):
    """How particles' velocities start (positions start uniform in the box)."""

    ZERO = "zero"
    """``v(0) = 0`` (Engelbrecht 2012, "Particle swarm optimization: velocity
    initialization", IEEE CEC): the first move is pure attraction to the
    initial global best, so the swarm contracts from the start."""

    HALF_DIFF = "half_diff"
    """``v(0) = (U[lower, upper] - x(0)) / 2`` (Standard PSO 2006, Clerc 2006;
    Helwig & Wanka 2008): a random heading inside the box. Not clamped:
    ``v_max`` bounds the velocities the update rule produces, and this one
    cannot carry a particle out of the box. The default: in the side-by-side
    with pyswarms (``perf/swarm/bench_pso.py``) it found clearly better
    Rastrigin minima than zero or clamp-uniform starts, and no worse
    Rosenbrock or Sphere ones."""


def initial_velocities(
    positions: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    mode: VelocityInit,
    rng: np.random.Generator,
) -> FloatArray:
    """Velocities at iteration 0 (see :class:`VelocityInit` for the rules).

    Args:
        positions: Shape ``(n, d)``, the initial positions, inside the box.
        lower: Shape ``(d,)``.
        upper: Shape ``(d,)``.
        mode: The rule.
        rng: Random generator; :attr:`VelocityInit.HALF_DIFF` consumes
            ``n·d`` uniforms, :attr:`VelocityInit.ZERO` none.

    Returns:
        Shape ``(n, d)``, position units per iteration (a fresh array).
    """
    if mode is VelocityInit.ZERO:
        return np.zeros_like(positions)
    target = lower + rng.random(positions.shape) * (upper - lower)
    target -= positions
    target *= 0.5
    return target


def inertia_weight(
    iteration: int, max_iterations: int, w_start: float, w_end: float | None
) -> float:
    """Inertia weight for an iteration.

    Constant ``w_start`` when ``w_end`` is None; otherwise the linear decrease
    of Shi & Eberhart 1999 ("Empirical study of particle swarm optimization"),
    typically 0.9 → 0.4::

        w(t) = w_start - (w_start - w_end) · t / max(T - 1, 1)

    Args:
        iteration: Zero-based iteration index ``t`` whose move is computed.
        max_iterations: Iteration budget ``T``.
        w_start: Initial (or constant) weight.
        w_end: Final weight, or None for a constant weight.

    Returns:
        The weight, clamped to the segment between ``w_start`` and ``w_end``.
    """
    if w_end is None:
        return w_start
    frac = min(max(iteration / max(max_iterations - 1, 1), 0.0), 1.0)
    return w_start - (w_start - w_end) * frac


def ring_neighbourhood(n: int, k: int) -> IntArray:
    """Index table of the ring (lbest) topology.

    Args:
        n: Number of particles (>= 1).
        k: Neighbours on each side (>= 1). The neighbourhood of ``i`` is
            ``{i-k, …, i, …, i+k} mod n``; with ``2k+1 >= n`` it is everyone.

    Returns:
        Shape ``(n, m)`` with ``m = min(2k+1, n)``; row ``i`` lists the
        neighbourhood of particle ``i``.
    """
    m = min(2 * k + 1, n)
    if m == n:
        return np.tile(np.arange(n, dtype=np.int64), (n, 1))
    offsets = np.arange(-k, k + 1, dtype=np.int64)
    out: IntArray = (np.arange(n, dtype=np.int64)[:, None] + offsets[None, :]) % n
    return out


def neighbourhood_best(pbest_fitness: FloatArray, neighbours: IntArray) -> IntArray:
    """Index of the best personal best in each neighbourhood.

    Args:
        pbest_fitness: Shape ``(n,)``; lower is better.
        neighbours: Shape ``(n, m)`` from :func:`ring_neighbourhood`.

    Returns:
        Shape ``(n,)``: for each particle the index (into ``0..n-1``) of its
        best-informed neighbour. Ties go to the first in the row.
    """
    local = pbest_fitness[neighbours]
    pick = np.argmin(local, axis=1)
    out: IntArray = neighbours[np.arange(neighbours.shape[0]), pick]
    return out


def velocity_update(
    velocities: FloatArray,
    positions: FloatArray,
    pbest_positions: FloatArray,
    social_positions: FloatArray,
    *,
    w: float,
    c1: float,
    c2: float,
    rng: np.random.Generator,
) -> FloatArray:
    """Inertia-weight PSO velocity (Kennedy & Eberhart 1995; Shi & Eberhart 1998).

    ``v' = w·v + c1·r1 ⊙ (p - x) + c2·r2 ⊙ (s - x)`` with
    ``r1, r2 ~ U[0, 1)^{nxd}`` drawn in one call (so the random stream is the
    same whatever the role mix).

    Args:
        velocities: Shape ``(n, d)``, position units per iteration.
        positions: Shape ``(n, d)``.
        pbest_positions: Shape ``(n, d)``.
        social_positions: Shape ``(n, d)``, or ``(d,)`` for a single global
            attractor (broadcast).
        w: Inertia weight.
        c1: Cognitive acceleration coefficient.
        c2: Social acceleration coefficient.
        rng: Random generator; consumes ``2·n·d`` uniforms.

    Returns:
        New velocities, shape ``(n, d)`` (a fresh array; inputs untouched).
    """
    r = rng.random((2, *positions.shape))
    # In-place chain over the random block: fewer (n, d) temporaries matter
    # on this hot path (large ones cost page faults, see functions.py).
    cognitive = r[0]
    social = r[1]
    diff = np.subtract(pbest_positions, positions)
    diff *= c1
    cognitive *= diff
    np.subtract(social_positions, positions, out=diff)
    diff *= c2
    social *= diff
    out: FloatArray = velocities * w
    out += cognitive
    out += social
    return out


def clamp_velocity(velocities: FloatArray, v_max: FloatArray | None) -> None:
    """Clamps each velocity component to ``[-v_max_j, v_max_j]`` in place.

    Eberhart, Simpson & Dobbins 1996; ``v_max`` is usually a fraction of the
    search range per dimension.

    Args:
        velocities: Shape ``(n, d)``, modified in place.
        v_max: Shape ``(d,)``, positive; None disables clamping.
    """
    if v_max is not None:
        # minimum/maximum in place: np.clip costs several times more on small
        # arrays because of its Python-level argument handling.
        np.minimum(velocities, v_max, out=velocities)
        np.maximum(velocities, -v_max, out=velocities)


def apply_bounds(
    positions: FloatArray,
    velocities: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    mode: BoundaryMode,
    rng: np.random.Generator,
) -> None:
    """Brings every coordinate back into ``[lower, upper]``, in place.

    Robinson & Rahmat-Samii 2004: :attr:`BoundaryMode.CLIP` is the absorbing
    wall, :attr:`BoundaryMode.REFLECT` the reflecting wall;
    :attr:`BoundaryMode.RANDOM` re-samples the offending coordinates.

    The reflection is the triangle wave ``l + R - |((x - l) mod 2R) - R|``
    with ``R = u - l``, so an overshoot of any size lands inside.

    Args:
        positions: Shape ``(n, d)``, modified in place.
        velocities: Shape ``(n, d)``, modified in place (components of
            out-of-bounds coordinates are zeroed or negated, see the modes).
        lower: Shape ``(d,)``.
        upper: Shape ``(d,)``.
        mode: Boundary strategy.
        rng: Random generator; only :attr:`BoundaryMode.RANDOM` draws from it
            (one uniform per offending coordinate).
    """
    out = (positions < lower) | (positions > upper)
    if not out.any():
        return
    if mode is BoundaryMode.CLIP:
        np.clip(positions, lower, upper, out=positions)
        velocities[out] = 0.0
    elif mode is BoundaryMode.REFLECT:
        span = upper - lower
        folded = np.mod(positions - lower, 2.0 * span)
        reflected = lower + span - np.abs(folded - span)
        positions[out] = reflected[out]
        velocities[out] = -velocities[out]
    else:
        rows, cols = np.nonzero(out)
        positions[rows, cols] = lower[cols] + rng.random(rows.size) * (upper[cols] - lower[cols])
        velocities[out] = 0.0
