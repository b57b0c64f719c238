"""Pheromone trails: evaporation, deposit, and pheromone-biased sampling.

Ant-colony rules (Dorigo, Maniezzo & Colorni 1996, "Ant System"; Dorigo &
Stützle 2004, *Ant Colony Optimization*):

* update          ``τ ← (1 - rho)·τ + Δτ``  (evaporation rate ``rho ∈ (0, 1]``)
* random-proportional choice  ``P(j) = τ_j^alpha η_j^β / Σ_k τ_k^alpha η_k^β``
* a floor ``τ_min`` keeps every option alive (MAX-MIN Ant System, Stützle &
  Hoos 2000).

:class:`PheromoneGrid` is the continuous-space field used by Forager particles.
A full grid over ``d`` dimensions would need ``bins^d`` cells, so the field is
factorised: one trail of ``bins`` cells per dimension (shape ``(d, bins)``),
and a sample draws each coordinate independently from its dimension's trail.
This is the product-of-marginals model used by estimation-of-distribution
algorithms such as PBIL (Baluja 1994); it loses correlations between
dimensions but costs O(n·d) per update instead of O(bins^d).
"""

from __future__ import annotations

import numpy as np

from .arrays import FloatArray, IntArray
from .errors import InvalidConfigError

__all__ = [
    "PheromoneGrid",
    "evaporate_deposit",
    "fitness_quality",
    "random_proportional",
]


def evaporate_deposit(tau: FloatArray, deposit: FloatArray, rho: float) -> FloatArray:
    """Ant System trail update ``τ ← (1 - rho)·τ + Δτ`` (Dorigo et al. 1996).

    Args:
        tau: Trail intensities, any shape, >= 0.
        deposit: ``Δτ``, broadcastable to ``tau``, >= 0.
        rho: Evaporation rate in ``[0, 1]``.

    Returns:
        New array of ``tau``'s shape.
    """
    out: FloatArray = (1.0 - rho) * tau + deposit
    return out


def random_proportional(
    tau: FloatArray, eta: FloatArray | None, alpha: float, beta: float
) -> FloatArray:
    """Choice probabilities ``τ^alpha η^β / Σ τ^alpha η^β`` (Dorigo et al. 1996).

    Args:
        tau: Shape ``(..., k)`` trail intensities, >= 0.
        eta: Heuristic desirability broadcastable to ``tau`` (>= 0), or None
            for ``η ≡ 1``.
        alpha: Trail exponent ``alpha`` (>= 0).
        beta: Heuristic exponent ``β`` (>= 0).

    Returns:
        Probabilities over the last axis, same shape as ``tau``. A row whose
        weights are all zero becomes uniform.
    """
    weight = tau if alpha == 1.0 else np.power(tau, alpha)
    if eta is not None and beta != 0.0:
        weight = weight * (eta if beta == 1.0 else np.power(eta, beta))
    total = weight.sum(axis=-1, keepdims=True)
    k = tau.shape[-1]
    out: FloatArray = np.where(total > 0.0, weight / np.where(total > 0, total, 1.0), 1.0 / k)
    return out


def fitness_quality(fitness: FloatArray) -> FloatArray:
    """Min-max normalised quality of a minimisation batch.

    ``q_i = (f_max - f_i) / (f_max - f_min)`` over the finite values: 1 for the
    best, 0 for the worst. Non-finite fitness gets 0. A batch with a single
    distinct finite value gets 1 everywhere it is finite. Scale-free, so the
    deposit does not depend on the objective's units.

    Args:
        fitness: Shape ``(n,)``; lower is better.

    Returns:
        Shape ``(n,)`` in ``[0, 1]``.
    """
    finite = np.isfinite(fitness)
    q = np.zeros(fitness.shape)
    if not finite.any():
        return q
    vals = fitness[finite]
    lo = float(vals.min())
    hi = float(vals.max())
    q[finite] = 1.0 if hi == lo else (hi - vals) / (hi - lo)
    return q


