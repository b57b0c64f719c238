"""The seeds' swarm knobs through the API: boids weights, neighbour radius,
pheromone evaporation and metadata on SwarmTask reach the engine and come
back from GetSwarm; out-of-range values are INVALID_ARGUMENT with field
violations; and an optimisation that runs out of time ends COMPLETED with
TERMINATION_TIMEOUT and its best result so far."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from agentmesh.swarm.v1 import swarm_pb2 as pb
from agentmesh.swarm.v1 import swarm_pb2_grpc

pytestmark = pytest.mark.integration


def clustering(seed: int = 7, **dynamics: Any) -> pb.SwarmTask:
    t = pb.SwarmTask(
        behavior=pb.BEHAVIOR_CLUSTERING, agents_required=20, max_iterations=60, seed=seed,
        convergence_threshold=1e-12, spread_threshold=2.0,
        builtin=pb.BuiltinFitness(function=pb.BENCHMARK_FUNCTION_RASTRIGIN,
                                  space=pb.SearchSpace(dimensions=4)),
    )
    if dynamics:
        t.dynamics.CopyFrom(pb.SwarmDynamics(**dynamics))
    return t


async def run(stub: swarm_pb2_grpc.SwarmServiceStub, task: pb.SwarmTask) -> pb.Swarm:
    sid = (await stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
    async for m in stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=sid), timeout=60):
        if m.HasField("swarm"):
            return m.swarm
    raise AssertionError(f"watch of {sid} ended without the final swarm")


async def test_dynamics_and_metadata_reach_the_engine_and_come_back(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub,
) -> None:
    off = {"boids": pb.BoidsWeights(separation=0, alignment=0, cohesion=0)}
    task = clustering(**off)
    task.metadata.update({"team": "carbon", "ticket": "GL-001"})
    a = await run(swarm_stub, task)
    b = await run(swarm_stub, clustering(**off))
    default = await run(swarm_stub, clustering())
    assert a.state == b.state == default.state == pb.SWARM_STATE_COMPLETED
    got = (await swarm_stub.GetSwarm(pb.GetSwarmRequest(swarm_id=a.swarm_id))).swarm
    assert dict(got.task.metadata) == {"team": "carbon", "ticket": "GL-001"}
    assert got.task.dynamics.boids == pb.BoidsWeights(separation=0, alignment=0, cohesion=0)
    # defaults are written out, so what is stored is what ran
    assert got.task.dynamics.neighbor_radius == pytest.approx(0.1)
    assert got.task.dynamics.pheromone_evaporation == pytest.approx(0.1)
    # Same seed and dynamics: the same run. CLUSTERING's cohesion (0.5)
    # switched off: another run.
    assert list(a.optimization.best_position) == list(b.optimization.best_position)
    assert list(a.optimization.best_position) != list(default.optimization.best_position)


@pytest.mark.parametrize(
    ("dynamics", "field"),
    [
        ({"boids": pb.BoidsWeights(separation=-1)}, "task.dynamics.boids.separation"),
        ({"boids": pb.BoidsWeights(cohesion=11)}, "task.dynamics.boids.cohesion"),
        ({"boids": pb.BoidsWeights(alignment=float("nan"))}, "task.dynamics.boids.alignment"),
        ({"neighbor_radius": 1.5}, "task.dynamics.neighbor_radius"),
        ({"pheromone_evaporation": -0.1}, "task.dynamics.pheromone_evaporation"),
    ],
)
async def test_out_of_range_dynamics_are_invalid_argument(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub, dynamics: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=clustering(**dynamics)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (e.value.details() or ""), e.value.details()


async def test_too_much_metadata_is_invalid_argument(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub,
) -> None:
    many = clustering()
    many.metadata.update({f"k{i}": "v" for i in range(33)})
    long_value = clustering()
    long_value.metadata["note"] = "x" * 257
    for task in (many, long_value):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await swarm_stub.DeploySwarm(pb.DeploySwarmRequest(task=task))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "task.metadata" in (e.value.details() or "")


async def test_a_swarm_out_of_time_ends_termination_timeout(
    swarm_stub: swarm_pb2_grpc.SwarmServiceStub,
) -> None:
    # DISPERSING's separation keeps the spread far above the bound: no convergence.
    task = pb.SwarmTask(
        behavior=pb.BEHAVIOR_DISPERSING, agents_required=100, max_iterations=10_000_000,
        convergence_threshold=1e-12, spread_threshold=1e-12,
        builtin=pb.BuiltinFitness(function=pb.BENCHMARK_FUNCTION_ACKLEY,
                                  space=pb.SearchSpace(dimensions=30)),
    )
    task.timeout.FromMilliseconds(1500)
    done = await run(swarm_stub, task)
    # An optimisation out of time still has a result: the best found so far.
    assert done.state == pb.SWARM_STATE_COMPLETED, done
    assert done.termination == pb.TERMINATION_TIMEOUT
    assert 0 < done.optimization.iterations < 10_000_000
    assert len(done.optimization.best_position) == 30
