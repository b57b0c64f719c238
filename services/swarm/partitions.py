"""Driver of partition work: data partitions spread over worker agents by
foraging (the engine's PartitionScheduler), one AgentService.Execute each.

Exactly once. The Redis HASH ``am:swarm:{swarms}:parts:<id>`` is the ledger: a result
is counted by a fenced HSETNX of its partition index, so the first result
wins whichever agent, attempt or driver produced it, and the aggregate is
computed from that HASH alone (``math.fsum`` per field, exactly rounded, so
the order of completion does not matter). Every Execute carries the same
idempotency key ``<swarm_id>/p<index>`` on every attempt, so an agent that
already did the work returns its stored output.

Failures. An agent that fails a call with UNAVAILABLE (dead, unreachable) is
removed from the scheduler, which reclaims its leases and puts their
partitions at the front of the queue; it is quarantined (2 s, doubling up to
60 s) before a registry refresh may add it back, because a SIGKILLed agent
stays ACTIVE in the registry until its heartbeat TTL runs out. Other errors
and timeouts fail the lease; after ``max_attempts`` attempts the partition,
and so the swarm, fails.

Resume. A replica that takes the swarm over restores the scheduler from the
last snapshot (pheromone trails, attempts, queue), reclaims every lease the
lost driver had in flight (those calls died with it), and re-reads the
ledger. A partition the ledger already counts is marked done in the
scheduler when it comes up again, without calling any agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass

import grpc
from google.protobuf import json_format, struct_pb2

from agentmesh.agent.v1 import agent_pb2
from agentmesh.catalog import AgentInfo, find_agents
from agentmesh.runtime.errors import AgentMeshError
from agentmesh.server.swarm import metrics
from agentmesh.server.swarm.driver import DriverContext, deadline_of, finish, now_ts, role_counts_pb
from agentmesh.server.swarm.engine import PartitionScheduler, UnknownNameError
from agentmesh.server.swarm.engine.partitions import Lease
from agentmesh.swarm.v1 import swarm_pb2

log = logging.getLogger("agentmesh.swarm.partitions")

QUARANTINE_MIN_S = 2.0
QUARANTINE_MAX_S = 60.0
#: Longest wait between two scheduling rounds, seconds.
TICK_S = 0.2


@dataclass
class _Call:
    lease: Lease
    agent: AgentInfo
    started: float


def _index(partition_id: str) -> int:
    return int(partition_id[1:])


def _numeric_fields(output: struct_pb2.Struct, wanted: list[str]) -> dict[str, float]:
    """The aggregated fields of one output.

    Raises:
        ValueError: when a wanted field is missing or not a finite number.
    """
    out: dict[str, float] = {}
    if wanted:
        for name in wanted:
            v = output.fields.get(name)
            if v is None or v.WhichOneof("kind") != "number_value":
                raise ValueError(f"output field {name!r} missing or not a number")
            out[name] = v.number_value
    else:
        for name, v in output.fields.items():
            if v.WhichOneof("kind") == "number_value":
                out[name] = v.number_value
    if not all(math.isfinite(x) for x in out.values()):
        raise ValueError("output fields must be finite numbers")
    return out


def aggregate(
    values: dict[int, dict[str, float]], owner: dict[int, str]
) -> tuple[dict[str, float], dict[str, int]]:
    """Totals per field (math.fsum, exactly rounded) and counted partitions per agent."""
    cols: dict[str, list[float]] = {}
    for vals in values.values():
        for k, v in vals.items():
            cols.setdefault(k, []).append(v)
    by_agent: dict[str, int] = {}
    for agent in owner.values():
        by_agent[agent] = by_agent.get(agent, 0) + 1
    return {k: math.fsum(v) for k, v in cols.items()}, by_agent


class PartitionRun:
    """State of one partition swarm while this replica drives it."""

    def __init__(self, ctx: DriverContext, swarm: swarm_pb2.Swarm) -> None:
        self.ctx = ctx
        self.swarm = swarm
        task = swarm.task
        self.work = task.partition_work
        self.n = task.data_partitions
        self.timeout_s = self.work.partition_timeout.ToNanoseconds() / 1e9
        self.base_input = json_format.MessageToDict(self.work.input)
        self.wanted = list(self.work.aggregate_fields)
        self.capacity = max(1, self.work.max_in_flight_per_agent)
        self.max_agents = task.max_agents  # 0 = every matching agent
        self.sched: PartitionScheduler
        self.ledger: dict[int, bytes] = {}
        self.owner: dict[int, str] = {}  # partition -> agent whose result counted
        self.values: dict[int, dict[str, float]] = {}  # partition -> counted values
        self.finished: asyncio.Queue[int] = asyncio.Queue()  # lease ids of ended calls
        self.calls: dict[int, asyncio.Task[agent_pb2.ExecuteResponse]] = {}
        self.meta: dict[int, _Call] = {}
        self.agents: dict[str, AgentInfo] = {}
        self.quarantine: dict[str, tuple[float, float]] = {}  # id -> (until, next backoff)
        self.last_error = ""
        self.refreshed = 0.0
        self.t0 = time.monotonic()
        self.done_at_start = 0

    # ---- setup ----------------------------------------------------------------
    async def load(self) -> None:
        sid = self.swarm.swarm_id
        for index, raw in (await self.ctx.store.partition_results(sid)).items():
            self._record(index, raw)
        self.done_at_start = len(self.ledger)
        snap = await self.ctx.store.load_snapshot(sid)
        if snap:
            self.sched = PartitionScheduler.from_snapshot(json.loads(snap), clock=time.time)
            # The lost driver's calls died with it: reclaim their leases now
            # instead of waiting for their deadlines. Agents come back with
            # the next registry refresh (their trails are kept).
            for aid, st in self.sched.stats().agents.items():
                if st.alive:
                    self.swarm.partitions.reassignments += len(self.sched.remove_agent(aid))
            log.info(
                "restored partition scheduler",
                extra={"swarm_id": sid, "counted": len(self.ledger)},
            )
        else:
            self.sched = PartitionScheduler(
                [f"p{i}" for i in range(self.n)],
                lease_s=self.timeout_s,
                clock=time.time,
                seed=self.swarm.seed % (2**63),
                max_attempts=self.work.max_attempts,
            )

    # ---- agents -----------------------------------------------------------------
    async def refresh_agents(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.refreshed < self.ctx.agent_refresh_s:
            return
        self.refreshed = now
        found = {a.agent_id: a for a in await find_agents(self.ctx.redis, self.work.selector)}
        # Agents the shared breakers or outlier ejection keep out get no
        # partitions until they are eligible again (as router traffic skips them).
        eligible = await self.ctx.agents.eligible(self.work.selector, self.work.action)
        found = {aid: a for aid, a in found.items() if aid in eligible}
        known = self.sched.stats().agents
        for aid, st in known.items():
            if st.alive and aid not in found:
                self._drop_agent(aid, quarantine=False)
        # max_agents caps the fleet: agents already working keep their place,
        # newcomers join in id order while there is room.
        room = self.max_agents - len(self.agents) if self.max_agents else len(found)
        for aid in sorted(found):
            info = found[aid]
            q = self.quarantine.get(aid)
            if q is not None and now < q[0]:
                continue
            seen = known.get(aid)
            if seen is None or not seen.alive:
                if room <= 0:
                    continue
                self.sched.add_agent(aid, max_in_flight=self.capacity)
                room -= 1
            self.agents[aid] = info

    def _drop_agent(self, aid: str, *, quarantine: bool) -> None:
        reclaimed = self.sched.remove_agent(aid)
        self.swarm.partitions.reassignments += len(reclaimed)
        metrics.PARTITIONS.labels("reassigned").inc(len(reclaimed))
        self.agents.pop(aid, None)
        if quarantine:
            _, backoff = self.quarantine.get(aid, (0.0, QUARANTINE_MIN_S))
            self.quarantine[aid] = (time.monotonic() + backoff, min(backoff * 2, QUARANTINE_MAX_S))

    # ---- dispatch -----------------------------------------------------------------
    def _input(self, index: int) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(self.base_input)
        if self.work.partition_inputs:
            s.update(json_format.MessageToDict(self.work.partition_inputs[index]))
        s.update({"partition_index": index, "partition_count": self.n})
        return s

    async def dispatch(self) -> None:
        while True:
            lease = self.sched.assign()
            if lease is None:
                return
            index = _index(lease.partition_id)
            if index in self.ledger:
                self._complete_from_ledger(lease)
                continue
            agent = self.agents.get(lease.agent_id)
            if agent is None:  # scheduled on an agent we no longer reach
                self.sched.fail(lease.lease_id)
                continue
            req = agent_pb2.ExecuteRequest(
                action=self.work.action,
                input=self._input(index),
                idempotency_key=f"{self.swarm.swarm_id}/p{index}",
                attempt=lease.attempt,
                metadata={"swarm_id": self.swarm.swarm_id, "partition": str(index)},
            )
            fut: asyncio.Task[agent_pb2.ExecuteResponse] = asyncio.ensure_future(
                self.ctx.agents.execute(
                    self.work.selector, agent.agent_id, req, timeout_s=self.timeout_s
                )
            )
            lid = lease.lease_id
            fut.add_done_callback(lambda _, lid=lid: self.finished.put_nowait(lid))  # type: ignore[misc]
            self.calls[lease.lease_id] = fut
            self.meta[lease.lease_id] = _Call(lease, agent, time.monotonic())

    def _complete_from_ledger(self, lease: Lease) -> None:
        # Counted by an earlier driver: mark it done without moving the
        # agent's trail (throughput = its current trail, or one lease).
        st = self.sched.stats().agents.get(lease.agent_id)
        tau = st.pheromone if st is not None else None
        elapsed = 1.0 / tau if tau else self.timeout_s
        self.sched.complete(lease.lease_id, records=1, elapsed_s=elapsed)

    # ---- results ----------------------------------------------------------------
    async def collect(self, wait_s: float) -> None:
        """Wait up to `wait_s` for results, then settle every finished call at once.

        Finished calls announce themselves on a queue (no O(agents) asyncio.wait
        per result), and their ledger writes go to Redis in one fenced round trip.
        """
        try:
            first = await asyncio.wait_for(self.finished.get(), wait_s)
        except TimeoutError:
            return
        lids = [first]
        while not self.finished.empty():
            lids.append(self.finished.get_nowait())
        ok: list[tuple[_Call, agent_pb2.ExecuteResponse, dict[str, float]]] = []
        for lid in lids:
            task = self.calls.pop(lid, None)
            call = self.meta.pop(lid, None)
            if task is None or call is None or task.cancelled():
                continue  # superseded and cancelled
            settled = self._check(call, task)
            if settled is not None:
                ok.append((call, *settled))
        if not ok:
            return
        batch = []
        for call, resp, values in ok:
            agent_id = resp.agent_id or call.lease.agent_id
            record = json.dumps({"agent": agent_id, "values": values}).encode()
            batch.append((_index(call.lease.partition_id), record))
        counted = await self.ctx.store.count_partitions(self.ctx.lease, batch)
        missing = False
        for (index, record), new in zip(batch, counted, strict=True):
            if new:
                self._record(index, record)
                metrics.PARTITIONS.labels("counted").inc()
            else:
                metrics.PARTITIONS.labels("duplicate").inc()
                missing = missing or index not in self.ledger
        if missing:  # counted by another driver meanwhile: take its record
            for index, raw in (await self.ctx.store.partition_results(self.swarm.swarm_id)).items():
                if index not in self.ledger:
                    self._record(index, raw)
        for call, _, _ in ok:
            elapsed = time.monotonic() - call.started
            completion = self.sched.complete(call.lease.lease_id, records=1, elapsed_s=elapsed)
            if completion.superseded_lease_id is not None:
                other = self.calls.pop(completion.superseded_lease_id, None)
                self.meta.pop(completion.superseded_lease_id, None)
                if other is not None:
                    other.cancel()

    def _record(self, index: int, raw: bytes) -> None:
        self.ledger[index] = raw
        rec = json.loads(raw)
        self.owner[index] = rec["agent"]
        self.values[index] = {k: float(v) for k, v in rec["values"].items()}

    def _check(
        self, call: _Call, task: asyncio.Task[agent_pb2.ExecuteResponse]
    ) -> tuple[agent_pb2.ExecuteResponse, dict[str, float]] | None:
        """The response and its aggregated values, or None after failing the lease."""
        lease = call.lease
        exc = task.exception()
        if exc is not None:
            code: grpc.StatusCode | None = None
            if isinstance(exc, grpc.aio.AioRpcError):
                code = exc.code()
                self.last_error = f"{lease.agent_id}: {code.name}"
            elif isinstance(exc, AgentMeshError):  # refused by a guardrail, nothing sent
                code = exc.code
                self.last_error = f"{lease.agent_id}: {code.name}: {exc.message}"
            else:
                self.last_error = f"{lease.agent_id}: {type(exc).__name__}"
            metrics.PARTITIONS.labels("failed").inc()
            if self.sched.fail(lease.lease_id) is not None:
                self.swarm.partitions.reassignments += 1
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                # Dead or unreachable: everything it holds goes elsewhere.
                with contextlib.suppress(UnknownNameError):
                    self._drop_agent(lease.agent_id, quarantine=True)
            return None
        resp = task.result()
        try:
            return resp, _numeric_fields(resp.output, self.wanted)
        except ValueError as e:
            self.last_error = f"{lease.agent_id}: {e}"
            metrics.PARTITIONS.labels("failed").inc()
            if self.sched.fail(lease.lease_id) is not None:
                self.swarm.partitions.reassignments += 1
            return None

    # ---- reporting ---------------------------------------------------------------
    def fill(self) -> swarm_pb2.SwarmStats:
        st = self.sched.stats()
        stats = self.swarm.stats
        stats.Clear()
        alive = [a for a in st.agents.values() if a.alive]
        foragers = sum(1 for a in alive if a.pheromone is not None)
        roles = {"forager": foragers, "scout": len(alive) - foragers}
        self.ctx.set_roles(roles)
        stats.role_counts.extend(role_counts_pb(roles))
        done = len(self.ledger)
        stats.partitions_done = done
        stats.partitions_in_flight = len(self.calls)
        stats.partitions_total = self.n
        redone = self.swarm.partitions.reassignments
        stats.efficiency = done / (done + redone) if done + redone else 0.0
        stats.convergence = done / self.n if self.n else 1.0
        stats.throughput_per_second = (done - self.done_at_start) / max(
            time.monotonic() - self.t0, 1e-9
        )
        stats.active_agents = len(alive)
        stats.time.CopyFrom(now_ts())
        totals, by_agent = aggregate(self.values, self.owner)
        r = self.swarm.partitions
        r.totals.clear()
        r.totals.update(totals)
        r.partitions_by_agent.clear()
        r.partitions_by_agent.update(by_agent)
        r.partitions_done = done
        r.partitions_total = self.n
        return stats


async def drive_partitions(ctx: DriverContext, swarm: swarm_pb2.Swarm) -> None:
    """Run a partition swarm to its end (see the module docstring).

    Raises:
        LeaseLost: when another replica took the swarm over.
    """
    run = PartitionRun(ctx, swarm)
    await run.load()
    deadline = deadline_of(swarm)
    iteration = swarm.stats.iteration
    last_commit = 0.0
    rounds = 0
    try:
        while True:
            await run.refresh_agents()
            reclaimed = run.sched.expire()
            if reclaimed:
                swarm.partitions.reassignments += len(reclaimed)
                metrics.PARTITIONS.labels("reassigned").inc(len(reclaimed))
            await run.dispatch()
            all_counted = len(run.ledger) == run.n
            failed = run.sched.stats().failed if run.sched.finished else 0
            ended = all_counted or (run.sched.finished and not run.calls)
            due = time.monotonic() - last_commit >= ctx.record_interval_s
            if ended or due:
                iteration += 1
                rounds += 1
                swarm.stats.iteration = iteration
                stats = run.fill()
                stats.iteration = iteration
                if all_counted:
                    finish(
                        swarm,
                        swarm_pb2.SWARM_STATE_COMPLETED,
                        swarm_pb2.TERMINATION_PARTITIONS_DONE,
                    )
                    metrics.SWARM_EFFICIENCY.set(stats.efficiency)
                elif ended:
                    finish(
                        swarm,
                        swarm_pb2.SWARM_STATE_FAILED,
                        swarm_pb2.TERMINATION_ERROR,
                        error=f"{failed} partitions failed after "
                        f"{run.work.max_attempts} attempts; last error: {run.last_error}",
                    )
                elif time.time() >= deadline:
                    finish(
                        swarm,
                        swarm_pb2.SWARM_STATE_FAILED,
                        swarm_pb2.TERMINATION_TIMEOUT,
                        error=f"timed out with {len(run.ledger)}/{run.n} partitions done",
                    )
                terminal = swarm.state != swarm_pb2.SWARM_STATE_RUNNING
                snap = b""
                if terminal or rounds % ctx.snapshot_every == 0:
                    snap = json.dumps(run.sched.snapshot()).encode()
                res = await ctx.store.commit(
                    ctx.lease,
                    stats=swarm_pb2.WatchSwarmResponse(stats=stats, state=swarm.state),
                    swarm=swarm,
                    snapshot=snap,
                )
                last_commit = time.monotonic()
                if terminal:
                    return
                if res.stop_requested:
                    finish(swarm, swarm_pb2.SWARM_STATE_STOPPED, swarm_pb2.TERMINATION_STOPPED)
                    await ctx.store.commit(
                        ctx.lease,
                        stats=swarm_pb2.WatchSwarmResponse(stats=stats, state=swarm.state),
                        swarm=swarm,
                        snapshot=json.dumps(run.sched.snapshot()).encode(),
                    )
                    return
            await run.collect(TICK_S)
    finally:
        for t in run.calls.values():
            t.cancel()
