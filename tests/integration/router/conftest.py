"""Fixtures for the router's integration tests: Redis DB 2, agent processes
(`agent_server.py`) and router daemon processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh.router.v1 import router_pb2_grpc
from tests.infra import flush_db
from tests.procs import AgentProcess, DaemonProcess, ProcessGroup, daemon

#: Logical Redis DB of the router's tests.
ROUTER_DB = 2


@pytest.fixture(scope="module")
def router_redis_url(redis_server: Any) -> str:
    """URL of DB 2, flushed once per module (the router owns DB 2 in tests).
    Tests in a module share it, so each uses its own capability names."""
    return flush_db(redis_server.url_for_db(ROUTER_DB))


@pytest.fixture
async def rdb(router_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on DB 2."""
    client = aioredis.Redis.from_url(router_redis_url)
    yield client
    await client.aclose()


class Procs(ProcessGroup):
    """Starts agents and routers; every one is stopped at teardown."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        super().__init__()
        self.tmp = tmp
        self.redis_url = redis_url

    def agent(self, agent_id: str = "", *flags: str, capability: str = "calc") -> AgentProcess:
        """Start an agent process that registers itself with `capability`."""
        agent_id = agent_id or f"agent-{uuid.uuid4().hex[:8]}"
        return self.start(AgentProcess(
            ["-m", "tests.integration.router.agent_server", "--agent-id", agent_id,
             "--redis-url", self.redis_url, "--capability", capability, *flags],
            self.tmp / f"{agent_id}-{len(self.started)}.log",
            agent_id=agent_id,
        ))

    async def agents(self, specs: list[tuple[str, tuple[str, ...]]]) -> list[AgentProcess]:
        """Start several agents in parallel: [(agent_id, flags), ...]."""
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(self.agent, aid, *flags) for aid, flags in specs)
            )
        )

    def router(self, *flags: str) -> DaemonProcess:
        """Start a router daemon on DB 2 with fast state refresh."""
        return self.start(daemon(
            "router", self.tmp, "--redis-url", self.redis_url,
            "--state-ttl-ms", "100", "--gen-poll-ms", "50", *flags,
        ))


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory, router_redis_url: str) -> Iterator[Procs]:
    """Process launcher bound to DB 2; processes live until the module ends."""
    p = Procs(tmp_path_factory.mktemp("router"), router_redis_url)
    yield p
    p.stop_all(timeout_s=5)


@pytest.fixture
async def stub_for() -> AsyncIterator[Callable[[DaemonProcess], router_pb2_grpc.RouterServiceStub]]:
    """Make an asyncio RouterService stub for a router process; channels closed after."""
    channels: list[grpc.aio.Channel] = []

    def make(p: DaemonProcess) -> router_pb2_grpc.RouterServiceStub:
        ch = grpc.aio.insecure_channel(p.target)
        channels.append(ch)
        return router_pb2_grpc.RouterServiceStub(ch)

    yield make
    for ch in channels:
        await ch.close()
