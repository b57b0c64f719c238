"""`SwarmOptimizer`: the ask/tell swarm driver with exact snapshots.

One iteration is: the caller evaluates the positions from :meth:`ask` (locally
or on remote agents) and hands the fitness to :meth:`tell`, which

1. updates personal bests, stagnation counters and the global best;
2. re-assigns roles by personal-best rank (:mod:`.roles`) and advances the
   Queen's GCPSO radius;
3. evaporates and deposits pheromone at the evaluated positions
   (:mod:`.pheromone`; only when the role mix has Foragers);
4. measures the spread of the exploiting particles and applies the
   convergence test (:mod:`.convergence`);
5. unless converged or out of iterations, moves the swarm: evolution
   (:mod:`.evolution`), the PSO velocity rule (:mod:`.pso`) with the
   behaviour's boids (:mod:`.boids`) and migration terms
   (:mod:`.behaviours`), the special moves of Queen, Soldiers and Scouts,
   velocity clamping and boundary handling.

Everything random comes from one PCG64 generator seeded from the config, and
:meth:`ask` draws nothing, so a run is a pure function of (config, fitness
values) and a snapshot taken between any two calls resumes bit-identically.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .arrays import BoolArray, FloatArray, IntArray
from .behaviours import migration_goal
from .boids import boids_acceleration
from .codec import (
    decode_array,
    decode_float,
    decode_rng,
    encode_array,
    encode_float,
    encode_rng,
)
from .config import SwarmConfig
from .convergence import ConvergenceMonitor, normalised_spread
from .errors import InvalidConfigError, InvalidStateError, SnapshotError
from .evolution import offspring_positions, plan_reproduction
from .functions import FitnessFunction
from .pheromone import PheromoneGrid
from .pso import (
    Topology,
    apply_bounds,
    clamp_velocity,
    inertia_weight,
    initial_velocities,
    neighbourhood_best,
    ring_neighbourhood,
    velocity_update,
)
from .roles import (
    QueenState,
    Role,
    RoleArray,
    assign_roles,
    levy_steps,
    queen_move,
    role_band,
    role_counts,
    soldier_positions,
)

__all__ = ["SNAPSHOT_FORMAT", "IterationStats", "SwarmOptimizer"]

SNAPSHOT_FORMAT = "agentmesh.swarm.engine.optimizer/v1"
"""Value of the ``format`` key of :meth:`SwarmOptimizer.snapshot` dicts."""

_SIGMA_FLOOR = 1e-12  # fraction of the range; keeps Soldiers/offspring distinct

# Plain ints: comparing an ndarray with an IntEnum member goes through the
# enum's attribute machinery on every call, which shows up in profiles.
_QUEEN = int(Role.QUEEN)
_SOLDIER = int(Role.SOLDIER)
_NURSE = int(Role.NURSE)
_FORAGER = int(Role.FORAGER)
_SCOUT = int(Role.SCOUT)


@dataclass(frozen=True, slots=True)
class IterationStats:
    """What one :meth:`SwarmOptimizer.tell` observed.

    Attributes:
        iteration: Iterations completed (1 after the first ``tell``).
        best_fitness: Best fitness found so far.
        best_position: Shape ``(d,)``, where it was found (a copy).
        mean_fitness: Mean of this batch's finite fitness values (``inf`` if
            none was finite).
        spread: Normalised spread of the exploiting particles' evaluated
            positions (see :mod:`.convergence`).
        converged: Whether the convergence test held at this iteration.
        role_counts: ``{role label: count}`` for the coming move, all six
            labels present.
        evaluations: Fitness evaluations consumed so far.
        improvements: Evaluations so far that improved their particle's
            personal best (``improvements / evaluations`` is the cumulative
            success rate of Nickabadi et al. 2011).
        relative_improvement: ``rel_t`` of :mod:`.convergence` (``inf``
            during the first ``W`` iterations).
        retired: Particles retired and replaced in this iteration.
        done: True when the run is over (converged or out of iterations).
    """

    iteration: int
    best_fitness: float
    best_position: FloatArray
    mean_fitness: float
    spread: float
    converged: bool
    role_counts: dict[str, int]
    evaluations: int
    relative_improvement: float
    retired: int
    done: bool
    improvements: int = 0


class SwarmOptimizer:
    """Minimises a black-box function with a role-structured particle swarm.

    Typical remote use (the daemon)::

        opt = SwarmOptimizer(config)
        while not opt.done:
            positions = opt.ask()                  # (n, d)
            fitness = await evaluate_on_agents(positions)
            stats = opt.tell(fitness)              # (n,)
            redis.set(key, json.dumps(opt.snapshot()))

    Local use: ``SwarmOptimizer(config, fitness=sphere).run()``.

    Not thread-safe; drive each instance from one task at a time.
    """

    def __init__(self, config: SwarmConfig, fitness: FitnessFunction | None = None) -> None:
        """Creates a swarm with uniformly random positions.

        Initial velocities follow ``config.velocity_init``
        (:func:`.pso.initial_velocities`): by default the "half-diff" rule of
        Standard PSO 2006 (Helwig & Wanka 2008), a random heading that keeps
        the first step inside the box; or zero (Engelbrecht 2012).

        Args:
            config: The run's configuration (validated on construction).
            fitness: Optional ``(n, d) -> (n,)`` callable used by
                :meth:`step` and :meth:`run`; not needed for ask/tell.
        """
        if config.seed is None:
            config = replace(config, seed=secrets.randbits(63))
        self._fitness = fitness
        self._set_config(config)
        n, d = config.n_particles, config.dimensions
        self._rng = np.random.default_rng(config.seed)
        self._x: FloatArray = self._lower + self._rng.random((n, d)) * self._span
        self._v: FloatArray = initial_velocities(
            self._x, self._lower, self._upper, config.velocity_init, self._rng
        )
        self._pbest_x: FloatArray = self._x.copy()
        self._pbest_f: FloatArray = np.full(n, np.inf)
        self._gbest_x: FloatArray = self._x[0].copy()
        self._gbest_f = math.inf
        self._stagnation: IntArray = np.zeros(n, dtype=np.int64)
        self._roles: RoleArray = assign_roles(self._pbest_f, self._fractions)
        self._iteration = 0
        self._evaluations = 0
        self._improvements = 0
        self._converged = False
        self._monitor = ConvergenceMonitor(config.criterion)
        self._queen = QueenState(rho=config.queen_radius)
        self._grid = self._new_grid()

    def _set_config(self, config: SwarmConfig) -> None:
        # Everything derived from the config alone; rebuilt on restore.
        self._config = config
        self._profile = config.profile
        self._fractions = config.role_fractions
        counts = self._fractions.counts(config.n_particles)
        self._has_roles = counts[Role.WORKER] != config.n_particles
        self._plain_counts = {role.label: counts[role] for role in Role}
        self._band = role_band(self._fractions, config.n_particles)
        self._has_foragers = counts[Role.FORAGER] > 0
        self._lower = config.lower
        self._upper = config.upper
        self._span = self._upper - self._lower
        self._diagonal = float(np.linalg.norm(self._span))
        self._v_max = None if config.v_max_fraction is None else config.v_max_fraction * self._span
        self._neighbours = (
            ring_neighbourhood(config.n_particles, config.neighbourhood_k)
            if config.topology is Topology.RING
            else None
        )
        self._direction = (
            None
            if config.migration_direction is None
            else np.asarray(config.migration_direction, dtype=np.float64)
        )

    def _new_grid(self) -> PheromoneGrid | None:
        if not self._has_foragers:
            return None
        return PheromoneGrid(
            self._lower,
            self._upper,
            bins=self._config.pheromone_bins,
            rho=self._config.pheromone_evaporation,
            alpha=self._config.pheromone_alpha,
        )

    # Read-only views ---------------------------------------------------

    @property
    def config(self) -> SwarmConfig:
        """The configuration (with the seed actually used)."""
        return self._config

    @property
    def iteration(self) -> int:
        """Iterations completed."""
        return self._iteration

    @property
    def evaluations(self) -> int:
        """Fitness evaluations consumed."""
        return self._evaluations

    @property
    def best_fitness(self) -> float:
        """Best fitness so far (``inf`` before the first ``tell``)."""
        return self._gbest_f

    @property
    def best_position(self) -> FloatArray:
        """Shape ``(d,)``, position of :attr:`best_fitness` (a copy)."""
        return self._gbest_x.copy()

    @property
    def converged(self) -> bool:
        """Whether the convergence test has held."""
        return self._converged

    @property
    def done(self) -> bool:
        """Converged, or ``max_iterations`` iterations completed."""
        return self._converged or self._iteration >= self._config.max_iterations

    @property
    def positions(self) -> FloatArray:
        """Shape ``(n, d)``, current positions (a copy)."""
        return self._x.copy()

    @property
    def velocities(self) -> FloatArray:
        """Shape ``(n, d)``, current velocities (a copy)."""
        return self._v.copy()

    @property
    def roles(self) -> RoleArray:
        """Shape ``(n,)``, current role of each particle (a copy)."""
        return self._roles.copy()

    @property
    def pheromone(self) -> FloatArray | None:
        """Shape ``(d, bins)`` pheromone trails (a copy), or None if unused."""
        return None if self._grid is None else self._grid.tau.copy()

    # Ask / tell --------------------------------------------------------

    def ask(self) -> FloatArray:
        """Positions to evaluate next; idempotent and draws no randomness.

        Returns:
            Shape ``(n, d)``, a copy inside the bounds.

        Raises:
            InvalidStateError: If the run is :attr:`done`.
        """
        if self.done:
            raise InvalidStateError("swarm is done; no more positions to evaluate")
        return self._x.copy()

    def tell(self, fitness: npt.ArrayLike) -> IterationStats:
        """Consumes the fitness of the positions from :meth:`ask`; advances.

        Args:
            fitness: Shape ``(n,)`` (or anything ``numpy.asarray`` turns into
                that), row ``i`` the fitness of ``ask()[i]``; lower is better.
                NaN means "evaluation failed" and counts as ``+inf``.

        Returns:
            The iteration's statistics.

        Raises:
            InvalidStateError: If the run is :attr:`done`.
            InvalidConfigError: (field ``fitness``) on a wrong shape, a
                non-numeric value, or ``-inf``. The swarm is unchanged then.
        """
        if self.done:
            raise InvalidStateError("swarm is done; tell() not accepted")
        f = self._checked_fitness(fitness)
        cfg = self._config
        n = cfg.n_particles

        self._iteration += 1
        self._evaluations += n
        improved = f < self._pbest_f
        # A first evaluation always "improves" on +inf; only real improvements
        # count toward the success rate.
        self._improvements += int(np.count_nonzero(improved & (self._pbest_f < math.inf)))
        self._pbest_f[improved] = f[improved]
        self._pbest_x[improved] = self._x[improved]
        self._stagnation += 1
        self._stagnation[improved] = 0
        best = int(np.argmin(self._pbest_f))
        gbest_improved = bool(self._pbest_f[best] < self._gbest_f)
        if gbest_improved:
            self._gbest_f = float(self._pbest_f[best])
            self._gbest_x = self._pbest_x[best].copy()

        if self._has_roles:
            self._roles = assign_roles(self._pbest_f, self._fractions, self._band)
            if self._fractions.queen:
                self._queen = self._queen.advance(best, gbest_improved)
        if self._grid is not None:
            self._grid.update(self._x, f)

        core = self._core_positions()
        spread = normalised_spread(core, self._diagonal)
        self._converged = self._monitor.update(self._gbest_f, spread)
        retired = 0
        if not self.done:
            retired = self._move(core, best)

        finite = f[f < math.inf]
        return IterationStats(
            iteration=self._iteration,
            best_fitness=self._gbest_f,
            best_position=self._gbest_x.copy(),
            mean_fitness=float(np.add.reduce(finite) / finite.size) if finite.size else math.inf,
            spread=spread,
            converged=self._converged,
            role_counts=role_counts(self._roles) if self._has_roles else dict(self._plain_counts),
            evaluations=self._evaluations,
            relative_improvement=self._monitor.last_relative_improvement,
            retired=retired,
            done=self.done,
            improvements=self._improvements,
        )

    def _checked_fitness(self, fitness: npt.ArrayLike) -> FloatArray:
        n = self._config.n_particles
        try:
            f = np.array(fitness, dtype=np.float64)  # a copy: we edit it
        except (TypeError, ValueError) as exc:
            raise InvalidConfigError("fitness", f"not numeric: {exc}") from exc
        if f.shape != (n,):
            raise InvalidConfigError("fitness", f"expected shape ({n},), got {f.shape}")
        if not np.isfinite(f).all():  # rare: keep the common path to one check
            if np.any(f == -np.inf):
                raise InvalidConfigError("fitness", "-inf is not a valid fitness")
            f[np.isnan(f)] = np.inf
        return f

    def _core_mask(self) -> BoolArray | None:
        if not self._has_roles:
            return None
        mask: BoolArray = (self._roles != _FORAGER) & (self._roles != _SCOUT)
        return mask if mask.any() else None

    def _core_positions(self) -> FloatArray:
        # Exploring roles are left out: they are meant not to collapse.
        mask = self._core_mask()
        return self._x if mask is None else self._x[mask]

    def _move(self, core: FloatArray, best: int) -> int:
        cfg, prof = self._config, self._profile
        rng = self._rng
        x, v = self._x, self._v
        w = inertia_weight(self._iteration - 1, cfg.max_iterations, cfg.w, cfg.w_end)
        # Per-dimension scale of the exploiting core: step size of Soldiers
        # and offspring, so both shrink as the swarm contracts. Plain PSO
        # needs neither.
        core_std = (
            np.maximum(core.std(axis=0), _SIGMA_FLOOR * self._span)
            if self._has_roles or cfg.evolution_enabled
            else self._span
        )

        frozen: IntArray = np.empty(0, dtype=np.int64)
        if cfg.evolution_enabled:
            frozen = self._evolve(core_std, best)

        if self._neighbours is None:
            social: FloatArray = self._gbest_x
        else:
            social = self._pbest_x[neighbourhood_best(self._pbest_f, self._neighbours)]
        if self._grid is not None:
            foragers = np.flatnonzero(self._roles == _FORAGER)
            social = np.array(np.broadcast_to(social, x.shape))
            social[foragers] = self._grid.sample(foragers.size, rng)
        v_new = velocity_update(
            v,
            x,
            self._pbest_x,
            social,
            w=w,
            c1=cfg.c1 * prof.cognitive_scale,
            c2=cfg.c2 * prof.social_scale,
            rng=rng,
        )
        if prof.uses_boids:
            v_new += boids_acceleration(
                x,
                v,
                radius=cfg.neighbour_radius * self._diagonal,
                separation=prof.separation,
                alignment=prof.alignment,
                cohesion=prof.cohesion,
            )
        if prof.migration != 0.0:
            goal = migration_goal(
                self._iteration,
                self._lower,
                self._upper,
                speed=prof.migration_speed,
                direction=self._direction,
            )
            v_new += prof.migration * (goal - x)
        clamp_velocity(v_new, self._v_max)
        x_new = x + v_new

        if self._has_roles:
            self._special_moves(x_new, best, w, core_std)
            # Their velocity is the displacement they made (as in GCPSO).
            special = (self._roles == _QUEEN) | (self._roles == _SOLDIER) | (self._roles == _SCOUT)
            v_new[special] = x_new[special] - x[special]
            clamp_velocity(v_new, self._v_max)
        if frozen.size:
            # Offspring were placed by evolution; they move from next time.
            x_new[frozen] = x[frozen]
            v_new[frozen] = 0.0
        apply_bounds(x_new, v_new, self._lower, self._upper, cfg.boundary, rng)
        self._x, self._v = x_new, v_new
        return int(frozen.size)

    def _special_moves(self, x_new: FloatArray, best: int, w: float, core_std: FloatArray) -> None:
        cfg, rng, roles = self._config, self._rng, self._roles
        if self._fractions.queen:
            x_new[best] = queen_move(
                self._gbest_x, self._v[best], w=w, rho=self._queen.rho, span=self._span, rng=rng
            )
        soldiers = np.flatnonzero(roles == _SOLDIER)
        if soldiers.size:
            x_new[soldiers] = soldier_positions(
                self._gbest_x, soldiers.size, cfg.soldier_step * core_std, rng
            )
        scouts = np.flatnonzero(roles == _SCOUT)
        if scouts.size:
            x_new[scouts] = self._x[scouts] + cfg.scout_step * self._span * levy_steps(
                (scouts.size, cfg.dimensions), rng
            )

    def _evolve(self, core_std: FloatArray, best: int) -> IntArray:
        cfg = self._config
        if not (self._stagnation >= cfg.patience).any():
            return np.empty(0, dtype=np.int64)  # the common case: nobody exhausted
        nurses = np.flatnonzero(self._roles == _NURSE)
        if nurses.size:
            pool = nurses.astype(np.int64)
        else:
            # No breeding caste: the top decile by personal best breeds.
            k = max(1, math.ceil(0.1 * cfg.n_particles))
            pool = np.argsort(self._pbest_f, kind="stable")[:k].astype(np.int64)
        # Only particles ranked below every parent may retire, so an offspring
        # never inherits a worse memory than the one it replaces: the Queen,
        # the Soldiers and the parents themselves are protected.
        protected = np.concatenate(
            [np.array([best], dtype=np.int64), pool, np.flatnonzero(self._roles == _SOLDIER)]
        )
        plan = plan_reproduction(
            self._stagnation,
            pool,
            protected,
            cfg.evolution_params,
            self._rng,
        )
        if plan.retired.size == 0:
            return plan.retired
        child = offspring_positions(
            self._pbest_x[plan.parents], cfg.mutation_scale * core_std, self._rng
        )
        np.clip(child, self._lower, self._upper, out=child)
        r = plan.retired
        self._x[r] = child
        self._v[r] = 0.0
        self._pbest_x[r] = self._pbest_x[plan.parents]
        self._pbest_f[r] = self._pbest_f[plan.parents]
        self._stagnation[r] = 0
        return r

    # Local drivers -----------------------------------------------------

    def step(self) -> IterationStats:
        """One iteration with the fitness callable given at construction.

        Raises:
            InvalidStateError: Without a fitness callable, or when done.
        """
        if self._fitness is None:
            raise InvalidStateError("no fitness callable; use ask()/tell()")
        return self.tell(self._fitness(self.ask()))

    def run(
        self, *, on_iteration: Callable[[IterationStats], None] | None = None
    ) -> IterationStats:
        """Steps until converged or out of iterations.

        Args:
            on_iteration: Called with every iteration's stats (metrics hook).

        Returns:
            The last iteration's stats.

        Raises:
            InvalidStateError: Without a fitness callable, or if already done.
        """
        if self.done:
            raise InvalidStateError("swarm is already done")
        stats = self.step()
        if on_iteration is not None:
            on_iteration(stats)
        while not stats.done:
            stats = self.step()
            if on_iteration is not None:
                on_iteration(stats)
        return stats

    async def run_async(
        self,
        fitness: Callable[[FloatArray], Awaitable[npt.ArrayLike]],
        *,
        on_iteration: Callable[[IterationStats], None] | None = None,
    ) -> IterationStats:
        """Like :meth:`run` with an async fitness (e.g. a batch RPC).

        Args:
            fitness: ``async (positions (n, d)) -> (n,)``.
            on_iteration: Called with every iteration's stats.

        Returns:
            The last iteration's stats.

        Raises:
            InvalidStateError: If already done.
        """
        if self.done:
            raise InvalidStateError("swarm is already done")
        while True:
            stats = self.tell(await fitness(self.ask()))
            if on_iteration is not None:
                on_iteration(stats)
            if stats.done:
                return stats

    # Snapshots ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Complete state as a strictly-JSON-serialisable dict.

        Floats and arrays are encoded exactly (:mod:`.codec`), including the
        random generator, so ``restore(json.loads(json.dumps(snapshot())))``
        continues bit-identically. The fitness callable is not included.

        Returns:
            ``{"format": SNAPSHOT_FORMAT, "config": {...}, "state": {...}}``.
        """
        return {
            "format": SNAPSHOT_FORMAT,
            "config": self._config.to_dict(),
            "state": {
                "iteration": self._iteration,
                "evaluations": self._evaluations,
                "improvements": self._improvements,
                "converged": self._converged,
                "positions": encode_array(self._x),
                "velocities": encode_array(self._v),
                "pbest_positions": encode_array(self._pbest_x),
                "pbest_fitness": encode_array(self._pbest_f),
                "gbest_position": encode_array(self._gbest_x),
                "gbest_fitness": encode_float(self._gbest_f),
                "stagnation": encode_array(self._stagnation),
                "roles": encode_array(self._roles),
                "best_history": [encode_float(g) for g in self._monitor.history],
                "last_relative_improvement": encode_float(self._monitor.last_relative_improvement),
                "pheromone": None if self._grid is None else encode_array(self._grid.tau),
                "queen": {
                    "rho": encode_float(self._queen.rho),
                    "successes": self._queen.successes,
                    "failures": self._queen.failures,
                    "index": self._queen.index,
                },
                "rng": encode_rng(self._rng),
            },
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replaces this optimizer's config and state with a snapshot's.

        The fitness callable is kept. On error nothing is changed.

        Args:
            snapshot: Output of :meth:`snapshot` (possibly JSON round-tripped).

        Raises:
            SnapshotError: If the snapshot is malformed, of another format, or
                inconsistent with its own config.
        """
        restored = SwarmOptimizer.from_snapshot(snapshot, self._fitness)
        self.__dict__.update(restored.__dict__)

    @classmethod
    def from_snapshot(
        cls, snapshot: Mapping[str, Any], fitness: FitnessFunction | None = None
    ) -> SwarmOptimizer:
        """Builds an optimizer from :meth:`snapshot` output.

        Raises:
            SnapshotError: See :meth:`restore`.
        """
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"not a {SNAPSHOT_FORMAT} snapshot")
        try:
            config = SwarmConfig.from_dict(snapshot["config"])
            st = snapshot["state"]
            opt = cls.__new__(cls)
            opt._fitness = fitness
            opt._set_config(config)
            n, d = config.n_particles, config.dimensions
            opt._iteration = int(st["iteration"])
            opt._evaluations = int(st["evaluations"])
            # Snapshots written before the counter existed resume from 0.
            opt._improvements = int(st.get("improvements", 0))
            opt._converged = bool(st["converged"])
            opt._x = _float_array(st["positions"], (n, d))
            opt._v = _float_array(st["velocities"], (n, d))
            opt._pbest_x = _float_array(st["pbest_positions"], (n, d))
            opt._pbest_f = _float_array(st["pbest_fitness"], (n,))
            opt._gbest_x = _float_array(st["gbest_position"], (d,))
            opt._gbest_f = decode_float(st["gbest_fitness"])
            opt._stagnation = _typed_array(st["stagnation"], (n,), np.int64)
            opt._roles = _typed_array(st["roles"], (n,), np.int8)
            opt._monitor = ConvergenceMonitor(
                config.criterion, [decode_float(g) for g in st["best_history"]]
            )
            opt._monitor.last_relative_improvement = decode_float(st["last_relative_improvement"])
            q = st["queen"]
            opt._queen = QueenState(
                rho=decode_float(q["rho"]),
                successes=int(q["successes"]),
                failures=int(q["failures"]),
                index=int(q["index"]),
            )
            opt._grid = opt._new_grid()
            if opt._grid is not None:
                opt._grid.tau = _float_array(st["pheromone"], (d, config.pheromone_bins))
            elif st.get("pheromone") is not None:
                raise SnapshotError("pheromone present but the role mix has no Foragers")
            opt._rng = decode_rng(st["rng"])
        except SnapshotError:
            raise
        except InvalidConfigError as exc:
            raise SnapshotError(f"invalid config in snapshot: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"malformed snapshot: {exc!r}") from exc
        return opt


def _float_array(data: Any, shape: tuple[int, ...]) -> FloatArray:
    out: FloatArray = _typed_array(data, shape, np.float64)
    return out


def _typed_array(data: Any, shape: tuple[int, ...], dtype: type[Any]) -> Any:
    arr = decode_array(data)
    if arr.dtype != np.dtype(dtype) or arr.shape != shape:
        raise SnapshotError(
            f"array {arr.dtype}{list(arr.shape)} does not match {np.dtype(dtype)}{list(shape)}"
        )
    return arr
