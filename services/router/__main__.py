"""Entry point: `python -m agentmesh.server.router` or `agentmesh-router`."""

from __future__ import annotations

from agentmesh.router.v1 import router_pb2, router_pb2_grpc, safety_pb2, safety_pb2_grpc
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.server.router.settings import RouterSettings


def build(daemon: Daemon) -> None:
    """Wire Redis, the router engine, RouterService and SafetyService into `daemon`."""
    from agentmesh.server.router.safety import SafetyServicer
    from agentmesh.server.router.servicer import RouterServicer

    settings = daemon.config.settings_as(RouterSettings)
    servicer = RouterServicer(daemon, settings)
    daemon.add_service(
        router_pb2_grpc.add_RouterServiceServicer_to_server,
        servicer,
        router_pb2.DESCRIPTOR.services_by_name["RouterService"],
    )
    daemon.add_service(
        safety_pb2_grpc.add_SafetyServiceServicer_to_server,
        SafetyServicer(servicer.redis, servicer.engine),
        safety_pb2.DESCRIPTOR.services_by_name["SafetyService"],
    )
    daemon.on_startup(servicer.start)
    daemon.on_shutdown(servicer.stop)


def main() -> None:
    """Run the router daemon until SIGTERM."""
    run_daemon("router", build, settings=RouterSettings)


if __name__ == "__main__":
    main()
