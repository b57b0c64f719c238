"""All five daemons as real processes against real Redis and a real Kafka
broker: health, reflection (Python client and grpcurl), /metrics, bearer auth,
and health that follows Redis."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.health import health_status, wait_health
from tests.procs import DaemonProcess, daemon, scrape_metrics

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

#: The service each daemon must expose, besides health and reflection.
SERVICES = {
    "bus": ["agentmesh.bus.v1.BusService"],
    "router": ["agentmesh.router.v1.RouterService"],
    "registry": [
        "agentmesh.registry.v1.RegistryService",
        "agentmesh.registry.v1.CoordinationService",
    ],
    "saga": ["agentmesh.saga.v1.SagaService"],
    "swarm": ["agentmesh.swarm.v1.SwarmService"],
}


@pytest.fixture(scope="module")
def mesh(
    redis_server: Any, kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonProcess]]:
    logs = tmp_path_factory.mktemp("mesh")
    tokens = logs / "tokens.json"
    tokens.write_text(json.dumps({"tok-ops": {"identity": "ops", "roles": ["admin"]}}))
    common = [
        "--redis-url",
        redis_server.url,
        "--kafka-bootstrap",
        kafka_broker.bootstrap,
        "--health-interval-s",
        "0.3",
        "--auth-tokens-file",
        str(tokens),
        "--auth-token",
        "tok-ops",
    ]
    procs = {name: daemon(name, logs, *common) for name in SERVICES}
    try:
        for p in procs.values():
            p.start()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


async def reflected_services(target: str) -> set[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        async for resp in call:
            return {s.name for s in resp.list_services_response.service}
    return set()


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_daemon_serves_health_reflection_metrics(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    p = mesh[name]
    await wait_health(p.target, health_pb2.HealthCheckResponse.SERVING)
    for svc in SERVICES[name]:
        assert await health_status(p.target, svc) == health_pb2.HealthCheckResponse.SERVING
    listed = await reflected_services(p.target)
    assert set(SERVICES[name]) | {"grpc.health.v1.Health"} <= listed
    body = await asyncio.to_thread(scrape_metrics, p.metrics_port)
    assert "grpc_server_started_total" in body


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_daemon_freezes_its_startup_heap(mesh: dict[str, DaemonProcess], name: str) -> None:
    # agentmesh.runtime.collector: the long-lived startup heap leaves the
    # collector's walks, and young passes run every 10,000 allocations.
    serving = mesh[name].serving
    assert serving["gc_threshold"] == 10_000
    assert serving["gc_frozen_objects"] > 10_000  # modules, descriptors, clients


def grpcurl() -> str:
    path = shutil.which("grpcurl") or str(Path(os.path.expanduser("~/go/bin/grpcurl")))
    if not Path(path).exists():
        if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail("grpcurl is not installed: run `bash deploy/local/tools.sh`")
        pytest.skip("grpcurl not installed (bash deploy/local/tools.sh)")
    return path


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_grpcurl_lists_services_through_reflection(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    out = subprocess.run(
        [grpcurl(), "-plaintext", mesh[name].target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    for svc in SERVICES[name]:
        assert svc in out
        described = subprocess.run(
            [grpcurl(), "-plaintext", mesh[name].target, "describe", svc],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "rpc " in described


def unary_method(service: str) -> str:
    """`/pkg.Service/Method` of the service's first unary method."""
    package = importlib.import_module(service.rsplit(".", 1)[0])
    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name.endswith("_pb2"):
            importlib.import_module(f"{package.__name__}.{mod.name}")
    desc = descriptor_pool.Default().FindServiceByName(service)
    m = next(m for m in desc.methods if not m.client_streaming and not m.server_streaming)
    return f"/{service}/{m.name}"


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_bad_token_is_unauthenticated(mesh: dict[str, DaemonProcess], name: str) -> None:
    method = unary_method(SERVICES[name][0])
    async with grpc.aio.insecure_channel(mesh[name].target) as ch:
        call = ch.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(b"", metadata=(("authorization", "Bearer wrong"),), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_registry_health_follows_redis(tmp_path: Path) -> None:
    from tests.infra import RedisServer

    redis = RedisServer(workdir=tmp_path / "redis")
    redis.start()
    try:
        with daemon(
            "registry", tmp_path, "--redis-url", redis.url, "--health-interval-s", "0.2"
        ) as reg:
            await wait_health(reg.target, health_pb2.HealthCheckResponse.SERVING)
            redis.stop()
            await wait_health(reg.target, health_pb2.HealthCheckResponse.NOT_SERVING)
            redis.start()
            await wait_health(reg.target, health_pb2.HealthCheckResponse.SERVING)
    finally:
        redis.stop()


def go_tool(name: str) -> str:
    path = shutil.which(name) or os.path.expanduser(f"~/go/bin/{name}")
    if not Path(path).exists():
        if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail(f"{name} is not installed: run `bash deploy/local/tools.sh`")
        pytest.skip(f"{name} not installed (bash deploy/local/tools.sh)")
    return path


def test_ghz_load_tests_through_reflection(mesh: dict[str, DaemonProcess]) -> None:
    """The shipped ghz config runs against a daemon with no proto files: this
    needs reflection to resolve method symbols, which upb's pool does not."""
    config = Path(__file__).resolve().parents[2] / "perf" / "ghz" / "registry_discover.json"
    out = subprocess.run(
        [
            go_tool("ghz"),
            "--config",
            str(config),
            "--total",
            "200",
            "--concurrency",
            "4",
            "--metadata",
            '{"authorization": "Bearer tok-ops"}',
            "--format",
            "json",
            mesh["registry"].target,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["count"] == 200
    assert report["statusCodeDistribution"] == {"OK": 200}
    described = subprocess.run(
        [
            grpcurl(),
            "-plaintext",
            mesh["registry"].target,
            "describe",
            "agentmesh.registry.v1.RegistryService.DiscoverAgents",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "is a method" in described
