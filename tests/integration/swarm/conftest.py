"""Fixtures for the swarm engine's integration tests: Redis DB 4, a swarm
daemon process, and worker agent processes (tests/integration/swarm/agent_proc.py)
that register themselves with the registry's key schema in the same DB."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.infra import flush_db
from tests.procs import AgentProcess, DaemonProcess, ProcessGroup, daemon

#: Logical Redis DB of the swarm tests.
SWARM_DB = 4
#: Flags that make takeover and refreshes fast enough for tests.
FAST_FLAGS = (
    "--lease-ttl-ms", "1500",
    "--snapshot-every", "5",
    "--scan-interval-ms", "250",
    "--agent-refresh-ms", "250",
    "--record-interval-ms", "100",
    "--health-interval-s", "0.3",
)


@pytest.fixture(scope="module")
def swarm_redis_url(redis_server: Any) -> str:
    """URL of DB 4, flushed once per module (tests use unique ids and capabilities)."""
    return flush_db(redis_server.url_for_db(SWARM_DB))


def start_swarm_daemon(url: str, log_dir: Path) -> DaemonProcess:
    """A started `python -m agentmesh.server.swarm` process on DB 4 with FAST_FLAGS."""
    return daemon("swarm", log_dir, "--redis-url", url, *FAST_FLAGS).start()


@pytest.fixture(scope="module")
def swarm_daemon(
    swarm_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """One swarm daemon shared by a module."""
    with start_swarm_daemon(swarm_redis_url, tmp_path_factory.mktemp("swarm")) as p:
        yield p


@pytest.fixture
async def swarm_stub(swarm_daemon: DaemonProcess) -> AsyncIterator[swarm_pb2_grpc.SwarmServiceStub]:
    """A SwarmService stub on the module's daemon."""
    async with grpc.aio.insecure_channel(swarm_daemon.target) as ch:
        yield swarm_pb2_grpc.SwarmServiceStub(ch)


@pytest.fixture
def spawn_agent(
    swarm_redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """Start worker agent processes; all are stopped after the test."""
    group = ProcessGroup()

    def spawn(capability: str, *, delay_ms: float = 0.0) -> AgentProcess:
        agent_id = f"agent-sw-{uuid.uuid4().hex[:8]}"
        return group.start(AgentProcess(
            ["-m", "tests.integration.swarm.agent_proc", "--redis-url", swarm_redis_url,
             "--agent-id", agent_id, "--capability", capability, "--delay-ms", str(delay_ms)],
            tmp_path / f"{agent_id}.log",
            agent_id=agent_id,
        ))

    yield spawn
    group.stop_all(timeout_s=5)


def unique_capability() -> str:
    """A capability no other test registers agents under."""
    return f"swarm-test-{uuid.uuid4().hex[:8]}"
