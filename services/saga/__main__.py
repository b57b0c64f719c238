"""Entry point: `python -m services.saga` or `agentmesh-saga`."""

from __future__ import annotations

from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc


def build(daemon: Daemon) -> None:
    """Wire the saga coordinator into `daemon`."""
    daemon.redis()
    daemon.add_service(
        saga_pb2_grpc.add_SagaServiceServicer_to_server,
        saga_pb2_grpc.SagaServiceServicer(),  # type: ignore[abstract]
        saga_pb2.DESCRIPTOR.services_by_name["SagaService"],
    )


def main() -> None:
    """Run the saga coordinator until SIGTERM."""
    run_daemon("saga", build)


if __name__ == "__main__":
    main()
