"""Swarm steps in pipelines: a saga stage deploys a swarm on a real swarm
engine and waits for it, its result feeds the next stage, a bad swarm task
compensates the saga, and retried attempts re-attach to the same swarm."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from agentmesh.provenance import verify_swarm
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.state import struct_to_dict
from agentmesh.server.saga.swarm_steps import swarm_id_for
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc
from tests.integration.saga.conftest import ms, order, start_coordinator, step, wait_final
from tests.integration.swarm.conftest import start_swarm_daemon
from tests.procs import DaemonProcess

pytestmark = pytest.mark.integration
S = saga_pb2



def sphere(*, dims: int = 3, run_for_ms: int = 0) -> swarm_pb2.SwarmTask:
    """A built-in optimisation; with `run_for_ms` it runs until that timeout
    (TERMINATION_TIMEOUT, still COMPLETED) whatever the machine's speed."""
    t = swarm_pb2.SwarmTask(
        behavior=swarm_pb2.BEHAVIOR_SWARMING,
        agents_required=10,
        seed=5,
        max_iterations=100_000 if run_for_ms else 200,
        builtin=swarm_pb2.BuiltinFitness(
            function=swarm_pb2.BENCHMARK_FUNCTION_SPHERE,
            space=swarm_pb2.SearchSpace(dimensions=dims),
        ),
    )
    if run_for_ms:
        # The convergence test needs more iterations than the window: a window
        # as long as the iteration budget means only the timeout ends it.
        t.convergence_window = t.max_iterations
        t.timeout.CopyFrom(ms(run_for_ms))
    return t


@pytest.fixture(scope="module")
def swarm_engine(
    saga_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """A real swarm daemon on the saga tests' Redis."""
    with start_swarm_daemon(saga_redis_url, tmp_path_factory.mktemp("swarm")) as p:
        yield p


@pytest.fixture(scope="module")
def pipeline_coordinator(
    saga_redis_url: str,
    agent: DaemonProcess,
    swarm_engine: DaemonProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DaemonProcess]:
    """A coordinator whose swarm steps go to `swarm_engine`."""
    log_dir = tmp_path_factory.mktemp("saga-swarm")
    with start_coordinator(saga_redis_url, log_dir, "--swarm-target", swarm_engine.target) as p:
        yield p


@pytest.fixture
async def stubs(
    pipeline_coordinator: DaemonProcess, swarm_engine: DaemonProcess
) -> AsyncIterator[tuple[saga_pb2_grpc.SagaServiceStub, swarm_pb2_grpc.SwarmServiceStub]]:
    async with (
        grpc.aio.insecure_channel(pipeline_coordinator.target) as a,
        grpc.aio.insecure_channel(swarm_engine.target) as b,
    ):
        yield saga_pb2_grpc.SagaServiceStub(a), swarm_pb2_grpc.SwarmServiceStub(b)


def pipeline(*stages: saga_pb2.Step) -> saga_pb2.SagaDefinition:
    seq = S.StageGroup(stages=[S.Stage(step=s) for s in stages])
    return S.SagaDefinition(pipeline=S.Stage(sequential=seq))


async def start(stub: saga_pb2_grpc.SagaServiceStub, d: saga_pb2.SagaDefinition) -> S.Saga:
    started = await stub.StartSaga(S.StartSagaRequest(definition=d))
    return await wait_final(stub, started.saga.saga_id, timeout_s=60)


async def test_a_swarm_stage_result_feeds_the_next_stage(stubs, rsync) -> None:
    saga_stub, swarm_stub = stubs
    optimise = S.Step(name="optimise", swarm=S.SwarmStage(task=sphere()))
    report = step(
        "report",
        input_mapping={
            "best": "steps.optimise.result.best_fitness",
            "swarm": "steps.optimise.swarm_id",
        },
    )
    saga = await start(saga_stub, pipeline(step("collect"), optimise, report))
    assert saga.state == S.SAGA_STATE_COMPLETED, saga.error
    out = {s.name: struct_to_dict(s.output) for s in saga.steps}
    got = out["optimise"]
    assert got["state"] == "SWARM_STATE_COMPLETED"
    assert got["swarm_id"] == swarm_id_for(f"{saga.saga_id}/optimise")
    assert got["result"]["best_fitness"] < 1e-3  # the sphere's minimum is 0
    assert out["report"]["echo"] == {
        "best": got["result"]["best_fitness"],
        "swarm": got["swarm_id"],
    }
    # The swarm the step ran is on the engine, and its record verifies.
    swarm = (await swarm_stub.GetSwarm(swarm_pb2.GetSwarmRequest(swarm_id=got["swarm_id"]))).swarm
    assert verify_swarm(swarm) and swarm.provenance_hash == got["provenance_hash"]


async def test_a_bad_swarm_task_compensates_the_pipeline(stubs, rsync) -> None:
    saga_stub, _ = stubs
    bad = S.Step(name="optimise", swarm=S.SwarmStage(task=sphere(dims=0)))
    saga = await start(saga_stub, pipeline(step("collect"), bad))
    assert saga.state == S.SAGA_STATE_COMPENSATED
    assert saga.error.code == "INVALID_ARGUMENT" and saga.error.step_name == "optimise"
    assert "dimensions" in saga.error.message
    assert order(rsync, saga.saga_id) == ["collect"]


async def test_retried_attempts_wait_for_the_same_swarm(stubs) -> None:
    """Each 400 ms attempt times out while the swarm runs for 1.5 s; the retries
    re-attach to the first attempt's swarm rather than deploying new ones."""
    saga_stub, swarm_stub = stubs
    slow = S.Step(
        name="optimise",
        swarm=S.SwarmStage(task=sphere(run_for_ms=1500)),
        timeout=ms(400),
        retry_policy=S.RetryPolicy(max_attempts=20, initial_backoff=ms(10), max_backoff=ms(50)),
    )
    saga = await start(saga_stub, pipeline(slow))
    assert saga.state == S.SAGA_STATE_COMPLETED, saga.error
    st = saga.steps[0]
    assert st.attempts >= 3
    sid = struct_to_dict(st.output)["swarm_id"]
    assert struct_to_dict(st.output)["termination"] == "TERMINATION_TIMEOUT"
    swarms = await swarm_stub.ListSwarms(swarm_pb2.ListSwarmsRequest(page_size=1000))
    assert [s.swarm_id for s in swarms.swarms].count(sid) == 1
    # Only one swarm of this task was ever deployed (stored tasks have defaults filled in).
    assert sum(1 for s in swarms.swarms if s.task.convergence_window == 100_000) == 1


async def test_swarm_steps_are_validated_before_anything_runs(stubs) -> None:
    saga_stub, _ = stubs
    bad = S.Step(name="x", action="do", compensation_action="undo", swarm=S.SwarmStage())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await saga_stub.StartSaga(S.StartSagaRequest(definition=pipeline(bad)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = e.value.details() or ""
    assert "swarm.task: required" in text or "swarm.task" in text, text
