"""Entry point: `python -m agentmesh.server.bus` or `agentmesh-bus`."""

from __future__ import annotations

import sys

from agentmesh.bus.v1 import bus_pb2
from agentmesh.runtime.config import ServerConfig
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.server.bus import metrics
from agentmesh.server.bus.backend import Backend
from agentmesh.server.bus.hot_path import HotPathUnavailable
from agentmesh.server.bus.servicer import BusServicer, add_to_server
from agentmesh.server.bus.settings import BusSettings
from agentmesh.server.bus.state import MemoryState, RedisState, State
from agentmesh.server.bus.workers import die_with_supervisor, run_workers, worker_index


def make_backend(settings: BusSettings) -> Backend:
    """The backend named by the settings."""
    if settings.backend == "kafka":
        from agentmesh.server.bus.kafka_backend import KafkaBackend

        return KafkaBackend(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=settings.delivery_timeout_ms,
            session_timeout_ms=settings.session_timeout_ms,
            instance_id=settings.instance_id,
            producer_tuning=settings.kafka_producer_tuning(),
            fetch_wait_max_ms=settings.kafka_fetch_wait_max_ms,
            consumer_overrides=settings.kafka_consumer_overrides(),
            topic_defaults=settings.topic_defaults(),
        )
    from agentmesh.server.bus.memory_backend import MemoryBackend

    return MemoryBackend()


def wire_gateway(daemon: Daemon) -> BusServicer:
    """Wire the bus gateway into `daemon` (backend, servicer, health probe)
    and return the servicer, whose `backend` tests may inspect."""

    settings = BusSettings.from_config(daemon.config)
    if settings.backend == "kafka":
        daemon.require_kafka()
    metrics.topic_label.limit = settings.max_topic_labels
    backend = make_backend(settings)
    state: State = (RedisState(daemon.redis(), ttl_s=settings.state_ttl_s)
                    if settings.state_store == "redis" else MemoryState())
    try:
        servicer = BusServicer(backend, settings, state=state)
    except HotPathUnavailable as exc:
        sys.exit(f"agentmesh-bus: {exc}")
    daemon.add_service(
        add_to_server,
        servicer,
        bus_pb2.DESCRIPTOR.services_by_name["BusService"],
    )
    daemon.on_startup(backend.start)
    daemon.on_shutdown(backend.close)
    daemon.on_shutdown(servicer.close)
    # Hooks run in reverse: the queued chain heads are written before the Redis client closes.
    daemon.on_shutdown(state.close)
    return servicer


def build(daemon: Daemon) -> None:
    """The run_daemon builder."""
    wire_gateway(daemon)


def supervise(config: ServerConfig) -> int | None:
    """run_daemon's `instead`: with `--workers N` (N > 1), outside a worker,
    run the supervisor of N gateway processes (services/bus/workers.py) and
    return its exit status; None serves this process as the gateway."""
    if worker_index() is not None:
        die_with_supervisor()
        return None
    if config.settings_as(BusSettings).workers <= 1:
        return None
    try:
        settings = BusSettings.from_config(config)
    except ValueError as exc:
        sys.exit(f"agentmesh-bus: {exc}")
    return run_workers(config, settings, sys.argv[1:])


def main() -> None:
    """Run the bus gateway until SIGTERM, or its `--workers` supervisor."""
    run_daemon("bus", build, settings=BusSettings, reuse_port=worker_index() is not None,
               instead=supervise)


if __name__ == "__main__":
    main()
