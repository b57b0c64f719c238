"""Defect 5 of issue 20, the lease side: the saga coordinator and the swarm
engine keep their leases' fencing counters in Redis. When Redis comes back
without its data (a restart without appendonly) they cannot keep tokens
increasing, so they turn health NOT_SERVING with the reason, instead of
carrying on as if nothing happened."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

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
    finally:
        group.stop_all()
        redis.stop()
