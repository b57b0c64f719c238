"""Partition work over real agent processes, and crash recovery of the engine.

* An agent is SIGKILLed mid-run: its partitions are reassigned and the
  aggregate still equals a direct computation exactly.
* The swarm daemon is SIGKILLed mid-swarm and a new one started: it takes
  the lease over once it expires, resumes from the snapshot and finishes,
  for partition work (exact total) and for optimisation (the same result as
  an uninterrupted run with the same seed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.swarm.v1 import swarm_pb2 as pb
from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.integration.swarm.conftest import start_swarm_daemon, unique_capability
from tests.integration.swarm.emissions import direct_total

pytestmark = pytest.mark.integration

SUPPLIERS = 20_000


def emissions_task(cap: str, partitions: int, *, agents: int) -> pb.SwarmTask:
    base = struct_pb2.Struct()
    base.update({"suppliers": SUPPLIERS})
    task = pb.SwarmTask(
        objective="Scope 3 emissions of synthetic suppliers",
        agents_required=agents,
        data_partitions=partitions,
        seed=1,
        partition_work=pb.PartitionWork(
            selector=common_pb2.AgentSelector(capabilities=[cap]),
            action="emissions",
            input=base,
            aggregate_fields=["kg_co2e", "suppliers", "spend_usd"],
            max_attempts=10,
        ),
    )
    task.partition_work.partition_timeout.FromSeconds(5)
    task.timeout.FromSeconds(90)
    return task


async def wait_for(
    stub: swarm_pb2_grpc.SwarmServiceStub, sid: str, pred: Any, timeout_s: float = 60
) -> pb.WatchSwarmResponse:
    """The first watched message that satisfies `pred`."""

    async def go() -> pb.WatchSwarmResponse:
        async for m in stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=sid, start_iteration=1)):
            if pred(m):
                return m
        raise AssertionError("watch ended first")

    return await asyncio.wait_for(go(), timeout_s)


def is_final(m: pb.WatchSwarmResponse) -> bool:
    return m.HasField("swarm")


def assert_exact(result: pb.PartitionResult, partitions: int) -> None:
    want = direct_total(partitions, SUPPLIERS)
    assert dict(result.totals) == want  # exact equality, not approx
    assert result.partitions_done == partitions == result.partitions_total
    assert sum(result.partitions_by_agent.values()) == partitions


async def test_agent_killed_mid_run(swarm_stub: Any, spawn_agent: Any) -> None:
    cap = unique_capability()
    agents = [spawn_agent(cap, delay_ms=20) for _ in range(4)]
    partitions = 160
    task = emissions_task(cap, partitions, agents=4)
    # A short deadline on DeploySwarm must not leak into the agent calls the
    # swarm makes long after DeploySwarm returned.
    sid = (
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task), timeout=0.5)
    ).swarm.swarm_id

    await wait_for(swarm_stub, sid, lambda m: m.stats.partitions_done >= 30)
    victim = agents[0]
    victim.kill()  # SIGKILL: it stays ACTIVE in the registry
    final = (await wait_for(swarm_stub, sid, is_final)).swarm

    assert final.state == pb.SWARM_STATE_COMPLETED, final.error_message
    assert final.termination == pb.TERMINATION_PARTITIONS_DONE
    assert_exact(final.partitions, partitions)
    by_agent = dict(final.partitions.partitions_by_agent)
    assert set(by_agent) <= {a.agent_id for a in agents}
    # The victim stopped counting when it died; the survivors did the rest.
    assert by_agent.get(victim.agent_id, 0) < partitions // 4
    assert sum(by_agent.get(a.agent_id, 0) for a in agents[1:]) >= partitions - 30 - 4


async def test_partitions_spread_by_foraging(swarm_stub: Any, spawn_agent: Any) -> None:
    """A faster agent gets more partitions (pheromone follows throughput)."""
    cap = unique_capability()
    fast = spawn_agent(cap, delay_ms=5)
    slow = spawn_agent(cap, delay_ms=60)
    partitions = 120
    sid = (
        await swarm_stub.DeploySwarm(
            pb.DeploySwarmRequest(task=emissions_task(cap, partitions, agents=2))
        )
    ).swarm.swarm_id
    final = (await wait_for(swarm_stub, sid, is_final)).swarm
    assert final.state == pb.SWARM_STATE_COMPLETED, final.error_message
    assert_exact(final.partitions, partitions)
    by_agent = final.partitions.partitions_by_agent
    assert by_agent[fast.agent_id] > 2 * by_agent[slow.agent_id]


async def test_too_few_agents(swarm_stub: Any, spawn_agent: Any) -> None:
    cap = unique_capability()
    spawn_agent(cap)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=emissions_task(cap, 10, agents=2)))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "found 1 usable agents" in (e.value.details() or "")


async def test_engine_killed_and_restarted_resumes(
    swarm_redis_url: str, tmp_path: Path, spawn_agent: Any
) -> None:
    cap = unique_capability()
    for _ in range(3):
        spawn_agent(cap, delay_ms=25)
    partitions = 150
    # An optimisation that evaluates on agents is slow enough to kill mid-run.
    opt_task = pb.SwarmTask(
        agents_required=12,
        max_iterations=60,
        seed=21,
        behavior=pb.BEHAVIOR_FORAGING,
        agent_evaluated=pb.AgentFitness(
            selector=common_pb2.AgentSelector(capabilities=[cap]),
            objective="rastrigin",
            space=pb.SearchSpace(dimensions=3, lower_bounds=[-5.12], upper_bounds=[5.12]),
        ),
    )
    opt_task.convergence_threshold = 1e-300  # run all iterations

    first = start_swarm_daemon(swarm_redis_url, tmp_path)
    try:
        async with grpc.aio.insecure_channel(first.target) as ch:
            stub = swarm_pb2_grpc.SwarmServiceStub(ch)
            part_id = (
                await stub.DeploySwarm(
                    pb.DeploySwarmRequest(task=emissions_task(cap, partitions, agents=3))
                )
            ).swarm.swarm_id
            opt_id = (await stub.DeploySwarm(pb.DeploySwarmRequest(task=opt_task))).swarm.swarm_id
            await wait_for(stub, part_id, lambda m: m.stats.partitions_done >= 40)
            await wait_for(stub, opt_id, lambda m: m.stats.iteration >= 12)
    finally:
        first.kill()  # SIGKILL: no lease release, no final snapshot

    second = start_swarm_daemon(swarm_redis_url, tmp_path)
    try:
        async with grpc.aio.insecure_channel(second.target) as ch:
            stub = swarm_pb2_grpc.SwarmServiceStub(ch)
            mid = (await stub.GetSwarm(pb.GetSwarmRequest(swarm_id=part_id))).swarm
            assert mid.state == pb.SWARM_STATE_RUNNING
            assert 40 <= mid.partitions.partitions_done < partitions

            part = (await wait_for(stub, part_id, is_final, 90)).swarm
            assert part.state == pb.SWARM_STATE_COMPLETED, part.error_message
            assert part.resumes == 1
            assert part.fencing_token >= 2
            assert_exact(part.partitions, partitions)

            opt = (await wait_for(stub, opt_id, is_final, 90)).swarm
            assert opt.state == pb.SWARM_STATE_COMPLETED, opt.error_message
            assert opt.resumes == 1
            assert opt.optimization.iterations == 60

            # The same task uninterrupted gives bit-identical results.
            again_id = (
                await stub.DeploySwarm(pb.DeploySwarmRequest(task=opt_task))
            ).swarm.swarm_id
            again = (await wait_for(stub, again_id, is_final, 90)).swarm
            assert again.resumes == 0
            assert again.optimization.best_fitness == opt.optimization.best_fitness
            assert list(again.optimization.best_position) == list(
                opt.optimization.best_position
            )
    finally:
        second.stop()
