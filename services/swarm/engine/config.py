"""Configuration of one swarm run (:class:`SwarmConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .arrays import Bounds, FloatArray, bounds_arrays
from .behaviours import Behaviour, BehaviourProfile, profile_for
from .boids import MAX_BOIDS_PARTICLES
from .convergence import ConvergenceCriterion
from .errors import InvalidConfigError
from .evolution import EvolutionParams
from .pso import DEFAULT_C1, DEFAULT_C2, DEFAULT_W, BoundaryMode, Topology, VelocityInit
from .roles import RoleFractions

__all__ = ["SwarmConfig"]


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    """Everything that defines a swarm run; immutable and JSON-round-trippable.

    Validated on construction. Fields that are None take the behaviour's
    default (see :mod:`.behaviours`).

    Attributes:
        n_particles: Swarm size ``n`` (>= 1; >= 2 for the ring topology).
        dimensions: Search-space dimension ``d`` (>= 1).
        bounds: ``(low, high)`` for every dimension, or one pair per dimension.
        behaviour: Collective behaviour; SWARMING is canonical PSO.
        max_iterations: Iteration budget (>= 1); one iteration = one batch of
            ``n`` evaluations.
        convergence_threshold: Bound on the relative improvement of the best
            fitness over ``convergence_window`` iterations (see
            :mod:`.convergence`).
        convergence_window: ``W`` in iterations.
        spread_threshold: Bound on the normalised spread for convergence.
        seed: Seed of the PCG64 generator. None draws fresh OS entropy; the
            optimizer then records the seed it used in its config, so a
            snapshot still restores exactly.
        topology: GLOBAL (gbest) or RING (lbest).
        neighbourhood_k: Ring neighbours on each side (>= 1).
        w: Inertia weight (Shi & Eberhart 1998); start value if ``w_end``.
        w_end: If set, ``w`` decreases linearly to it over ``max_iterations``
            (Shi & Eberhart 1999).
        c1: Cognitive coefficient (>= 0).
        c2: Social coefficient (>= 0).
        v_max_fraction: Velocity clamp as a fraction of each dimension's range
            (> 0), or None for no clamp.
        boundary: Boundary handling for positions.
        velocity_init: Initial velocities: HALF_DIFF (default, Standard PSO
            2006) or ZERO (Engelbrecht 2012); see :class:`.pso.VelocityInit`.
        roles: Role mix; None = the behaviour's default.
        evolution: Reproduction/retirement on/off; None = behaviour default.
        patience: Stagnation iterations before a particle is exhausted.
        mutation_scale: Offspring spread in units of the core's per-dimension
            standard deviation.
        max_retire_fraction: Cap on retirements per iteration (fraction of n).
        pheromone_bins: Cells per dimension of the pheromone field (>= 2).
        pheromone_evaporation: ``rho`` per iteration, in (0, 1].
        pheromone_alpha: Exponent on ``τ`` when Foragers sample (>= 0).
        scout_step: Scout Lévy step scale, fraction of the range (> 0).
        soldier_step: Soldier Gaussian step in units of the core's per-dimension
            standard deviation (> 0).
        queen_radius: Initial GCPSO radius ``rho`` as a fraction of the range.
        neighbour_radius: Boids neighbour radius as a fraction of the bounds
            diagonal (> 0).
        separation / alignment / cohesion: Boids weights in [0, 10] that
            replace the behaviour's (all three together); None keeps the
            behaviour's profile.
        migration_direction: MIGRATING goal heading, ``d`` numbers; None =
            main diagonal.
    """

    n_particles: int = 40
    dimensions: int = 2
    bounds: Bounds = (-5.12, 5.12)
    behaviour: Behaviour = Behaviour.SWARMING
    max_iterations: int = 1000
    convergence_threshold: float = 1e-8
    convergence_window: int = 25
    spread_threshold: float = 1e-3
    seed: int | None = None
    topology: Topology = Topology.GLOBAL
    neighbourhood_k: int = 2
    w: float = DEFAULT_W
    w_end: float | None = None
    c1: float = DEFAULT_C1
    c2: float = DEFAULT_C2
    v_max_fraction: float | None = 0.2
    boundary: BoundaryMode = BoundaryMode.CLIP
    velocity_init: VelocityInit = VelocityInit.HALF_DIFF
    roles: RoleFractions | None = None
    evolution: bool | None = None
    patience: int = 50
    mutation_scale: float = 0.5
    max_retire_fraction: float = 0.2
    pheromone_bins: int = 32
    pheromone_evaporation: float = 0.1
    pheromone_alpha: float = 1.0
    scout_step: float = 0.05
    soldier_step: float = 0.5
    queen_radius: float = 0.05
    neighbour_radius: float = 0.1
    migration_direction: tuple[float, ...] | None = None
    separation: float | None = None
    alignment: float | None = None
    cohesion: float | None = None
    _lower: FloatArray = field(init=False, repr=False, compare=False)
    _upper: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Coerce enum-valued fields given as strings (e.g. from JSON or proto).
        for name, enum in (
            ("behaviour", Behaviour),
            ("topology", Topology),
            ("boundary", BoundaryMode),
            ("velocity_init", VelocityInit),
        ):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                allowed = ", ".join(m.value for m in enum)
                raise InvalidConfigError(name, f"{value!r} not one of: {allowed}") from None
        lower, upper = bounds_arrays(self.bounds, self.dimensions)
        # Canonical, hashable form so equal configs compare equal after a
        # JSON round trip (lists become tuples, ints become floats).
        arr = np.asarray(self.bounds, dtype=np.float64)
        canonical: Bounds = (
            (float(arr[0]), float(arr[1]))
            if arr.shape == (2,)
            else tuple((float(lo), float(hi)) for lo, hi in arr)
        )
        object.__setattr__(self, "bounds", canonical)
        object.__setattr__(self, "_lower", lower)
        object.__setattr__(self, "_upper", upper)
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, name: str, reason: str) -> None:
            if not ok:
                raise InvalidConfigError(name, reason)

        need(self.n_particles >= 1, "n_particles", "must be >= 1")
        need(self.max_iterations >= 1, "max_iterations", "must be >= 1")
        need(self.neighbourhood_k >= 1, "neighbourhood_k", "must be >= 1")
        if self.topology is Topology.RING:
            need(self.n_particles >= 2, "n_particles", "ring topology needs >= 2")
        for name in ("w", "c1", "c2"):
            value = getattr(self, name)
            need(math.isfinite(value), name, "must be finite")
        need(self.c1 >= 0.0 and self.c2 >= 0.0, "c1", "c1 and c2 must be >= 0")
        if self.w_end is not None:
            need(math.isfinite(self.w_end), "w_end", "must be finite")
        if self.v_max_fraction is not None:
            need(self.v_max_fraction > 0.0, "v_max_fraction", "must be > 0 or None")
        for name in ("scout_step", "soldier_step", "neighbour_radius", "queen_radius"):
            need(getattr(self, name) > 0.0, name, "must be > 0")
        need(self.pheromone_bins >= 2, "pheromone_bins", "must be >= 2")
        need(0.0 < self.pheromone_evaporation <= 1.0, "pheromone_evaporation", "must be in (0, 1]")
        need(self.pheromone_alpha >= 0.0, "pheromone_alpha", "must be >= 0")
        boids = (self.separation, self.alignment, self.cohesion)
        if any(w is not None for w in boids):
            need(all(w is not None for w in boids), "separation",
                 "separation, alignment and cohesion are set together")
            for name in ("separation", "alignment", "cohesion"):
                w = getattr(self, name)
                need(w is not None and 0.0 <= w <= 10.0, name, "must be in [0, 10]")
        if self.seed is not None:
            need(0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)")
        if self.migration_direction is not None:
            need(
                len(self.migration_direction) == self.dimensions,
                "migration_direction",
                f"needs {self.dimensions} values",
            )
            need(
                any(v != 0.0 for v in self.migration_direction),
                "migration_direction",
                "must not be all zero",
            )
        if self.roles is not None:
            self.roles.validate()
        self.criterion.validate()
        self.evolution_params.validate()
        if self.profile.uses_boids:
            need(
                self.n_particles <= MAX_BOIDS_PARTICLES,
                "n_particles",
                f"behaviour {self.behaviour.value} uses O(n²) boids; max {MAX_BOIDS_PARTICLES}",
            )

    # Derived views -----------------------------------------------------

    @property
    def lower(self) -> FloatArray:
        """Lower bounds, shape ``(d,)`` (a copy)."""
        return self._lower.copy()

    @property
    def upper(self) -> FloatArray:
        """Upper bounds, shape ``(d,)`` (a copy)."""
        return self._upper.copy()

    @property
    def profile(self) -> BehaviourProfile:
        """The behaviour's dynamics profile, with the boids weights replaced
        when they are set."""
        prof = profile_for(self.behaviour)
        if self.separation is None or self.alignment is None or self.cohesion is None:
            return prof
        return replace(prof, separation=self.separation, alignment=self.alignment,
                       cohesion=self.cohesion)

    @property
    def role_fractions(self) -> RoleFractions:
        """Effective role mix (explicit ``roles`` or the behaviour default)."""
        return self.roles if self.roles is not None else self.profile.roles

    @property
    def evolution_enabled(self) -> bool:
        """Effective evolution switch."""
        return self.evolution if self.evolution is not None else self.profile.evolution

    @property
    def evolution_params(self) -> EvolutionParams:
        """Evolution knobs as one object."""
        return EvolutionParams(self.patience, self.mutation_scale, self.max_retire_fraction)

    @property
    def criterion(self) -> ConvergenceCriterion:
        """Convergence thresholds as one object."""
        return ConvergenceCriterion(
            self.convergence_threshold, self.convergence_window, self.spread_threshold
        )

    # Serialisation -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as values, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Behaviour | Topology | BoundaryMode | VelocityInit):
                value = value.value
            elif isinstance(value, RoleFractions):
                value = value.to_dict()
            elif f.name == "bounds":
                value = np.asarray(value, dtype=np.float64).tolist()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SwarmConfig:
        """Builds a config from :meth:`to_dict` output (or a subset of it).

        Raises:
            InvalidConfigError: On unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls) if f.init}
        unknown = set(data) - known
        if unknown:
            raise InvalidConfigError(sorted(unknown)[0], "unknown config field")
        kwargs: dict[str, Any] = dict(data)
        if "bounds" in kwargs:
            b = kwargs["bounds"]
            kwargs["bounds"] = (
                (float(b[0]), float(b[1]))
                if len(b) == 2 and not isinstance(b[0], list | tuple)
                else tuple((float(lo), float(hi)) for lo, hi in b)
            )
        if kwargs.get("roles") is not None:
            kwargs["roles"] = RoleFractions.from_dict(kwargs["roles"])
        if kwargs.get("migration_direction") is not None:
            kwargs["migration_direction"] = tuple(float(v) for v in kwargs["migration_direction"])
        return cls(**kwargs)
