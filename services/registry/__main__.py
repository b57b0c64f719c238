"""Entry point: `python -m agentmesh.server.registry` or `agentmesh-registry`."""

from __future__ import annotations

from agentmesh.registry.v1 import (
    coordination_pb2,
    coordination_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.server.registry.a2a_prober import CardProber
from agentmesh.server.registry.coordination import CoordinationServicer
from agentmesh.server.registry.coordination_store import CoordinationStore
from agentmesh.server.registry.discovery import CatalogMirror
from agentmesh.server.registry.reaper import Reaper
from agentmesh.server.registry.servicer import RegistryServicer
from agentmesh.server.registry.settings import RegistrySettings
from agentmesh.server.registry.store import RegistryStore
from agentmesh.server.registry.watch import WatchHub


def build(daemon: Daemon) -> None:
    """Wire the registry's services, reaper and watch tailer into `daemon`."""
    settings = daemon.config.settings_as(RegistrySettings)
    # The runtime's client queues for a free pooled connection under bursts.
    client = daemon.redis()
    store = RegistryStore(client, settings)
    mirror = CatalogMirror(store, cache_ttl_ms=settings.discovery_cache_ttl_ms)
    hub = WatchHub(store)
    mirror.attach(hub)
    reaper = Reaper(store, interval_ms=settings.sweep_interval_ms)
    prober = CardProber(store, tick_ms=settings.sweep_interval_ms)
    daemon.add_service(
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        RegistryServicer(store, mirror, hub, settings),
        registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    )
    daemon.add_service(
        coordination_pb2_grpc.add_CoordinationServiceServicer_to_server,
        CoordinationServicer(CoordinationStore(client)),
        coordination_pb2.DESCRIPTOR.services_by_name["CoordinationService"],
    )
    daemon.on_startup(hub.start)
    daemon.on_startup(reaper.start)
    daemon.on_startup(prober.start)
    daemon.on_shutdown(prober.stop)
    daemon.on_shutdown(reaper.stop)
    daemon.on_shutdown(hub.stop)


def main() -> None:
    """Run the registry daemon until SIGTERM."""
    run_daemon("registry", build, settings=RegistrySettings)


if __name__ == "__main__":
    main()
