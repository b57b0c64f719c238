"""Client-side load balancing over daemon replicas: `agentmesh.Client` given
two registry replicas (`host:port,host:port`) spreads calls over both
(round_robin), watches each with grpc.health.v1, and once one is SIGKILLed
every further call goes to the other without a retry (the client's retries
are off, so a call sent to the dead replica would fail); a replica reporting
NOT_SERVING gets no calls either."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from agentmesh.client import Client
from agentmesh.runtime.errors import Unavailable
from tests.infra import RedisServer
from tests.procs import ProcessGroup, daemon, scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration
CALLS = 20


def count(metrics_port: int, metric: str, method: str) -> int:
    """The replica's `metric` summed over the series of gRPC `method`."""
    pattern = metric + r'\{[^}]*grpc_method="' + method + r'"[^}]*\} (\S+)'
    return sum(int(float(m.group(1))) for m in re.finditer(pattern, scrape_metrics(metrics_port)))


def handled(metrics_port: int) -> int:
    """ListAgents calls the replica answered."""
    return count(metrics_port, "grpc_server_handled_total", "ListAgents")


async def test_calls_spread_over_replicas_and_skip_a_killed_one(
    redis_url: str, tmp_path: Path
) -> None:
    group = ProcessGroup()
    try:
        a, b = (
            group.start(daemon("registry", tmp_path, "--redis-url", redis_url)) for _ in range(2)
        )
        async with Client(registry=f"{a.target},{b.target}", retry_attempts=1) as client:
            for _ in range(CALLS):
                await client.list_agents(page_size=1, timeout_s=5)
            # round robin: both replicas got calls (pick_first would send all to one)
            assert handled(a.metrics_port) > 0 and handled(b.metrics_port) > 0
            # client-side health checking: the channel watches each replica
            for p in (a, b):
                assert count(p.metrics_port, "grpc_server_started_total", "Watch") > 0
            before = handled(b.metrics_port)

            a.kill()  # SIGKILL: its connection drops, round_robin drops it from the picks

            # the channel notices the dropped connection asynchronously; wait
            # until it did (one call may still have been on the dead replica)
            async def answered() -> bool:
                try:
                    await client.list_agents(page_size=1, timeout_s=5)
                except Unavailable:
                    return False
                return True

            await eventually(answered, timeout_s=10, what="a call after the kill")
            for _ in range(CALLS):
                await client.list_agents(page_size=1, timeout_s=5)
            assert handled(b.metrics_port) >= before + CALLS
    finally:
        group.stop_all()


async def test_a_not_serving_replica_gets_no_calls(redis_url: str, tmp_path: Path) -> None:
    """A replica whose Redis is gone reports NOT_SERVING on grpc.health.v1; the
    client's health check takes it out of the picks, so no call reaches it
    (a call that did would fail: its Redis is down, and retries are off)."""
    own = RedisServer(workdir=tmp_path / "redis-b").start()
    group = ProcessGroup()
    try:
        a = group.start(daemon("registry", tmp_path, "--redis-url", redis_url))
        b = group.start(
            daemon("registry", tmp_path, "--redis-url", own.url, "--health-interval-s", "0.1")
        )
        async with Client(registry=f"{a.target},{b.target}", retry_attempts=1) as client:
            for _ in range(CALLS):
                await client.list_agents(page_size=1, timeout_s=5)
            assert handled(b.metrics_port) > 0
            own.stop()
            await eventually(
                lambda: (
                    'grpc_health_serving{grpc_service=""} 0.0' in scrape_metrics(b.metrics_port)
                ),
                timeout_s=10,
                what="replica b NOT_SERVING",
            )
            # The client learns it from its Watch stream, one loopback message
            # after the replica published it; give that message its moment.
            await asyncio.sleep(0.5)
            before = handled(b.metrics_port)
            for _ in range(CALLS):
                await client.list_agents(page_size=1, timeout_s=5)
            assert handled(b.metrics_port) == before
            assert handled(a.metrics_port) >= CALLS
    finally:
        group.stop_all()
        own.stop()
