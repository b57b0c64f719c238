"""Saga steps that deploy a swarm on the swarm engine and wait for its end.

A swarm step (`Step.swarm`, saga.proto `SwarmStage`) is the seeds' "pipeline
with swarm-based parallel processing": a pipeline stage fans a task out over
a swarm of agents and hands the aggregate to the next stage. The swarm's id
is derived from the step's idempotency key, and DeploySwarm is idempotent per
id (the same id and task return the existing swarm), so a retried attempt, or
the attempt of another coordinator after a crash, re-attaches to the swarm
the first one started instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from agentmesh.runtime.errors import from_rpc_error
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.agents import CallError
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc

_FINAL = {
    swarm_pb2.SWARM_STATE_COMPLETED,
    swarm_pb2.SWARM_STATE_FAILED,
    swarm_pb2.SWARM_STATE_STOPPED,
}


def swarm_id_for(key: str) -> str:
    """The swarm id of the step attempt with idempotency key `key`:
    "sg-" + the first 40 hex digits of SHA-256(key) (a valid swarm id)."""
    return "sg-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def stage_task(step: saga_pb2.Step, input: Mapping[str, Any]) -> swarm_pb2.SwarmTask:
    """The SwarmTask one attempt deploys: the stage's task, with the step's
    mapped input merged into `partition_work.input` (partition work) or
    `agent_evaluated.parameters` (agent-evaluated fitness) when the step has
    an `input_mapping`, so an earlier stage's output can feed the swarm.
    The result is the same for every attempt of one step (inputs are fixed
    once the step starts), as DeploySwarm's idempotency requires."""
    task = swarm_pb2.SwarmTask()
    task.CopyFrom(step.swarm.task)
    if step.input_mapping and input:
        kind = task.WhichOneof("fitness")
        if kind == "partition_work":
            task.partition_work.input.update(dict(input))
        elif kind == "agent_evaluated":
            task.agent_evaluated.parameters.update(dict(input))
    return task


def swarm_output(swarm: swarm_pb2.Swarm) -> dict[str, Any]:
    """The step output of a COMPLETED swarm (see saga.proto SwarmStage)."""
    kind = swarm.WhichOneof("result")
    result = (
        json_format.MessageToDict(getattr(swarm, kind), preserving_proto_field_name=True)
        if kind
        else {}
    )
    return {
        "swarm_id": swarm.swarm_id,
        "state": swarm_pb2.SwarmState.Name(swarm.state),
        "termination": swarm_pb2.Termination.Name(swarm.termination),
        "efficiency": swarm.stats.efficiency,
        "provenance_hash": swarm.provenance_hash,
        "result": result,
    }


class SwarmStages:
    """Runs swarm steps against the swarm engine at one address.

    Args:
        channel: a channel to the swarm daemon (closed by `close`).
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stub = swarm_pb2_grpc.SwarmServiceStub(channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def execute(
        self,
        step: saga_pb2.Step,
        *,
        input: Mapping[str, Any],
        key: str,
        timeout_ms: float,
    ) -> dict[str, Any]:
        """Deploy (or re-attach to) the step's swarm and wait for its end.

        Raises:
            CallError: DeploySwarm's status (INVALID_ARGUMENT for a bad task,
                FAILED_PRECONDITION when too few agents match, UNAVAILABLE),
                FAILED_PRECONDITION when the swarm FAILED or was STOPPED,
                DEADLINE_EXCEEDED when it is still running at the timeout.
        """
        deadline = time.monotonic() + timeout_ms / 1000.0
        sid = swarm_id_for(key)
        try:
            resp = await self._stub.DeploySwarm(
                swarm_pb2.DeploySwarmRequest(task=stage_task(step, input), swarm_id=sid),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            swarm = resp.swarm
            while swarm.state not in _FINAL:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallError(
                        "DEADLINE_EXCEEDED", f"swarm {sid} still running at the step timeout"
                    )
                swarm = await self._wait(sid, timeout_s=left)
        except grpc.aio.AioRpcError as e:
            raise CallError.of(from_rpc_error(e)) from e
        if swarm.state != swarm_pb2.SWARM_STATE_COMPLETED:
            raise CallError(
                "FAILED_PRECONDITION",
                f"swarm {sid} ended {swarm_pb2.SwarmState.Name(swarm.state)}"
                + (f": {swarm.error_message}" if swarm.error_message else ""),
            )
        return swarm_output(swarm)

    async def _wait(self, sid: str, *, timeout_s: float) -> swarm_pb2.Swarm:
        """The swarm once WatchSwarm sends its final record, or its current
        record when the stream ends first (a swarm daemon restart)."""
        call = self._stub.WatchSwarm(swarm_pb2.WatchSwarmRequest(swarm_id=sid), timeout=timeout_s)
        try:
            async for m in call:
                if m.HasField("swarm"):
                    return m.swarm
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        finally:
            call.cancel()
        got = await self._stub.GetSwarm(
            swarm_pb2.GetSwarmRequest(swarm_id=sid), timeout=max(0.001, timeout_s)
        )
        return got.swarm
