"""The six swarm behaviours as parameter sets over PSO, boids, pheromone, roles.

Each behaviour is a :class:`BehaviourProfile`: scales on the PSO coefficients,
weights of Reynolds' three rules (:mod:`.boids`), a migration pull, a default
role mix (:mod:`.roles`) and whether evolution runs by default. The effect on
the dynamics of each one is what ``tests/unit/swarm/test_behaviours.py``
measures:

=============  ==============================================================
SWARMING       Canonical PSO (Kennedy & Eberhart 1995; Shi & Eberhart 1998):
               every particle a Worker, no boids, no pheromone, no evolution.
               The reference the others are compared with, and the mode used
               against pyswarms.
FORAGING       Colony search: Queen, 10 % Soldiers, 10 % Nurses, 25 %
               Foragers following the pheromone field, 10 % Scouts; evolution
               on. Exploits harder than SWARMING (the Queen's GCPSO search,
               Soldiers and cloning of good particles): better in long curved
               valleys (Rosenbrock), converges sooner, and can lose diversity
               on highly multi-modal functions (Rastrigin). The behaviour for
               partitioned work as well.
FLOCKING       Strong alignment (0.5), moderate separation (0.3), light
               cohesion: neighbours match headings, so the velocity
               polarisation ``||sum v|| / sum ||v||`` (the order parameter of
               Vicsek et al. 1995) is higher than under SWARMING, and the
               spacing keeps diversity (good basins on Rastrigin, little
               fine refinement).
DISPERSING     Strong separation (1.0), halved social pull, 15 % Scouts: the
               swarm keeps a large spread (coverage, not precision).
CLUSTERING     Strong cohesion (0.5), no separation, 10 % Soldiers: the swarm
               contracts to a smaller spread than FLOCKING.
MIGRATING      A pull of weight 0.1 toward a goal that moves through the box
               at 1 % of the range per iteration (:func:`migration_goal`):
               the swarm centroid drifts along with it.
=============  ==============================================================

Measured quality per behaviour and function is in ``perf/swarm/RESULTS.md``.

Spread after the same number of iterations is ordered
DISPERSING > FLOCKING > CLUSTERING (medians over seeds on the same objective;
``tests/unit/swarm/test_behaviours.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import numpy as np

from .arrays import FloatArray
from .roles import RoleFractions

__all__ = [
    "PROFILES",
    "Behaviour",
    "BehaviourProfile",
    "migration_goal",
    "profile_for",
]


class Behaviour(StrEnum):
    """The six collective behaviours named by the product."""

    FORAGING = "foraging"
    FLOCKING = "flocking"
    SWARMING = "swarming"
    DISPERSING = "dispersing"
    CLUSTERING = "clustering"
    MIGRATING = "migrating"


@dataclass(frozen=True, slots=True)
class BehaviourProfile:
    """Dynamics weights of one behaviour.

    Attributes:
        roles: Default role mix (``SwarmConfig.roles`` overrides it).
        evolution: Whether reproduction/retirement runs by default.
        cognitive_scale: Multiplier on ``c1``.
        social_scale: Multiplier on ``c2``.
        separation: Boids separation weight (Reynolds 1987).
        alignment: Boids alignment weight.
        cohesion: Boids cohesion weight.
        migration: Weight ``m`` of the pull ``m·(goal - x)`` added to the
            velocity (per iteration).
        migration_speed: Goal speed as a fraction of the range per iteration.
    """

    roles: RoleFractions
    evolution: bool = False
    cognitive_scale: float = 1.0
    social_scale: float = 1.0
    separation: float = 0.0
    alignment: float = 0.0
    cohesion: float = 0.0
    migration: float = 0.0
    migration_speed: float = 0.0

    @property
    def uses_boids(self) -> bool:
        """Whether any boids weight is non-zero (O(n²) per iteration)."""
        return self.separation != 0.0 or self.alignment != 0.0 or self.cohesion != 0.0


PROFILES: Mapping[Behaviour, BehaviourProfile] = MappingProxyType(
    {
        Behaviour.SWARMING: BehaviourProfile(roles=RoleFractions.workers_only()),
        Behaviour.FORAGING: BehaviourProfile(
            roles=RoleFractions(soldier=0.10, nurse=0.10, forager=0.25, scout=0.10),
            evolution=True,
        ),
        Behaviour.FLOCKING: BehaviourProfile(
            roles=RoleFractions(soldier=0.05, nurse=0.05),
            evolution=True,
            alignment=0.5,
            cohesion=0.05,
            # Reynolds' flocks need spacing; without it alignment alone
            # collapses the flock onto the attractor as fast as CLUSTERING.
            separation=0.3,
        ),
        Behaviour.DISPERSING: BehaviourProfile(
            roles=RoleFractions(scout=0.15),
            social_scale=0.5,
            separation=1.0,
        ),
        Behaviour.CLUSTERING: BehaviourProfile(
            roles=RoleFractions(soldier=0.10),
            evolution=True,
            cohesion=0.5,
        ),
        Behaviour.MIGRATING: BehaviourProfile(
            roles=RoleFractions(soldier=0.05),
            alignment=0.2,
            cohesion=0.05,
            migration=0.1,
            migration_speed=0.01,
        ),
    }
)
"""Read-only profile of every behaviour."""


def profile_for(behaviour: Behaviour) -> BehaviourProfile:
    """Returns the profile of ``behaviour``."""
    return PROFILES[behaviour]


def migration_goal(
    iteration: int,
    lower: FloatArray,
    upper: FloatArray,
    *,
    speed: float,
    direction: FloatArray | None = None,
) -> FloatArray:
    """Position of the MIGRATING goal at an iteration (a closed form, no state).

    The goal starts at the centre of the box and travels along ``direction``
    at ``speed·(u - l)`` per iteration, bouncing off the walls (triangle-wave
    reflection), so it sweeps the box forever without leaving it::

        g(t) = reflect(c + t·speed·(u - l) ⊙ e),   c = (l + u)/2

    Args:
        iteration: Iteration ``t`` (>= 0).
        lower: Shape ``(d,)``.
        upper: Shape ``(d,)``.
        speed: Fraction of the range per iteration.
        direction: Shape ``(d,)``; normalised here; defaults to the main
            diagonal ``(1, …, 1)/√d``.

    Returns:
        Shape ``(d,)``, inside the box.
    """
    d = lower.shape[0]
    if direction is None:
        e = np.full(d, 1.0 / math.sqrt(d))
    else:
        norm = float(np.linalg.norm(direction))
        e = direction / norm if norm > 0.0 else np.zeros(d)
    span = upper - lower
    raw = (lower + upper) / 2.0 + iteration * speed * span * e
    folded = np.mod(raw - lower, 2.0 * span)
    out: FloatArray = lower + span - np.abs(folded - span)
    return out
