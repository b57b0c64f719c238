"""Entry point: `python -m services.swarm` or `agentmesh-swarm`."""

from __future__ import annotations

from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc


def build(daemon: Daemon) -> None:
    """Wire the swarm engine's service into `daemon`."""
    daemon.redis()
    daemon.add_service(
        swarm_pb2_grpc.add_SwarmServiceServicer_to_server,
        swarm_pb2_grpc.SwarmServiceServicer(),
        swarm_pb2.DESCRIPTOR.services_by_name["SwarmService"],
    )


def main() -> None:
    """Run the swarm engine daemon until SIGTERM."""
    run_daemon("swarm", build)


if __name__ == "__main__":
    main()
