"""What every swarm driver shares: its context and how it ends a swarm.

A driver runs one swarm to a terminal state while its replica holds the
swarm's lease. It writes only through fenced commits (``store.commit``), so
when the lease is lost it gets ``LeaseLost`` and stops without a trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2

from agentmesh.server.swarm import metrics
from agentmesh.server.swarm.agents import SwarmAgents
from agentmesh.server.swarm.store import Lease, SwarmStore
from agentmesh.swarm.v1 import swarm_pb2

TERMINAL_STATUS = {
    swarm_pb2.SWARM_STATE_COMPLETED: "completed",
    swarm_pb2.SWARM_STATE_FAILED: "failed",
    swarm_pb2.SWARM_STATE_STOPPED: "stopped",
}


@dataclass
class DriverContext:
    """Everything a driver needs.

    Attributes:
        store: swarm persistence.
        redis: the daemon's Redis client (for the registry's indexes).
        lease: the lease this replica holds on the swarm.
        agents: calls to agents, on the one agent path.
        snapshot_every: iterations between engine snapshots.
        record_interval_s: minimum time between swarm record updates between
            snapshots (stats go to the stream every iteration regardless).
        agent_refresh_s: how often partition work and agent evaluation re-read
            the registry for agents that joined or left.
        set_roles: reports this swarm's members by role (for swarm_agents_total).
    """

    store: SwarmStore
    redis: aioredis.Redis
    lease: Lease
    agents: SwarmAgents
    snapshot_every: int
    record_interval_s: float
    agent_refresh_s: float
    set_roles: Callable[[dict[str, int]], None]


def now_ts() -> timestamp_pb2.Timestamp:
    """The current time as a Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def deadline_of(swarm: swarm_pb2.Swarm) -> float:
    """Wall-clock deadline (epoch seconds) from the swarm's first start and timeout.

    Measured from `start_time`, so a resumed swarm does not get a fresh budget.
    """
    start = swarm.start_time.ToNanoseconds() / 1e9 if swarm.HasField("start_time") else time.time()
    timeout = swarm.task.timeout.ToNanoseconds() / 1e9
    return start + timeout


def role_counts_pb(counts: dict[str, int]) -> list[swarm_pb2.RoleCount]:
    """RoleCount messages, in a stable order."""
    return [swarm_pb2.RoleCount(role=r, count=c) for r, c in counts.items()]


def finish(
    swarm: swarm_pb2.Swarm,
    state: swarm_pb2.SwarmState.ValueType,
    termination: swarm_pb2.Termination.ValueType,
    *,
    error: str = "",
) -> None:
    """Mark `swarm` terminal in place and record the metrics of its end."""
    swarm.state = state
    swarm.termination = termination
    swarm.error_message = error
    end = now_ts()
    swarm.end_time.CopyFrom(end)
    if swarm.HasField("start_time"):
        dur_ns = max(0, end.ToNanoseconds() - swarm.start_time.ToNanoseconds())
        swarm.convergence_duration.FromNanoseconds(dur_ns)
        metrics.SWARM_CONVERGENCE_MS.observe(dur_ns / 1e6)
    metrics.SWARM_TASKS.labels(TERMINAL_STATUS[state]).inc()
    metrics.SWARM_TERMINATIONS.labels(termination_label(termination)).inc()


def termination_label(termination: swarm_pb2.Termination.ValueType) -> str:
    """ "converged", "max_iterations", ... from a Termination value."""
    return swarm_pb2.Termination.Name(termination).removeprefix("TERMINATION_").lower()
