"""Driver of optimisation swarms: the engine's ask/tell loop with fitness from
a built-in function (in-process numpy) or from agents (AgentService.Evaluate).

One iteration: ``positions = opt.ask()``; evaluate; ``opt.tell(fitness)``;
one fenced commit that appends the stats to the stream, updates the record
(at most every ``record_interval_s``) and, every ``snapshot_every``
iterations, stores ``opt.snapshot()``. Because the engine draws all its
randomness from one generator kept in the snapshot, a replica that resumes
from iteration k replays iterations k+1... exactly as the lost driver would
have (for deterministic fitness).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import grpc
import numpy as np

from agentmesh.agent.v1 import agent_pb2
from agentmesh.catalog import AgentInfo, find_agents
from agentmesh.runtime.errors import AgentMeshError, InvalidArgument
from agentmesh.server.swarm import metrics
from agentmesh.server.swarm.driver import (
    DriverContext,
    deadline_of,
    finish,
    now_ts,
    role_counts_pb,
)
from agentmesh.server.swarm.engine import (
    Behaviour,
    InvalidConfigError,
    SwarmConfig,
    SwarmOptimizer,
    Topology,
    get_benchmark,
)
from agentmesh.server.swarm.engine.arrays import FloatArray
from agentmesh.server.swarm.validation import BUILTIN_NAMES, bounds_of
from agentmesh.swarm.v1 import swarm_pb2

log = logging.getLogger("agentmesh.swarm.optimization")

BEHAVIOURS: dict[int, Behaviour] = {
    swarm_pb2.BEHAVIOR_FORAGING: Behaviour.FORAGING,
    swarm_pb2.BEHAVIOR_FLOCKING: Behaviour.FLOCKING,
    swarm_pb2.BEHAVIOR_SWARMING: Behaviour.SWARMING,
    swarm_pb2.BEHAVIOR_DISPERSING: Behaviour.DISPERSING,
    swarm_pb2.BEHAVIOR_CLUSTERING: Behaviour.CLUSTERING,
    swarm_pb2.BEHAVIOR_MIGRATING: Behaviour.MIGRATING,
}
#: Above this many coordinates per iteration the engine step runs in a
#: worker thread, so one big swarm does not stall the daemon's other RPCs.
THREAD_THRESHOLD = 200_000
#: Engine config field → proto field path, for error details.
_FIELD_PATHS = {
    "n_particles": "task.agents_required",
    "dimensions": "task.*.space.dimensions",
    "bounds": "task.*.space",
    "max_iterations": "task.max_iterations",
    "convergence_threshold": "task.convergence_threshold",
    "convergence_window": "task.convergence_window",
    "spread_threshold": "task.spread_threshold",
    "w": "task.pso.inertia",
    "c1": "task.pso.cognitive",
    "c2": "task.pso.social",
    "v_max_fraction": "task.pso.velocity_clamp",
    "neighbourhood_k": "task.pso.ring_neighbors",
    "seed": "task.seed",
    "behaviour": "task.behavior",
    "neighbour_radius": "task.dynamics.neighbor_radius",
    "pheromone_evaporation": "task.dynamics.pheromone_evaporation",
    "separation": "task.dynamics.boids.separation",
    "alignment": "task.dynamics.boids.alignment",
    "cohesion": "task.dynamics.boids.cohesion",
}


def engine_config(task: swarm_pb2.SwarmTask, seed: int) -> SwarmConfig:
    """The engine configuration of a validated, defaulted optimisation task.

    Raises:
        InvalidConfigError: when the engine rejects a value.
    """
    kind = task.WhichOneof("fitness")
    space = task.builtin.space if kind == "builtin" else task.agent_evaluated.space
    p = task.pso
    d = task.dynamics
    boids = d.boids if d.HasField("boids") else None
    return SwarmConfig(
        n_particles=task.agents_required,
        dimensions=space.dimensions,
        bounds=tuple(bounds_of(space)),
        behaviour=BEHAVIOURS[task.behavior],
        max_iterations=task.max_iterations,
        convergence_threshold=task.convergence_threshold,
        convergence_window=task.convergence_window,
        spread_threshold=task.spread_threshold,
        seed=seed % (2**63),
        topology=Topology.RING if p.topology == swarm_pb2.TOPOLOGY_RING else Topology.GLOBAL,
        neighbourhood_k=p.ring_neighbors,
        w=p.inertia,
        c1=p.cognitive,
        c2=p.social,
        v_max_fraction=p.velocity_clamp,
        neighbour_radius=d.neighbor_radius or 0.1,
        pheromone_evaporation=d.pheromone_evaporation or 0.1,
        separation=boids.separation if boids else None,
        alignment=boids.alignment if boids else None,
        cohesion=boids.cohesion if boids else None,
    )


def check_engine_config(task: swarm_pb2.SwarmTask) -> None:
    """Let the engine validate an optimisation task (partition work passes).

    Raises:
        InvalidArgument: with the engine's reason on the matching proto field.
    """
    if task.WhichOneof("fitness") not in ("builtin", "agent_evaluated"):
        return
    try:
        engine_config(task, task.seed or 1)
    except InvalidConfigError as e:
        path = _FIELD_PATHS.get(e.field, f"task.{e.field}")
        raise InvalidArgument(f"invalid swarm task: {e}", field_violations={path: e.reason}) from e


class AgentEvaluator:
    """Fitness from AgentService.Evaluate, the batch split evenly over agents.

    A batch whose agent fails or times out is retried on the next agent; an
    agent that failed is skipped until the next registry refresh. Positions
    no agent could score get NaN, which the engine counts as +inf.
    """

    def __init__(self, ctx: DriverContext, swarm: swarm_pb2.Swarm) -> None:
        self.ctx = ctx
        self.swarm_id = swarm.swarm_id
        a = swarm.task.agent_evaluated
        self.selector = a.selector
        self.objective = a.objective
        self.parameters = a.parameters
        self.call_timeout_s = a.call_timeout.ToNanoseconds() / 1e9
        self.agents: list[AgentInfo] = []
        self.max_agents = swarm.task.max_agents  # 0 = every matching agent
        self._bad: set[str] = set()
        self._refreshed = 0.0

    async def _refresh(self) -> None:
        if time.monotonic() - self._refreshed >= self.ctx.agent_refresh_s or not self.agents:
            found = await find_agents(self.ctx.redis, self.selector)
            # breaker-open or ejected agents get no batches (shared with router traffic)
            eligible = await self.ctx.agents.eligible(self.selector, self.objective)
            self.agents = [a for a in found if a.agent_id in eligible]
            if self.max_agents:
                self.agents = sorted(self.agents, key=lambda a: a.agent_id)[: self.max_agents]
            self._bad.clear()
            self._refreshed = time.monotonic()

    async def _call(self, agent: AgentInfo, rows: FloatArray) -> list[float]:
        req = agent_pb2.EvaluateRequest(
            objective=self.objective,
            dimensions=rows.shape[1],
            positions=rows.ravel().tolist(),
            parameters=self.parameters,
            swarm_id=self.swarm_id,
        )
        resp = await self.ctx.agents.evaluate(
            self.selector, agent.agent_id, req, timeout_s=self.call_timeout_s
        )
        if len(resp.fitness) != rows.shape[0]:
            raise ValueError(f"agent {agent.agent_id} returned {len(resp.fitness)} values")
        return list(resp.fitness)

    async def _batch(self, first: int, rows: FloatArray) -> list[float]:
        n_agents = len(self.agents)
        for k in range(n_agents):
            agent = self.agents[(first + k) % n_agents]
            if agent.agent_id in self._bad:
                continue
            try:
                return await self._call(agent, rows)
            except (grpc.aio.AioRpcError, AgentMeshError, ValueError) as e:
                log.warning(
                    "evaluate failed; trying another agent",
                    extra={"swarm_id": self.swarm_id, "agent_id": agent.agent_id, "error": str(e)},
                )
                self._bad.add(agent.agent_id)
        return [math.nan] * rows.shape[0]

    async def __call__(self, positions: FloatArray) -> FloatArray:
        await self._refresh()
        n_agents = len(self.agents)
        if n_agents == 0:
            return np.full(positions.shape[0], np.nan)
        chunks = np.array_split(positions, min(n_agents, positions.shape[0]))
        results = await asyncio.gather(*(self._batch(i, c) for i, c in enumerate(chunks)))
        return np.asarray([x for r in results for x in r], dtype=np.float64)


async def drive_optimization(ctx: DriverContext, swarm: swarm_pb2.Swarm) -> None:
    """Run an optimisation swarm to its end (see the module docstring).

    Raises:
        LeaseLost: when another replica took the swarm over.
    """
    task = swarm.task
    kind = task.WhichOneof("fitness")
    raw = await ctx.store.load_snapshot(swarm.swarm_id)
    if raw:
        opt = SwarmOptimizer.from_snapshot(json.loads(raw))
        log.info(
            "restored from snapshot",
            extra={"swarm_id": swarm.swarm_id, "iteration": opt.iteration},
        )
    else:
        opt = SwarmOptimizer(engine_config(task, swarm.seed))
    agents: AgentEvaluator | None = None
    builtin: Any = None
    if kind == "builtin":
        builtin = get_benchmark(BUILTIN_NAMES[task.builtin.function]).function
    else:
        agents = AgentEvaluator(ctx, swarm)
    n, d = opt.config.n_particles, opt.config.dimensions
    threaded = n * d >= THREAD_THRESHOLD
    deadline = deadline_of(swarm)
    t0 = time.monotonic()
    evals_at_start = opt.evaluations
    last_record = 0.0
    if opt.done:  # the snapshot was taken after the last iteration
        finish(swarm, swarm_pb2.SWARM_STATE_COMPLETED, _termination(opt))
        _result(swarm, opt)
        await ctx.store.commit(ctx.lease, swarm=swarm)
        return
    while True:
        it_start = time.monotonic()
        if builtin is not None:
            if threaded:
                positions = opt.ask()
                fitness = await asyncio.to_thread(builtin, positions)
                st = await asyncio.to_thread(opt.tell, fitness)
            else:
                st = opt.tell(builtin(opt.ask()))
        else:
            assert agents is not None
            st = opt.tell(await agents(opt.ask()))
        it_s = max(time.monotonic() - it_start, 1e-9)
        metrics.FITNESS_EVALUATIONS.inc(n)
        metrics.FITNESS_EVALS_PER_SECOND.set(n / it_s)
        ctx.set_roles(st.role_counts)

        stats = swarm.stats
        stats.Clear()
        stats.iteration = st.iteration
        stats.best_fitness = st.best_fitness
        stats.spread = st.spread
        stats.relative_improvement = st.relative_improvement
        stats.converged = st.converged
        stats.convergence = _convergence_score(
            st.relative_improvement, st.spread, st.converged, opt.config
        )
        stats.role_counts.extend(role_counts_pb(st.role_counts))
        stats.evaluations = st.evaluations
        stats.efficiency = st.improvements / st.evaluations if st.evaluations else 0.0
        stats.throughput_per_second = (st.evaluations - evals_at_start) / max(
            time.monotonic() - t0, 1e-9
        )
        if agents is not None:
            stats.active_agents = len(agents.agents) - len(agents._bad)
        stats.time.CopyFrom(now_ts())
        _result(swarm, opt)

        if st.done:
            finish(swarm, swarm_pb2.SWARM_STATE_COMPLETED, _termination(opt))
            metrics.SWARM_EFFICIENCY.set(stats.efficiency)
        elif time.time() >= deadline:
            finish(swarm, swarm_pb2.SWARM_STATE_COMPLETED, swarm_pb2.TERMINATION_TIMEOUT)
        terminal = swarm.state != swarm_pb2.SWARM_STATE_RUNNING
        snap = b""
        if terminal or st.iteration % ctx.snapshot_every == 0:
            snap = json.dumps(opt.snapshot()).encode()
        write_record = (
            terminal or bool(snap) or (time.monotonic() - last_record >= ctx.record_interval_s)
        )
        res = await ctx.store.commit(
            ctx.lease,
            stats=swarm_pb2.WatchSwarmResponse(stats=stats, state=swarm.state),
            swarm=swarm if write_record else None,
            snapshot=snap,
        )
        if write_record:
            last_record = time.monotonic()
        if terminal:
            return
        if res.stop_requested:
            finish(swarm, swarm_pb2.SWARM_STATE_STOPPED, swarm_pb2.TERMINATION_STOPPED)
            await ctx.store.commit(
                ctx.lease,
                stats=swarm_pb2.WatchSwarmResponse(stats=stats, state=swarm.state),
                swarm=swarm,
                snapshot=json.dumps(opt.snapshot()).encode(),
            )
            return


def _termination(opt: SwarmOptimizer) -> swarm_pb2.Termination.ValueType:
    if opt.converged:
        return swarm_pb2.TERMINATION_CONVERGED
    return swarm_pb2.TERMINATION_MAX_ITERATIONS


def _result(swarm: swarm_pb2.Swarm, opt: SwarmOptimizer) -> None:
    r = swarm.optimization
    del r.best_position[:]
    best = opt.best_fitness
    if math.isfinite(best):
        r.best_position.extend(opt.best_position.tolist())
    r.best_fitness = best
    r.evaluations = opt.evaluations
    r.iterations = opt.iteration


def _convergence_score(rel: float, spread: float, converged: bool, cfg: SwarmConfig) -> float:
    if converged:
        return 1.0
    a = 0.0 if not math.isfinite(rel) else min(1.0, cfg.convergence_threshold / max(rel, 1e-300))
    b = min(1.0, cfg.spread_threshold / max(spread, 1e-300))
    return a * b
