"""Fixtures for the bus contract suite: a real gateway (in this process, on a
loopback port, serving real gRPC) on each backend, and a client stub."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from agentmesh.bus.v1 import bus_pb2_grpc
from agentmesh.runtime.config import load_config
from agentmesh.runtime.server import Daemon
from agentmesh.server.bus.__main__ import wire_gateway
from agentmesh.server.bus.hot_path import HotPathUnavailable
from agentmesh.server.bus.hot_path import load as load_hot_path
from agentmesh.server.bus.servicer import BusServicer
from agentmesh.server.bus.settings import BusSettings


@dataclass
class Gateway:
    """A running gateway and a client for it."""

    backend: str
    stub: bus_pb2_grpc.BusServiceStub
    servicer: BusServicer
    daemon: Daemon
    bootstrap: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"


def unique(prefix: str = "t") -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


async def start_gateway(backend: str, bootstrap: str, *extra: str) -> Gateway:
    argv = [
        "--port", "0", "--metrics-port", "0", "--backend", backend,
        "--topic-refresh-ms", "300", "--grace-period-s", "0.5", "--health-interval-s", "0.5",
        "--default-partitions", "2", *extra,
    ]
    if bootstrap:
        argv += ["--kafka-bootstrap", bootstrap]
    config = load_config("bus", argv, settings=BusSettings, environ={})
    daemon = Daemon(config)
    servicer = wire_gateway(daemon)
    await daemon.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}")
    daemon.on_shutdown(channel.close)
    return Gateway(backend, bus_pb2_grpc.BusServiceStub(channel), servicer, daemon, bootstrap)


@pytest.fixture
def hot_path() -> str:
    """The gateway's `--hot-path`; modules that test Subscribe's per-record
    loops override it with `both_hot_paths` to run on each twin."""
    return "auto"


def require_hot_path(mode: str) -> str:
    """`mode`, or a skip (a failure under AGENTMESH_REQUIRE_INFRA) when it is
    `compiled` and the compiled loops are not built from the current source."""
    if mode == "compiled":
        try:
            load_hot_path("compiled")
        except HotPathUnavailable as exc:
            if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
                pytest.fail(str(exc))
            pytest.skip(str(exc))
    return mode


def _both_hot_paths(request: pytest.FixtureRequest) -> str:
    return require_hot_path(request.param)


#: Override of `hot_path` for a module: each test runs on the compiled and
#: the Python loops (services/bus/hot_path.py). Use: `hot_path = both_hot_paths`.
both_hot_paths = pytest.fixture(params=["compiled", "python"], name="hot_path")(_both_hot_paths)


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def gw(request: pytest.FixtureRequest, hot_path: str) -> AsyncIterator[Gateway]:
    """The gateway on each backend."""
    bootstrap = ""
    if request.param == "kafka":
        broker: Any = request.getfixturevalue("kafka_broker")
        bootstrap = broker.bootstrap
    g = await start_gateway(request.param, bootstrap, "--hot-path", hot_path)
    try:
        yield g
    finally:
        await g.daemon.stop()
