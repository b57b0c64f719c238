"""Reynolds boids steering: separation, alignment, cohesion.

Reynolds 1987 ("Flocks, herds and schools: a distributed behavioral model",
SIGGRAPH) defines three local rules over the neighbours ``N_i`` of particle
``i`` (here: every other particle within Euclidean ``radius``):

* cohesion    ``coh_i = mean_{j∈N_i} x_j - x_i``  (steer to the local centre)
* alignment   ``ali_i = mean_{j∈N_i} v_j - v_i``  (match local heading)
* separation  ``sep_i = mean_{j∈N_i} (x_i - x_j)·(radius/‖x_i - x_j‖ - 1)``
  (steer away; the linear fall-off kernel is zero at ``radius`` and its
  magnitude never exceeds ``radius``, so close pairs cannot produce unbounded
  kicks as the classic ``1/‖·‖²`` weighting would)

A particle without neighbours gets zero from all three. The engine adds
``separation·sep + alignment·ali + cohesion·coh`` to the PSO velocity
(``Δt = 1``).

Cost: O(n²·d) time through pairwise distances (Gram form, done as mat-muls)
and O(block·n) memory, because rows are processed in blocks. It is meant for
swarms of at most :data:`MAX_BOIDS_PARTICLES` particles; the optimizer refuses
larger swarms when a boids weight is non-zero.
"""

from __future__ import annotations

import numpy as np

from .arrays import FloatArray

__all__ = ["MAX_BOIDS_PARTICLES", "boids_acceleration"]

MAX_BOIDS_PARTICLES = 5000
"""Largest swarm for which boids forces are computed (O(n²) per iteration:
about 25 M pair distances at the cap)."""

_BLOCK_ROWS = 512


def boids_acceleration(
    positions: FloatArray,
    velocities: FloatArray,
    *,
    radius: float,
    separation: float,
    alignment: float,
    cohesion: float,
) -> FloatArray:
    """Weighted sum of Reynolds' three steering rules for every particle.

    Args:
        positions: Shape ``(n, d)``.
        velocities: Shape ``(n, d)``, position units per iteration.
        radius: Neighbour radius in position units (> 0).
        separation: Weight of the separation rule (>= 0).
        alignment: Weight of the alignment rule (>= 0).
        cohesion: Weight of the cohesion rule (>= 0).

    Returns:
        Shape ``(n, d)``: velocity change per iteration. All zeros when every
        weight is zero (no distances are computed then).

    Raises:
        ValueError: If ``radius <= 0`` or ``n > MAX_BOIDS_PARTICLES``.
    """
    n, d = positions.shape
    acc = np.zeros((n, d))
    if separation == 0.0 and alignment == 0.0 and cohesion == 0.0:
        return acc
    if radius <= 0.0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if n > MAX_BOIDS_PARTICLES:
        raise ValueError(f"boids limited to {MAX_BOIDS_PARTICLES} particles, got {n}")
    sq = np.einsum("ij,ij->i", positions, positions)
    r2 = radius * radius
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        xb = positions[start:stop]
        # ‖a-b‖² = ‖a‖² + ‖b‖² - 2a·b; clipped because rounding can go < 0.
        dist2 = sq[start:stop, None] + sq[None, :] - 2.0 * (xb @ positions.T)
        np.maximum(dist2, 0.0, out=dist2)
        near = dist2 <= r2
        near[np.arange(stop - start), np.arange(start, stop)] = False  # not self
        count = near.sum(axis=1)
        has = count > 0
        inv = np.zeros(stop - start)
        inv[has] = 1.0 / count[has]
        mask = near.astype(np.float64)
        block = acc[start:stop]
        if cohesion != 0.0:
            coh = (mask @ positions) * inv[:, None] - xb
            block += cohesion * (coh * has[:, None])
        if alignment != 0.0:
            ali = (mask @ velocities) * inv[:, None] - velocities[start:stop]
            block += alignment * (ali * has[:, None])
        if separation != 0.0:
            dist = np.sqrt(dist2, out=dist2)
            # Coincident particles (dist 0) have no defined direction: weight 0.
            weight = np.zeros_like(dist)
            pos = near & (dist > 0.0)
            weight[pos] = radius / dist[pos] - 1.0
            sep = xb * weight.sum(axis=1)[:, None] - weight @ positions
            block += separation * (sep * inv[:, None])
    return acc
