"""Validation of DeploySwarm requests, and the defaults a task gets.

Every problem found is collected as a (field path, description) pair so the
caller gets all of them in one google.rpc.BadRequest, and a bad task never
reaches Redis or the engine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from agentmesh.catalog import selector_violations
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.swarm.v1 import swarm_pb2

#: Standard search box of each built-in function (Surjanovic & Bingham, SFU).
BUILTIN_DEFAULT_BOUNDS: dict[int, tuple[float, float]] = {
    swarm_pb2.BENCHMARK_FUNCTION_SPHERE: (-5.12, 5.12),
    swarm_pb2.BENCHMARK_FUNCTION_RASTRIGIN: (-5.12, 5.12),
    swarm_pb2.BENCHMARK_FUNCTION_ROSENBROCK: (-5.0, 10.0),
    swarm_pb2.BENCHMARK_FUNCTION_ACKLEY: (-32.768, 32.768),
}
#: Engine names of the built-in functions.
BUILTIN_NAMES: dict[int, str] = {
    swarm_pb2.BENCHMARK_FUNCTION_SPHERE: "sphere",
    swarm_pb2.BENCHMARK_FUNCTION_RASTRIGIN: "rastrigin",
    swarm_pb2.BENCHMARK_FUNCTION_ROSENBROCK: "rosenbrock",
    swarm_pb2.BENCHMARK_FUNCTION_ACKLEY: "ackley",
}

DEFAULT_PARTICLES = 30
MAX_PARTICLES = 100_000
MAX_DIMENSIONS = 10_000
DEFAULT_MAX_ITERATIONS = 1000
MAX_ITERATIONS = 10_000_000
MAX_PARTITIONS = 1_000_000
DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 7 * 24 * 3600
DEFAULT_CALL_TIMEOUT_S = 10
DEFAULT_PARTITION_TIMEOUT_S = 30
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RING_NEIGHBORS = 2
DEFAULT_CONVERGENCE_THRESHOLD = 1e-8
DEFAULT_CONVERGENCE_WINDOW = 25
DEFAULT_SPREAD_THRESHOLD = 1e-3
_SWARM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_swarm_id(swarm_id: str, field: str = "swarm_id") -> None:
    """Raise InvalidArgument unless `swarm_id` is a well-formed id."""
    if not _SWARM_ID.match(swarm_id):
        raise InvalidArgument(
            "bad swarm id",
            field_violations={field: "must be 1-64 characters of [A-Za-z0-9_.-]"},
        )


def _check_space(
    space: swarm_pb2.SearchSpace,
    path: str,
    v: list[tuple[str, str]],
    *,
    default_bounds: tuple[float, float] | None,
    min_dimensions: int = 1,
) -> None:
    d = space.dimensions
    if d < min_dimensions:
        v.append((f"{path}.dimensions", f"must be >= {min_dimensions}, got {d}"))
        return
    if d > MAX_DIMENSIONS:
        v.append((f"{path}.dimensions", f"must be <= {MAX_DIMENSIONS}"))
        return
    lo, hi = list(space.lower_bounds), list(space.upper_bounds)
    if not lo and not hi:
        if default_bounds is None:
            v.append((f"{path}.lower_bounds", "bounds are required"))
        return
    for name, vals in (("lower_bounds", lo), ("upper_bounds", hi)):
        if len(vals) not in (1, d):
            v.append((f"{path}.{name}", f"needs 1 or {d} values, got {len(vals)}"))
            return
        if not all(math.isfinite(x) for x in vals):
            v.append((f"{path}.{name}", "values must be finite"))
            return
    n = max(len(lo), len(hi))
    for i in range(n):
        low = lo[i if len(lo) > 1 else 0]
        high = hi[i if len(hi) > 1 else 0]
        if not low < high:
            v.append(
                (f"{path}.upper_bounds[{i if len(hi) > 1 else 0}]",
                 f"inverted bounds: upper {high} must be > lower {low}")
            )


def bounds_of(space: swarm_pb2.SearchSpace) -> list[tuple[float, float]]:
    """Per-dimension (low, high) pairs of a validated, defaulted space."""
    d = space.dimensions
    lo, hi = list(space.lower_bounds), list(space.upper_bounds)
    return [(lo[i if len(lo) > 1 else 0], hi[i if len(hi) > 1 else 0]) for i in range(d)]


def _check_selector(sel: common_pb2.AgentSelector, path: str, v: list[tuple[str, str]]) -> None:
    if not sel.capabilities:
        v.append((f"{path}.capabilities", "at least one capability is required"))
    v.extend(selector_violations(sel, field=path))


def _seconds(d: object) -> float:
    return float(getattr(d, "seconds", 0)) + float(getattr(d, "nanos", 0)) / 1e9


def validate_task(task: swarm_pb2.SwarmTask, *, path: str = "task") -> swarm_pb2.SwarmTask:
    """Check a task and return a copy with every default filled in.

    Args:
        task: the task as sent.
        path: field path prefix for violations.

    Returns:
        A new SwarmTask with defaults (particles, iterations, timeout, bounds,
        PSO parameters, ...) written out, so what is stored is what runs.

    Raises:
        InvalidArgument: with one field violation per problem.
    """
    v: list[tuple[str, str]] = []
    out = swarm_pb2.SwarmTask()
    out.CopyFrom(task)
    kind = task.WhichOneof("fitness")
    if task.behavior not in swarm_pb2.Behavior.values():
        v.append((f"{path}.behavior", f"unknown behavior {task.behavior}"))
    if kind is None:
        v.append((f"{path}.fitness", "one of builtin, agent_evaluated, partition_work is required"))
    if not 0.0 <= task.convergence_threshold < 1.0:
        v.append((f"{path}.convergence_threshold", "must be in [0, 1)"))
    if not task.spread_threshold >= 0.0 or math.isinf(task.spread_threshold):
        v.append((f"{path}.spread_threshold", "must be a finite number >= 0"))
    if task.convergence_window > MAX_ITERATIONS:
        v.append((f"{path}.convergence_window", f"must be <= {MAX_ITERATIONS}"))
    timeout_s = _seconds(task.timeout)
    if timeout_s < 0 or timeout_s > MAX_TIMEOUT_S:
        v.append((f"{path}.timeout", f"must be in [0, {MAX_TIMEOUT_S}] seconds"))
    elif timeout_s == 0:
        out.timeout.FromSeconds(DEFAULT_TIMEOUT_S)

    if kind in ("builtin", "agent_evaluated"):
        if task.data_partitions:
            v.append((f"{path}.data_partitions", "must be 0 for optimisation"))
        if task.agents_required == 0:
            out.agents_required = DEFAULT_PARTICLES
        elif task.agents_required > MAX_PARTICLES:
            v.append((f"{path}.agents_required", f"at most {MAX_PARTICLES} particles"))
        if task.max_iterations == 0:
            out.max_iterations = DEFAULT_MAX_ITERATIONS
        elif task.max_iterations > MAX_ITERATIONS:
            v.append((f"{path}.max_iterations", f"must be <= {MAX_ITERATIONS}"))
        if task.behavior == swarm_pb2.BEHAVIOR_UNSPECIFIED:
            out.behavior = swarm_pb2.BEHAVIOR_SWARMING
        out.convergence_threshold = task.convergence_threshold or DEFAULT_CONVERGENCE_THRESHOLD
        out.convergence_window = task.convergence_window or DEFAULT_CONVERGENCE_WINDOW
        out.spread_threshold = task.spread_threshold or DEFAULT_SPREAD_THRESHOLD
        _check_pso(task.pso, out.pso, f"{path}.pso", v)
        _check_dynamics(task.dynamics, out.dynamics, f"{path}.dynamics", v)
    elif task.HasField("dynamics"):
        v.append((f"{path}.dynamics", "applies to optimisation (builtin or agent_evaluated) only"))
    _check_metadata(task.metadata, f"{path}.metadata", v)
    if kind == "builtin" and task.max_agents:
        v.append((f"{path}.max_agents", "must be 0 for built-in fitness (no agents take part)"))

    if kind == "builtin":
        b = task.builtin
        p = f"{path}.builtin"
        if b.function not in BUILTIN_NAMES:
            v.append((f"{p}.function", "one of SPHERE, RASTRIGIN, ROSENBROCK, ACKLEY is required"))
        else:
            low, high = BUILTIN_DEFAULT_BOUNDS[b.function]
            min_d = 2 if b.function == swarm_pb2.BENCHMARK_FUNCTION_ROSENBROCK else 1
            _check_space(b.space, f"{p}.space", v, default_bounds=(low, high), min_dimensions=min_d)
            if not b.space.lower_bounds and not b.space.upper_bounds:
                out.builtin.space.lower_bounds.append(low)
                out.builtin.space.upper_bounds.append(high)
    elif kind == "agent_evaluated":
        a = task.agent_evaluated
        p = f"{path}.agent_evaluated"
        _check_selector(a.selector, f"{p}.selector", v)
        if not a.objective:
            v.append((f"{p}.objective", "required"))
        _check_space(a.space, f"{p}.space", v, default_bounds=None)
        if _seconds(a.call_timeout) < 0:
            v.append((f"{p}.call_timeout", "must be >= 0"))
        elif _seconds(a.call_timeout) == 0:
            out.agent_evaluated.call_timeout.FromSeconds(DEFAULT_CALL_TIMEOUT_S)
    elif kind == "partition_work":
        w = task.partition_work
        p = f"{path}.partition_work"
        if task.behavior not in (swarm_pb2.BEHAVIOR_UNSPECIFIED, swarm_pb2.BEHAVIOR_FORAGING):
            v.append((f"{path}.behavior", "partition work is scheduled by FORAGING only"))
        out.behavior = swarm_pb2.BEHAVIOR_FORAGING
        _check_selector(w.selector, f"{p}.selector", v)
        if not w.action:
            v.append((f"{p}.action", "required"))
        n_inputs = len(w.partition_inputs)
        if n_inputs and task.data_partitions not in (0, n_inputs):
            v.append(
                (f"{path}.data_partitions",
                 f"is {task.data_partitions} but partition_inputs has {n_inputs}")
            )
        n = n_inputs or task.data_partitions
        if n == 0:
            v.append((f"{path}.data_partitions", "partition work needs at least one partition"))
        elif n > MAX_PARTITIONS:
            v.append((f"{path}.data_partitions", f"at most {MAX_PARTITIONS} partitions"))
        out.data_partitions = n
        for i, f in enumerate(w.aggregate_fields):
            if not f:
                v.append((f"{p}.aggregate_fields[{i}]", "must not be empty"))
        if _seconds(w.partition_timeout) < 0:
            v.append((f"{p}.partition_timeout", "must be >= 0"))
        elif _seconds(w.partition_timeout) == 0:
            out.partition_work.partition_timeout.FromSeconds(DEFAULT_PARTITION_TIMEOUT_S)
        if w.max_attempts == 0:
            out.partition_work.max_attempts = DEFAULT_MAX_ATTEMPTS
        if w.max_in_flight_per_agent == 0:
            out.partition_work.max_in_flight_per_agent = 1
        if task.agents_required == 0:
            out.agents_required = 1
        if task.max_agents and task.max_agents < out.agents_required:
            v.append(
                (f"{path}.max_agents",
                 f"is {task.max_agents}, below agents_required ({out.agents_required})")
            )
    if v:
        raise InvalidArgument(f"invalid swarm task: {v[0][0]}: {v[0][1]}", field_violations=v)
    return out


#: Largest boids weight: beyond it the steering swamps the PSO terms.
MAX_BOIDS_WEIGHT = 10.0
#: SwarmDynamics defaults written out when a field is 0 (the engine's).
DEFAULT_NEIGHBOR_RADIUS = 0.1
DEFAULT_PHEROMONE_EVAPORATION = 0.1
#: Bounds of SwarmTask.metadata.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY = 63
MAX_METADATA_VALUE = 256


def _check_dynamics(
    d: swarm_pb2.SwarmDynamics, out: swarm_pb2.SwarmDynamics, path: str,
    v: list[tuple[str, str]],
) -> None:
    """Check the dynamics overrides and write their defaults into `out`."""
    for name in ("separation", "alignment", "cohesion"):
        w = getattr(d.boids, name)
        if not 0.0 <= w <= MAX_BOIDS_WEIGHT:  # also refuses NaN
            v.append((f"{path}.boids.{name}", f"must be in [0, {MAX_BOIDS_WEIGHT:g}]"))
    for name, default in (("neighbor_radius", DEFAULT_NEIGHBOR_RADIUS),
                          ("pheromone_evaporation", DEFAULT_PHEROMONE_EVAPORATION)):
        x = getattr(d, name)
        if not 0.0 <= x <= 1.0:
            v.append((f"{path}.{name}", "must be in (0, 1] (0 takes the default)"))
        elif x == 0.0:
            setattr(out, name, default)


def _check_metadata(md: Mapping[str, str], path: str, v: list[tuple[str, str]]) -> None:
    if len(md) > MAX_METADATA_ENTRIES:
        v.append((path, f"at most {MAX_METADATA_ENTRIES} entries"))
        return
    for k, val in md.items():
        if not 1 <= len(k) <= MAX_METADATA_KEY:
            v.append((f"{path}[{k[:MAX_METADATA_KEY]}]",
                      f"keys have 1-{MAX_METADATA_KEY} characters"))
        elif len(val) > MAX_METADATA_VALUE:
            v.append((f"{path}[{k}]", f"values have at most {MAX_METADATA_VALUE} characters"))


def _check_pso(
    pso: swarm_pb2.PsoParameters, out: swarm_pb2.PsoParameters, path: str,
    v: list[tuple[str, str]],
) -> None:
    for name in ("inertia", "cognitive", "social", "velocity_clamp"):
        x = getattr(pso, name)
        if not math.isfinite(x) or x < 0:
            v.append((f"{path}.{name}", "must be a finite number >= 0"))
    if pso.inertia >= 1.2:
        v.append((f"{path}.inertia", "must be < 1.2 or the swarm diverges"))
    if pso.velocity_clamp > 1.0:
        v.append((f"{path}.velocity_clamp", "a fraction of the range, in (0, 1]"))
    if pso.topology not in swarm_pb2.Topology.values():
        v.append((f"{path}.topology", f"unknown topology {pso.topology}"))
    out.inertia = pso.inertia or 0.7298
    out.cognitive = pso.cognitive or 1.49618
    out.social = pso.social or 1.49618
    out.velocity_clamp = pso.velocity_clamp or 0.2
    out.topology = pso.topology or swarm_pb2.TOPOLOGY_GLOBAL
    out.ring_neighbors = pso.ring_neighbors or DEFAULT_RING_NEIGHBORS
