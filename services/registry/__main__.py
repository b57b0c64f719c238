"""Entry point: `python -m services.registry` or `agentmesh-registry`."""

from __future__ import annotations

from agentmesh.registry.v1 import (
    coordination_pb2,
    coordination_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from agentmesh.runtime.server import Daemon, run_daemon


def build(daemon: Daemon) -> None:
    """Wire the registry's services into `daemon`."""
    daemon.redis()
    daemon.add_service(
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        registry_pb2_grpc.RegistryServiceServicer(),
        registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    )
    daemon.add_service(
        coordination_pb2_grpc.add_CoordinationServiceServicer_to_server,
        coordination_pb2_grpc.CoordinationServiceServicer(),
        coordination_pb2.DESCRIPTOR.services_by_name["CoordinationService"],
    )


def main() -> None:
    """Run the registry daemon until SIGTERM."""
    run_daemon("registry", build)


if __name__ == "__main__":
    main()
