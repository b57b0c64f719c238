"""The six colony roles: assignment by fitness rank, and their move rules.

Roles are re-assigned after every evaluation by the rank of each particle's
personal-best fitness (best first, ties by index), in fixed bands:

    rank 0                     QUEEN    (if enabled; exactly one)
    next ⌊soldier·n⌋           SOLDIER
    next ⌊nurse·n⌋             NURSE
    middle (the remainder)     WORKER
    next-to-last ⌊forager·n⌋   FORAGER
    last ⌊scout·n⌋             SCOUT

so the best particles exploit, the worst explore. Effects on the dynamics:

* **Queen** — holds the global best and anchors the swarm: she is the social
  attractor of every Worker/Nurse in the global topology and the centre of the
  Soldiers' search. She herself moves by the guaranteed-convergence rule of
  van den Bergh & Engelbrecht 2002 (GCPSO), a random search of radius ``rho``
  around the best point, ``x ← ŷ + w·v + rho(1 - 2r)``, with ``rho`` doubled after
  more than 15 consecutive improvements of the global best and halved after
  more than 5 consecutive failures. Plain PSO stalls when the best particle
  sits on its own attractors (zero cognitive and social terms); GCPSO keeps it
  searching.
* **Soldier** — guards the best region: Gaussian local search
  ``x ← ŷ + sigma ⊙ N(0, I)`` with ``sigma_j = soldier_step · s_j``, where ``s_j`` is
  the standard deviation of coordinate ``j`` over the core (the exploiting
  particles), so the guard tightens as the swarm contracts.
* **Nurse** — the breeding caste: when evolution is on, exhausted particles
  are retired and re-seeded as mutated clones of Nurses (see
  :mod:`.evolution`). Nurses move like Workers. Without evolution they are
  plain Workers.
* **Worker** — standard inertia-weight PSO (:mod:`.pso`) plus the behaviour's
  boids and migration terms.
* **Forager** — PSO whose social attractor is a point drawn from the
  pheromone field (:mod:`.pheromone`) instead of the global/local best, so it
  follows the colony's trail of good regions rather than a single point.
* **Scout** — random flights: ``x ← x + scout_step·(u - l) ⊙ L`` with ``L``
  a Lévy-stable step (index β = 1.5) drawn by Mantegna's algorithm (Mantegna
  1994), as in Yang & Deb 2009 (cuckoo search). Mostly short hops with rare
  long jumps across the box.

The exploring roles (Forager, Scout) are excluded from the spread used for
convergence and for the Soldier/Nurse step sizes, because they are designed
not to collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from .arrays import FloatArray
from .errors import InvalidConfigError

__all__ = [
    "GCPSO_FAILURE_LIMIT",
    "GCPSO_SUCCESS_LIMIT",
    "QueenState",
    "Role",
    "RoleArray",
    "RoleFractions",
    "assign_roles",
    "levy_steps",
    "queen_move",
    "role_band",
    "role_counts",
    "soldier_positions",
]

RoleArray = npt.NDArray[np.int8]
"""Shape ``(n,)``; values are :class:`Role` members."""

GCPSO_SUCCESS_LIMIT = 15
"""``s_c`` of van den Bergh & Engelbrecht 2002: double rho after more successes."""

GCPSO_FAILURE_LIMIT = 5
"""``f_c`` of van den Bergh & Engelbrecht 2002: halve rho after more failures."""

_RHO_MIN = 1e-12  # fraction of the range; below this the Queen's search is moot
_RHO_MAX = 0.5


class Role(IntEnum):
    """Colony role; the value is the rank band order (best first)."""

    QUEEN = 0
    SOLDIER = 1
    NURSE = 2
    WORKER = 3
    FORAGER = 4
    SCOUT = 5

    @property
    def label(self) -> str:
        """Lower-case name used in stats and metrics (``"queen"``, …)."""
        return self.name.lower()


_LABELS = tuple(role.label for role in Role)


@dataclass(frozen=True, slots=True)
class RoleFractions:
    """How many particles take each role.

    Fractions are of the swarm size ``n`` and rounded down; Workers take the
    remainder. :meth:`workers_only` gives plain PSO.

    Attributes:
        queen: Whether rank 0 becomes the Queen (else a Worker).
        soldier: Fraction of Soldiers, in ``[0, 1]``.
        nurse: Fraction of Nurses, in ``[0, 1]``.
        forager: Fraction of Foragers, in ``[0, 1]``.
        scout: Fraction of Scouts, in ``[0, 1]``.
    """

    queen: bool = True
    soldier: float = 0.0
    nurse: float = 0.0
    forager: float = 0.0
    scout: float = 0.0

    @classmethod
    def workers_only(cls) -> RoleFractions:
        """Every particle is a Worker: canonical PSO."""
        return cls(queen=False)

    def validate(self) -> None:
        """Raises InvalidConfigError (field ``roles``) on bad fractions."""
        parts = (self.soldier, self.nurse, self.forager, self.scout)
        if any(not (0.0 <= f <= 1.0) or math.isnan(f) for f in parts):
            raise InvalidConfigError("roles", "each fraction must be in [0, 1]")
        if sum(parts) > 1.0:
            raise InvalidConfigError("roles", "fractions must sum to <= 1")

    def counts(self, n: int) -> dict[Role, int]:
        """Particles per role for a swarm of ``n``; always sums to ``n``."""
        left = n
        out: dict[Role, int] = {}
        out[Role.QUEEN] = 1 if (self.queen and n > 0) else 0
        left -= out[Role.QUEEN]
        for role, frac in (
            (Role.SOLDIER, self.soldier),
            (Role.NURSE, self.nurse),
            (Role.FORAGER, self.forager),
            (Role.SCOUT, self.scout),
        ):
            out[role] = min(math.floor(frac * n + 1e-9), left)
            left -= out[role]
        out[Role.WORKER] = left
        return {role: out[role] for role in Role}

    def to_dict(self) -> dict[str, float | bool]:
        """JSON-ready form."""
        return {
            "queen": self.queen,
            "soldier": self.soldier,
            "nurse": self.nurse,
            "forager": self.forager,
            "scout": self.scout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float | bool]) -> RoleFractions:
        """Inverse of :meth:`to_dict`."""
        return cls(
            queen=bool(data["queen"]),
            soldier=float(data["soldier"]),
            nurse=float(data["nurse"]),
            forager=float(data["forager"]),
            scout=float(data["scout"]),
        )


def role_band(fractions: RoleFractions, n: int) -> RoleArray:
    """Role of each rank, best first: the bands of the module docstring.

    Returns:
        Shape ``(n,)`` int8, non-decreasing :class:`Role` values.
    """
    counts = fractions.counts(n)
    band: RoleArray = np.repeat(
        np.array([int(r) for r in Role], dtype=np.int8),
        [counts[r] for r in Role],
    )
    return band


def assign_roles(
    pbest_fitness: FloatArray, fractions: RoleFractions, band: RoleArray | None = None
) -> RoleArray:
    """Roles by rank of personal-best fitness (see the module docstring).

    Args:
        pbest_fitness: Shape ``(n,)``; lower is better; NaN sorts last.
        fractions: Band sizes.
        band: :func:`role_band` of ``fractions`` and ``n``, if the caller
            caches it.

    Returns:
        Shape ``(n,)`` int8 array of :class:`Role` values.
    """
    n = pbest_fitness.shape[0]
    if band is None:
        band = role_band(fractions, n)
    order = np.argsort(pbest_fitness, kind="stable")
    roles: RoleArray = np.empty(n, dtype=np.int8)
    roles[order] = band
    return roles


def role_counts(roles: RoleArray) -> dict[str, int]:
    """``{role label: count}`` for every role (zeros included)."""
    tally = np.bincount(roles, minlength=len(Role)).tolist()
    return dict(zip(_LABELS, tally, strict=True))


@dataclass(frozen=True, slots=True)
class QueenState:
    """GCPSO search-radius state (van den Bergh & Engelbrecht 2002).

    Attributes:
        rho: Search radius as a fraction of each dimension's range.
        successes: Consecutive iterations that improved the global best.
        failures: Consecutive iterations that did not.
        index: Particle index of the current Queen (-1 before the first).
    """

    rho: float
    successes: int = 0
    failures: int = 0
    index: int = -1

    def advance(self, queen_index: int, improved: bool) -> QueenState:
        """Counts one iteration and adapts ``rho``.

        Counters restart when another particle becomes Queen, as in GCPSO.

        Args:
            queen_index: Index of the Queen after this iteration's evaluation.
            improved: Whether the global best improved in this iteration.

        Returns:
            The next state.
        """
        state = (
            self
            if queen_index == self.index
            else replace(self, successes=0, failures=0, index=queen_index)
        )
        if improved:
            state = replace(state, successes=state.successes + 1, failures=0)
        else:
            state = replace(state, successes=0, failures=state.failures + 1)
        rho = state.rho
        if state.successes > GCPSO_SUCCESS_LIMIT:
            rho = min(rho * 2.0, _RHO_MAX)
        elif state.failures > GCPSO_FAILURE_LIMIT:
            rho = max(rho * 0.5, _RHO_MIN)
        return replace(state, rho=rho)


def queen_move(
    gbest: FloatArray,
    velocity: FloatArray,
    *,
    w: float,
    rho: float,
    span: FloatArray,
    rng: np.random.Generator,
) -> FloatArray:
    """GCPSO position of the Queen: ``ŷ + w·v + rho·(u - l) ⊙ (1 - 2r)``.

    Args:
        gbest: Shape ``(d,)``, the global best position ``ŷ``.
        velocity: Shape ``(d,)``, the Queen's current velocity.
        w: Inertia weight.
        rho: Radius as a fraction of the range.
        span: Shape ``(d,)``, ``upper - lower``.
        rng: Consumes ``d`` uniforms.

    Returns:
        Shape ``(d,)``, the new position (bounds not applied).
    """
    out: FloatArray = gbest + w * velocity + rho * span * (1.0 - 2.0 * rng.random(gbest.shape))
    return out


def soldier_positions(
    gbest: FloatArray, count: int, sigma: FloatArray, rng: np.random.Generator
) -> FloatArray:
    """Gaussian guard positions around the best: ``ŷ + sigma ⊙ N(0, I)``.

    Args:
        gbest: Shape ``(d,)``.
        count: Number of Soldiers ``m``.
        sigma: Shape ``(d,)`` standard deviations (>= 0).
        rng: Consumes ``m·d`` normals.

    Returns:
        Shape ``(m, d)`` (bounds not applied).
    """
    out: FloatArray = gbest + sigma * rng.standard_normal((count, gbest.shape[0]))
    return out


def levy_steps(shape: tuple[int, int], rng: np.random.Generator, beta: float = 1.5) -> FloatArray:
    """Lévy-stable steps by Mantegna's algorithm (Mantegna 1994).

    ``L = u / |v|^{1/β}`` with ``v ~ N(0, 1)`` and ``u ~ N(0, sigma_u²)``,
    ``sigma_u = [Γ(1+β)·sin(πβ/2) / (Γ((1+β)/2)·β·2^{(β-1)/2})]^{1/β}``.

    Args:
        shape: ``(m, d)``.
        rng: Consumes ``2·m·d`` normals.
        beta: Stability index in ``(0, 2]``; 1.5 as in Yang & Deb 2009.

    Returns:
        Shape ``shape``; heavy-tailed, median magnitude about 0.5.
    """
    sigma_u = (
        math.gamma(1.0 + beta)
        * math.sin(math.pi * beta / 2.0)
        / (math.gamma((1.0 + beta) / 2.0) * beta * 2.0 ** ((beta - 1.0) / 2.0))
    ) ** (1.0 / beta)
    z = rng.standard_normal((2, *shape))
    out: FloatArray = sigma_u * z[0] / np.abs(z[1]) ** (1.0 / beta)
    return out
