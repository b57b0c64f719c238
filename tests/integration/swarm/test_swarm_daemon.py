"""SwarmService against a real swarm daemon process on real Redis: deploy,
get, list, stop, watch; bad input; every behaviour; agent-evaluated fitness."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.swarm.v1 import swarm_pb2 as pb
from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.integration.swarm.conftest import unique_capability

pytestmark = pytest.mark.integration


def sphere_task(**kw: Any) -> pb.SwarmTask:
    task = pb.SwarmTask(
        agents_required=20,
        max_iterations=300,
        seed=11,
        builtin=pb.BuiltinFitness(
            function=pb.BENCHMARK_FUNCTION_SPHERE, space=pb.SearchSpace(dimensions=5)
        ),
    )
    for k, v in kw.items():
        setattr(task, k, v)
    return task


async def watch_all(
    stub: swarm_pb2_grpc.SwarmServiceStub, swarm_id: str, start: int = 1
) -> list[pb.WatchSwarmResponse]:
    out = []
    async for m in stub.WatchSwarm(
        pb.WatchSwarmRequest(swarm_id=swarm_id, start_iteration=start), timeout=60
    ):
        out.append(m)
    return out


async def test_deploy_watch_get_list(swarm_stub: swarm_pb2_grpc.SwarmServiceStub) -> None:
    resp = await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=sphere_task()))
    sid = resp.swarm.swarm_id
    assert resp.swarm.state in (pb.SWARM_STATE_PENDING, pb.SWARM_STATE_RUNNING)
    # Defaults are written out in the stored task.
    assert resp.swarm.task.behavior == pb.BEHAVIOR_SWARMING
    assert list(resp.swarm.task.builtin.space.lower_bounds) == [-5.12]

    msgs = await watch_all(swarm_stub, sid)
    iterations = [m.stats.iteration for m in msgs]
    assert iterations == list(range(1, len(msgs) + 1)), "every iteration exactly once, in order"
    final = msgs[-1]
    assert final.HasField("swarm") and not any(m.HasField("swarm") for m in msgs[:-1])
    swarm = final.swarm
    assert swarm.state == pb.SWARM_STATE_COMPLETED
    assert swarm.termination in (pb.TERMINATION_CONVERGED, pb.TERMINATION_MAX_ITERATIONS)
    assert swarm.optimization.best_fitness < 1e-6
    assert len(swarm.optimization.best_position) == 5
    assert swarm.optimization.iterations == len(msgs)
    assert msgs[0].stats.best_fitness > swarm.optimization.best_fitness
    assert sum(rc.count for rc in msgs[0].stats.role_counts) == 20

    got = (await swarm_stub.GetSwarm(pb.GetSwarmRequest(swarm_id=sid))).swarm
    assert got == swarm

    # Resume a watch from the middle: replays the rest, then the final message.
    half = len(msgs) // 2
    tail = await watch_all(swarm_stub, sid, start=half)
    assert [m.stats.iteration for m in tail] == iterations[half - 1:]
    assert tail[-1].swarm.swarm_id == sid

    # Pagination visits every swarm once, newest first.
    other = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=sphere_task()))).swarm
    seen: list[str] = []
    token = ""
    while True:
        page = await swarm_stub.ListSwarms(pb.ListSwarmsRequest(page_size=1, page_token=token))
        seen += [s.swarm_id for s in page.swarms]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert seen.index(other.swarm_id) < seen.index(sid)
    done = await swarm_stub.ListSwarms(
        pb.ListSwarmsRequest(page_size=1000, states=[pb.SWARM_STATE_COMPLETED])
    )
    assert sid in [s.swarm_id for s in done.swarms]
    assert all(s.state == pb.SWARM_STATE_COMPLETED for s in done.swarms)


async def test_same_seed_same_run(swarm_stub: swarm_pb2_grpc.SwarmServiceStub) -> None:
    task = sphere_task(behavior=pb.BEHAVIOR_FORAGING, max_iterations=80)
    a = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    b = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    ra, rb = (await watch_all(swarm_stub, a))[-1].swarm, (await watch_all(swarm_stub, b))[-1].swarm
    assert ra.optimization.best_fitness == rb.optimization.best_fitness
    assert list(ra.optimization.best_position) == list(rb.optimization.best_position)
    task.seed = 12
    c = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    rc = (await watch_all(swarm_stub, c))[-1].swarm
    assert list(rc.optimization.best_position) != list(ra.optimization.best_position)


async def test_deploy_is_idempotent_by_swarm_id(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub,
) -> None:
    req = pb.DeploySwarmRequest(task=sphere_task(), swarm_id="idem-test-1")
    first = (await swarm_stub.DeploySwarm(req)).swarm
    again = (await swarm_stub.DeploySwarm(req)).swarm
    assert first.swarm_id == again.swarm_id == "idem-test-1"
    assert first.create_time == again.create_time
    req.task.seed = 99
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(req)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_stop(swarm_stub: swarm_pb2_grpc.SwarmServiceStub) -> None:
    task = pb.SwarmTask(
        agents_required=30,
        max_iterations=10_000_000,
        builtin=pb.BuiltinFitness(
            function=pb.BENCHMARK_FUNCTION_RASTRIGIN, space=pb.SearchSpace(dimensions=30)
        ),
    )
    sid = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    # Wait until it runs, then stop it.
    async for m in swarm_stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=sid), timeout=30):
        if m.stats.iteration >= 5:
            break
    stopped = (await swarm_stub.StopSwarm(pb.StopSwarmRequest(swarm_id=sid))).swarm
    assert stopped.state == pb.SWARM_STATE_STOPPED
    assert stopped.termination == pb.TERMINATION_STOPPED
    assert stopped.optimization.iterations >= 5
    assert len(stopped.optimization.best_position) == 30
    again = (await swarm_stub.StopSwarm(pb.StopSwarmRequest(swarm_id=sid))).swarm
    assert again.state == pb.SWARM_STATE_STOPPED
    # A watch of an ended swarm gets one final message.
    msgs = await watch_all(swarm_stub, sid, start=0)
    assert len(msgs) == 1 and msgs[0].swarm.state == pb.SWARM_STATE_STOPPED

    done_id = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=sphere_task()))).swarm
    await watch_all(swarm_stub, done_id.swarm_id)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.StopSwarm(pb.StopSwarmRequest(swarm_id=done_id.swarm_id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _violations(e: grpc.aio.AioRpcError) -> dict[str, str]:
    err = from_rpc_error(e)
    bad = err.detail(error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations}


def _builtin(d: int, lo: list[float] | None = None, hi: list[float] | None = None) -> pb.SwarmTask:
    return pb.SwarmTask(
        builtin=pb.BuiltinFitness(
            function=pb.BENCHMARK_FUNCTION_SPHERE,
            space=pb.SearchSpace(dimensions=d, lower_bounds=lo or [], upper_bounds=hi or []),
        )
    )


@pytest.mark.parametrize(
    ("task", "field"),
    [
        (_builtin(0), "task.builtin.space.dimensions"),
        (_builtin(3, [1.0], [-1.0]), "task.builtin.space.upper_bounds[0]"),
        (_builtin(3, [0, 0, 5], [1, 1, 1]), "task.builtin.space.upper_bounds[2]"),
        (_builtin(3, [0, 0], [1, 1]), "task.builtin.space.lower_bounds"),
        (pb.SwarmTask(behavior=99, builtin=_builtin(2).builtin), "task.behavior"),
        (pb.SwarmTask(), "task.fitness"),
        (pb.SwarmTask(builtin=pb.BuiltinFitness(space=pb.SearchSpace(dimensions=2))),
         "task.builtin.function"),
        (pb.SwarmTask(convergence_threshold=2.0, builtin=_builtin(2).builtin),
         "task.convergence_threshold"),
        (pb.SwarmTask(data_partitions=0, partition_work=pb.PartitionWork(action="x")),
         "task.partition_work.selector.capabilities"),
        (pb.SwarmTask(behavior=pb.BEHAVIOR_FLOCKING, data_partitions=3,
                      partition_work=pb.PartitionWork(action="x")), "task.behavior"),
        (pb.SwarmTask(agent_evaluated=pb.AgentFitness(objective="o", space=pb.SearchSpace(
            dimensions=2))), "task.agent_evaluated.space.lower_bounds"),
    ],
)
async def test_bad_input(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub, task: pb.SwarmTask, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in _violations(e.value)


async def test_other_errors(swarm_stub: swarm_pb2_grpc.SwarmServiceStub) -> None:
    cap = unique_capability()
    task = pb.SwarmTask(
        agents_required=3,
        data_partitions=10,
        partition_work=pb.PartitionWork(
            selector=common_pb2.AgentSelector(capabilities=[cap]), action="emissions"
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = from_rpc_error(e.value)
    pf = err.detail(error_details_pb2.PreconditionFailure)
    assert isinstance(pf, error_details_pb2.PreconditionFailure)
    assert "0 ACTIVE/DEGRADED agents" in pf.violations[0].description

    for call in (
        swarm_stub.GetSwarm(pb.GetSwarmRequest(swarm_id="nope")),
        swarm_stub.StopSwarm(pb.StopSwarmRequest(swarm_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await watch_all(swarm_stub, "nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.ListSwarms(pb.ListSwarmsRequest(page_token="!!"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=sphere_task(), swarm_id="a b"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


BEHAVIOURS = [
    pb.BEHAVIOR_FORAGING, pb.BEHAVIOR_FLOCKING, pb.BEHAVIOR_SWARMING,
    pb.BEHAVIOR_DISPERSING, pb.BEHAVIOR_CLUSTERING, pb.BEHAVIOR_MIGRATING,
]


async def test_each_behaviour(swarm_stub: swarm_pb2_grpc.SwarmServiceStub) -> None:
    """Every behaviour runs through the daemon; the role mix and spread follow it."""
    results: dict[int, list[pb.WatchSwarmResponse]] = {}
    ids = {}
    for b in BEHAVIOURS:
        task = sphere_task(behavior=b, max_iterations=40, agents_required=30, seed=5)
        task.convergence_threshold = 1e-300  # run all 40 iterations
        ids[b] = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    for b, sid in ids.items():
        results[b] = await watch_all(swarm_stub, sid)
    for b, msgs in results.items():
        final = msgs[-1].swarm
        name = pb.Behavior.Name(b)
        assert final.state == pb.SWARM_STATE_COMPLETED, name
        assert final.task.behavior == b
        assert final.optimization.best_fitness < msgs[0].stats.best_fitness, name
        roles = {rc.role: rc.count for rc in msgs[-1].stats.role_counts}
        assert sum(roles.values()) == 30, name
        if b == pb.BEHAVIOR_SWARMING:
            assert roles["worker"] == 30  # canonical PSO
        if b == pb.BEHAVIOR_FORAGING:
            assert roles["queen"] == 1 and roles["forager"] > 0
    spread = {b: msgs[20].stats.spread for b, msgs in results.items()}
    assert spread[pb.BEHAVIOR_DISPERSING] > spread[pb.BEHAVIOR_CLUSTERING]


async def test_agent_evaluated(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub, spawn_agent: Any
) -> None:
    cap = unique_capability()
    for _ in range(2):
        spawn_agent(cap)
    task = pb.SwarmTask(
        agents_required=16,
        max_iterations=60,
        seed=3,
        agent_evaluated=pb.AgentFitness(
            selector=common_pb2.AgentSelector(capabilities=[cap]),
            objective="sphere",
            space=pb.SearchSpace(dimensions=4, lower_bounds=[-5], upper_bounds=[5]),
        ),
    )
    sid = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    msgs = await watch_all(swarm_stub, sid)
    final = msgs[-1].swarm
    assert final.state == pb.SWARM_STATE_COMPLETED
    assert final.optimization.best_fitness < msgs[0].stats.best_fitness
    assert final.optimization.evaluations == 16 * final.optimization.iterations
    assert msgs[-1].stats.active_agents == 2


async def test_watch_two_clients_and_disconnect(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub,
) -> None:
    """A watcher that goes away does not disturb the swarm or other watchers."""
    task = sphere_task(max_iterations=200)
    task.convergence_threshold = 1e-300
    sid = (await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    call = swarm_stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=sid, start_iteration=1))
    first = await call.read()
    call.cancel()
    assert first.stats.iteration == 1
    live = await asyncio.wait_for(watch_all(swarm_stub, sid, start=0), 60)
    its = [m.stats.iteration for m in live]
    # From now on: the latest iteration, then every later one once, in order.
    assert its == list(range(its[0], its[0] + len(its)))
    assert live[-1].swarm.optimization.iterations == 200 == its[-1]
    msgs = await asyncio.wait_for(watch_all(swarm_stub, sid), 60)
    assert [m.stats.iteration for m in msgs] == list(range(1, 201))
