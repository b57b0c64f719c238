"""Entry point: `python -m services.bus` or `agentmesh-bus`."""

from __future__ import annotations

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.runtime.server import Daemon, run_daemon

from services.bus.settings import EXTRA_OPTIONS, BusSettings


def build(daemon: Daemon) -> None:
    """Wire the bus gateway into `daemon`: backend, servicer, health probes."""
    settings = BusSettings.from_config(daemon.config)
    if settings.backend == "kafka":
        daemon.require_kafka()
    daemon.add_service(
        bus_pb2_grpc.add_BusServiceServicer_to_server,
        bus_pb2_grpc.BusServiceServicer(),
        bus_pb2.DESCRIPTOR.services_by_name["BusService"],
    )


def main() -> None:
    """Run the bus gateway until SIGTERM."""
    run_daemon("bus", build, extra_options=EXTRA_OPTIONS)


if __name__ == "__main__":
    main()
