"""Swarm provenance hashes, efficiency and max_agents against a real swarm
daemon and real agent processes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from agentmesh.provenance import swarm_provenance_hash, verify_swarm
from agentmesh.swarm.v1 import swarm_pb2 as pb
from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.integration.swarm.conftest import unique_capability
from tests.integration.swarm.test_partitions import assert_exact, emissions_task
from tests.integration.swarm.test_swarm_dynamics import clustering

pytestmark = pytest.mark.integration


async def test_every_record_of_an_optimisation_verifies_and_tampering_shows(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub,
) -> None:
    task = clustering(seed=11)
    task.max_iterations = 400
    deployed = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm
    assert verify_swarm(deployed)  # the record as created
    sid = deployed.swarm_id
    seen: set[str] = set()
    final: pb.Swarm | None = None
    for _ in range(600):  # bounded: the run ends long before
        got = (await swarm_stub.GetSwarm(pb.GetSwarmRequest(swarm_id=sid))).swarm
        assert verify_swarm(got), got.stats.iteration  # running records verify too
        seen.add(got.provenance_hash)
        if got.state == pb.SWARM_STATE_COMPLETED:
            final = got
            break
        await asyncio.sleep(0.02)
    assert final is not None
    assert len(seen) >= 2  # a new hash with each record update
    # Optimisation efficiency: personal-best improvements per evaluation.
    assert 0.0 < final.stats.efficiency < 1.0
    tampered = pb.Swarm()
    tampered.CopyFrom(final)
    tampered.optimization.best_fitness -= 1.0
    assert not verify_swarm(tampered)
    assert swarm_provenance_hash(tampered) != final.provenance_hash


async def test_max_agents_caps_the_partition_fleet(swarm_stub: Any, spawn_agent: Any) -> None:
    cap = unique_capability()
    for _ in range(3):
        spawn_agent(cap)
    task = emissions_task(cap, 12, agents=1)
    task.max_agents = 2
    for _ in range(100):  # bounded wait for registration of at least one agent
        try:
            sid = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
            break
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("agents never registered")
    final: pb.Swarm | None = None
    async for m in swarm_stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=sid), timeout=90):
        if m.HasField("swarm"):
            final = m.swarm
            break
    assert final is not None and final.state == pb.SWARM_STATE_COMPLETED
    assert_exact(final.partitions, 12)
    assert 1 <= len(final.partitions.partitions_by_agent) <= 2
    assert final.partitions.reassignments == 0 and final.stats.efficiency == 1.0
    assert verify_swarm(final)


@pytest.mark.parametrize(
    ("kind", "max_agents", "needle"),
    [("builtin", 3, "must be 0 for built-in"), ("partition", 1, "below agents_required (2)")],
)
async def test_bad_max_agents_is_invalid_argument(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub, kind: str, max_agents: int, needle: str
) -> None:
    task = clustering() if kind == "builtin" else emissions_task(unique_capability(), 4, agents=2)
    task.max_agents = max_agents
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task.max_agents" in (e.value.details() or "") and needle in (e.value.details() or "")
