"""Fixtures for registry integration tests: Redis DB 1, real daemon processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.registry.v1 import coordination_pb2_grpc, registry_pb2_grpc
from tests.infra import flush_db
from tests.procs import DaemonProcess, ProcessGroup, daemon

#: The registry's own logical DB in tests (team convention).
REGISTRY_DB = 1

#: Short intervals so expiry and damping happen within seconds.
FAST_FLAGS = (
    "--heartbeat-interval-ms", "200",
    "--sweep-interval-ms", "100",
    "--deregistration-timeout-ms", "2500",
    "--flap-threshold", "2",
    "--discovery-cache-ttl-ms", "60000",
)


@pytest.fixture
def reg_redis_url(redis_server: Any) -> str:
    """URL of the registry's DB on the session Redis, flushed before the test."""
    return flush_db(redis_server.url_for_db(REGISTRY_DB))


StartRegistry = Callable[..., DaemonProcess]


@pytest.fixture
def start_registry(tmp_path: Path, reg_redis_url: str) -> Iterator[StartRegistry]:
    """Start registry daemons on the test DB; all are stopped at teardown.

    Call as `start_registry(*extra_flags, fast=True)`.
    """
    group = ProcessGroup()

    def start(*flags: str, fast: bool = True, env: dict[str, str] | None = None) -> DaemonProcess:
        args = ["--redis-url", reg_redis_url, *(FAST_FLAGS if fast else ()), *flags]
        return group.start(daemon("registry", tmp_path, *args, env=env))

    yield start
    group.stop_all()


class Clients:
    """Stubs for one registry daemon."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.reg = registry_pb2_grpc.RegistryServiceStub(channel)
        self.coord = coordination_pb2_grpc.CoordinationServiceStub(channel)


@pytest.fixture
async def registry(start_registry: StartRegistry) -> AsyncIterator[Clients]:
    """One fast registry daemon and its stubs."""
    d = start_registry()
    async with grpc.aio.insecure_channel(d.target) as ch:
        yield Clients(ch)