class PheromoneGrid:
    """Factorised pheromone field over a box, shape ``(d, bins)``.

    Cell ``b`` of dimension ``j`` covers
    ``[lower_j + b·w_j, lower_j + (b+1)·w_j)`` with ``w_j = (upper_j -
    lower_j)/bins``. Units of ``τ`` are "quality per iteration" (deposits are
    qualities in ``[0, 1]`` times ``deposit_scale``); only ratios matter for
    sampling.

    Attributes:
        tau: Shape ``(d, bins)``, the trails. Read/write (snapshots set it).
    """

    def __init__(
        self,
        lower: FloatArray,
        upper: FloatArray,
        *,
        bins: int,
        rho: float,
        alpha: float = 1.0,
        tau0: float = 1.0,
        tau_min: float = 1e-3,
        deposit_scale: float = 1.0,
    ) -> None:
        """Creates a uniform field ``τ ≡ tau0``.

        Args:
            lower: Shape ``(d,)`` box lower bounds.
            upper: Shape ``(d,)`` box upper bounds.
            bins: Cells per dimension (>= 2).
            rho: Evaporation rate per update in ``(0, 1]``.
            alpha: Exponent on ``τ`` when sampling (>= 0).
            tau0: Initial intensity (> 0).
            tau_min: Floor applied after every update (>= 0; MAX-MIN AS).
            deposit_scale: Multiplier on per-particle quality deposits.

        Raises:
            InvalidConfigError: If an argument is out of range.
        """
        if bins < 2:
            raise InvalidConfigError("pheromone_bins", f"must be >= 2, got {bins}")
        if not 0.0 < rho <= 1.0:
            raise InvalidConfigError("pheromone_evaporation", f"must be in (0, 1], got {rho}")
        if alpha < 0.0:
            raise InvalidConfigError("pheromone_alpha", f"must be >= 0, got {alpha}")
        if tau0 <= 0.0 or tau_min < 0.0:
            raise InvalidConfigError("tau0", "tau0 must be > 0 and tau_min >= 0")
        self.lower = lower.copy()
        self.upper = upper.copy()
        self.bins = bins
        self.rho = rho
        self.alpha = alpha
        self.tau_min = tau_min
        self.deposit_scale = deposit_scale
        self._width = (upper - lower) / bins
        self.tau: FloatArray = np.full((lower.size, bins), tau0)

    def cell_index(self, positions: FloatArray) -> IntArray:
        """Cell of every coordinate.

        Args:
            positions: Shape ``(n, d)``; coordinates outside the box go to the
                edge cells.

        Returns:
            Shape ``(n, d)``, values in ``[0, bins)``.
        """
        idx = np.floor((positions - self.lower) / self._width)
        out: IntArray = np.clip(idx, 0, self.bins - 1).astype(np.int64)
        return out

    def deposits(self, positions: FloatArray, fitness: FloatArray) -> FloatArray:
        """``Δτ`` of one batch: each particle adds ``deposit_scale·q_i / n``
        to the cell of each of its coordinates, ``q`` from
        :func:`fitness_quality`. Dividing by ``n`` keeps the steady state
        independent of the swarm size.

        Args:
            positions: Shape ``(n, d)``.
            fitness: Shape ``(n,)``; lower is better.

        Returns:
            Shape ``(d, bins)``.
        """
        n, d = positions.shape
        q = fitness_quality(fitness) * (self.deposit_scale / max(n, 1))
        flat = self.cell_index(positions) + (np.arange(d, dtype=np.int64) * self.bins)
        weights = np.broadcast_to(q[:, None], (n, d))
        out: FloatArray = (
            np.bincount(flat.ravel(), weights=weights.ravel(), minlength=d * self.bins)
            .astype(np.float64, copy=False)
            .reshape(d, self.bins)
        )
        return out

    def update(self, positions: FloatArray, fitness: FloatArray) -> None:
        """Evaporates and deposits in place: ``τ ← max((1-rho)τ + Δτ, τ_min)``.

        Args:
            positions: Shape ``(n, d)``, the evaluated positions.
            fitness: Shape ``(n,)``, their fitness (lower is better).
        """
        tau = evaporate_deposit(self.tau, self.deposits(positions, fitness), self.rho)
        np.maximum(tau, self.tau_min, out=tau)
        self.tau = tau

    def probabilities(self) -> FloatArray:
        """Per-dimension cell probabilities ``τ^alpha / Σ τ^alpha``, shape ``(d, bins)``."""
        return random_proportional(self.tau, None, self.alpha, 0.0)

    def sample(self, count: int, rng: np.random.Generator) -> FloatArray:
        """Draws positions biased toward strong trails.

        Each coordinate independently picks a cell with probability
        :meth:`probabilities` (inverse-CDF on one uniform) and then a uniform
        point inside that cell.

        Args:
            count: Number of positions ``m`` (>= 0).
            rng: Random generator; consumes ``2·m·d`` uniforms.

        Returns:
            Shape ``(m, d)``, inside the box.
        """
        d = self.tau.shape[0]
        u = rng.random((2, count, d))
        cdf = np.cumsum(self.probabilities(), axis=1)
        cdf[:, -1] = 1.0  # guard against rounding leaving u above the last edge
        cell = (u[0][:, :, None] > cdf[None, :, :]).sum(axis=2)
        out: FloatArray = self.lower + (cell + u[1]) * self._width
        return out
