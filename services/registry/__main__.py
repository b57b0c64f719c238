"""Entry point: `python -m services.registry` or `agentmesh-registry`."""

from __future__ import annotations

import redis.asyncio as aioredis

from agentmesh.registry.v1 import (
    coordination_pb2,
    coordination_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from agentmesh.runtime.deps import redis_probe
from agentmesh.runtime.server import Daemon, run_daemon
from services.registry.coordination import CoordinationServicer
from services.registry.coordination_store import CoordinationStore
from services.registry.discovery import CatalogMirror
from services.registry.reaper import Reaper
from services.registry.servicer import RegistryServicer
from services.registry.settings import OPTIONS, RegistrySettings
from services.registry.store import RegistryStore
from services.registry.watch import WatchHub


def redis_client(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A Redis client whose pool makes callers wait for a free connection.

    The runtime's default pool raises "Too many connections" once
    `max_connections` commands are in flight; under a burst of RPCs the
    registry should queue instead, for up to 5 s, then fail UNAVAILABLE.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, socket_timeout=2.0,
        socket_connect_timeout=2.0,
    )
    return aioredis.Redis.from_pool(pool)


def build(daemon: Daemon) -> None:
    """Wire the registry's services, reaper and watch tailer into `daemon`."""
    settings = RegistrySettings.from_extra(daemon.config.extra)
    client = redis_client(daemon.config.redis_url)
    daemon.add_probe("redis", redis_probe(client))
    daemon.on_shutdown(client.aclose)
    store = RegistryStore(client, settings)
    mirror = CatalogMirror(store, cache_ttl_ms=settings.discovery_cache_ttl_ms)
    hub = WatchHub(store)
    mirror.attach(hub)
    reaper = Reaper(store, interval_ms=settings.sweep_interval_ms)
    daemon.add_service(
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(store, mirror, hub, settings),
        registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    )
    daemon.add_service(
        coordination_pb2_grpc.add_CoordinationServiceServicer_to_server,
        CoordinationServicer(CoordinationStore(client, prefix=settings.prefix)),
        coordination_pb2.DESCRIPTOR.services_by_name["CoordinationService"],
    )
    daemon.on_startup(hub.start)
    daemon.on_startup(reaper.start)
    daemon.on_shutdown(reaper.stop)
    daemon.on_shutdown(hub.stop)


def main() -> None:
    """Run the registry daemon until SIGTERM."""
    run_daemon("registry", build, extra_options=OPTIONS)


if __name__ == "__main__":
    main()
