"""Evolution: exhausted particles retire, good ones reproduce; n stays fixed.

A particle is *exhausted* when its personal best has not improved for
``patience`` consecutive evaluations (its stagnation counter). Each iteration,
up to ``max_retire_fraction·n`` of the most stagnant exhausted particles
(ties by index) are replaced, slot for slot, by offspring of parents drawn
uniformly from the parent pool (the Nurses, or the top decile by personal
best when there are none). The Queen, the Soldiers and the parents never
retire, so every retiring particle ranks below every parent. An offspring

* inherits its parent's memory: personal best position and fitness
  (a clone, so the colony never forgets a good point by retiring someone);
* is placed at the parent's personal best plus a Gaussian mutation
  ``N(0, sigma_j²)`` per dimension with ``sigma_j = mutation_scale · s_j``, ``s_j``
  the standard deviation of coordinate ``j`` over the core (the exploiting
  particles), so offspring land at the scale the swarm currently searches,
  then are clipped into the box;
* starts with zero velocity and a zero stagnation counter.

This is steady-state replacement with elitist parent selection, as in
evolutionary PSO hybrids (Angeline 1998, "Using selection to improve particle
swarm optimization"), with retirement triggered by stagnation rather than by
fitness alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arrays import FloatArray, IntArray
from .errors import InvalidConfigError

__all__ = [
    "EvolutionParams",
    "Reproduction",
    "offspring_positions",
    "plan_reproduction",
]


@dataclass(frozen=True, slots=True)
class EvolutionParams:
    """Reproduction/retirement knobs.

    Attributes:
        patience: Iterations without personal-best improvement after which a
            particle is exhausted (>= 1).
        mutation_scale: Offspring spread in units of the core's per-dimension
            standard deviation (>= 0).
        max_retire_fraction: Cap on retirements per iteration, fraction of
            ``n`` in ``[0, 1]``; at least one when any particle is exhausted.
    """

    patience: int = 50
    mutation_scale: float = 0.5
    max_retire_fraction: float = 0.2

    def validate(self) -> None:
        """Raises InvalidConfigError on out-of-range values."""
        if self.patience < 1:
            raise InvalidConfigError("patience", f"must be >= 1, got {self.patience}")
        if not self.mutation_scale >= 0.0:
            raise InvalidConfigError("mutation_scale", "must be >= 0")
        if not 0.0 <= self.max_retire_fraction <= 1.0:
            raise InvalidConfigError("max_retire_fraction", "must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class Reproduction:
    """Which slots are replaced and by whose offspring.

    Attributes:
        retired: Shape ``(k,)`` indices of retiring particles.
        parents: Shape ``(k,)`` index of the parent of each offspring.
    """

    retired: IntArray
    parents: IntArray


def plan_reproduction(
    stagnation: IntArray,
    parent_pool: IntArray,
    protected: IntArray,
    params: EvolutionParams,
    rng: np.random.Generator,
) -> Reproduction:
    """Chooses the retiring particles and a parent for each.

    Args:
        stagnation: Shape ``(n,)``, iterations since each personal best
            improved.
        parent_pool: Shape ``(p,)`` candidate parent indices (p >= 1 for any
            reproduction to happen).
        protected: Indices that never retire (the Queen, Soldiers, parents).
        params: Patience and caps.
        rng: Consumes ``k`` integers when ``k`` particles retire.

    Returns:
        The plan; empty arrays when nobody is exhausted or the pool is empty.
        A parent is never one of the retiring particles.
    """
    n = stagnation.shape[0]
    exhausted = stagnation >= params.patience
    exhausted[protected] = False
    candidates = np.flatnonzero(exhausted)
    # Boolean masks rather than np.setdiff1d: same sorted result, no sort.
    in_pool = np.zeros(n, dtype=np.bool_)
    in_pool[parent_pool] = True
    in_pool[candidates] = False
    pool = np.flatnonzero(in_pool)
    empty = np.empty(0, dtype=np.int64)
    if candidates.size == 0 or pool.size == 0:
        return Reproduction(empty, empty)
    cap = max(1, math.floor(params.max_retire_fraction * n))
    # Most stagnant first; stable sort keeps index order among equals.
    order = np.argsort(-stagnation[candidates], kind="stable")
    retired = candidates[order[:cap]].astype(np.int64)
    parents = pool[rng.integers(0, pool.size, size=retired.size)].astype(np.int64)
    return Reproduction(retired, parents)


def offspring_positions(
    parent_pbest: FloatArray, sigma: FloatArray, rng: np.random.Generator
) -> FloatArray:
    """Mutated clones: ``p + sigma ⊙ N(0, I)``.

    Args:
        parent_pbest: Shape ``(k, d)``, the parents' personal bests.
        sigma: Shape ``(d,)`` mutation standard deviations.
        rng: Consumes ``k·d`` normals.

    Returns:
        Shape ``(k, d)`` (bounds not applied).
    """
    out: FloatArray = parent_pbest + sigma * rng.standard_normal(parent_pbest.shape)
    return out
