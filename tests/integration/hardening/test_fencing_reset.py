"""Defect 5 of issue 20, the lease side: the saga coordinator and the swarm
engine keep their leases' fencing counters in Redis. When Redis comes back
without its data (a restart without appendonly) they cannot keep tokens
increasing, so they turn health NOT_SERVING with the reason and take no more
leases: new work is refused with UNAVAILABLE (clients retry on a healthy
replica) and nothing of it is written."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis as redis_sync
from grpc_health.v1 import health_pb2

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc
from tests.hardening import log_docs
from tests.health import health_status, wait_health
from tests.infra import RedisServer
from tests.procs import ProcessGroup, daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["saga", "swarm"])
async def test_not_serving_after_redis_comes_back_empty(tmp_path: Path, name: str) -> None:
    redis = RedisServer(workdir=tmp_path / "redis").start()
    group = ProcessGroup()
    try:
        proc = group.start(
            daemon(name, tmp_path, "--redis-url", redis.url, "--health-interval-s", "0.2")
        )
        await wait_health(proc.target, health_pb2.HealthCheckResponse.SERVING)
        redis.restart()  # no persistence: it comes back empty

        async def not_serving_with_reason() -> bool:
            docs = [d for d in log_docs(proc) if d.get("msg") == "dependencies down"]
            reasons = [d["down"].get("redis_dataset", "") for d in docs]
            return any("fencing tokens" in r for r in reasons) and (
                await health_status(proc.target, "") == health_pb2.HealthCheckResponse.NOT_SERVING
            )

        await eventually(not_serving_with_reason, timeout_s=10, every_s=0.2)
        # It stays so: the other probes pass again, this one does not.
        assert await health_status(proc.target, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        with redis_sync.Redis.from_url(redis.url) as r:
            before = sorted(r.keys("*"))
        async with grpc.aio.insecure_channel(proc.target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _new_work(name, ch)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        assert "fencing tokens" in (e.value.details() or "")
        with redis_sync.Redis.from_url(redis.url) as r:
            assert sorted(r.keys("*")) == before  # nothing half-written
    finally:
        group.stop_all()
        redis.stop()


async def _new_work(name: str, ch: grpc.aio.Channel) -> None:
    """Start one saga (one step) or one swarm on the daemon."""
    if name == "saga":
        step = saga_pb2.Step(name="a", action="noop")
        step.selector.capabilities.append("none")
        await saga_pb2_grpc.SagaServiceStub(ch).StartSaga(
            saga_pb2.StartSagaRequest(definition=saga_pb2.SagaDefinition(steps=[step])),
            timeout=10,
        )
        return
    task = swarm_pb2.SwarmTask(
        max_iterations=10,
        builtin=swarm_pb2.BuiltinFitness(
            function=swarm_pb2.BENCHMARK_FUNCTION_SPHERE,
            space=swarm_pb2.SearchSpace(dimensions=2),
        ),
    )
    await swarm_pb2_grpc.SwarmServiceStub(ch).DeploySwarm(
        swarm_pb2.DeploySwarmRequest(task=task), timeout=10
    )
