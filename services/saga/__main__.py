"""Entry point: `python -m services.saga` or `agentmesh-saga`."""

from __future__ import annotations

import os
import socket

import redis.asyncio as aioredis

from agentmesh.runtime.agents import AgentClient
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.config import ExtraOption, ServerConfig
from agentmesh.runtime.deps import redis_from_config, redis_probe
from agentmesh.runtime.retention import retention_ms, retention_option
from agentmesh.runtime.routing.settings import ROUTING_OPTIONS, RoutingSettings
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from services.saga.agents import AgentCaller
from services.saga.engine import Engine, EngineOptions
from services.saga.servicer import SagaServicer
from services.saga.store import SagaStore

OPTIONS = [
    ExtraOption("coordinator_id", "", "this replica's id; empty = <hostname>-<pid>-<random>"),
    ExtraOption(
        "lease_ttl_ms", "5000", "saga lease length, ms; a dead replica's sagas move after it"
    ),
    ExtraOption("renew_interval_ms", "1000", "lease renewal (and cancel check) interval, ms"),
    ExtraOption("recovery_interval_ms", "1000", "scan interval for free or expired leases, ms"),
    ExtraOption("max_active_sagas", "1000", "sagas one replica drives at once"),
    ExtraOption("snapshot_every", "16", "events between snapshots"),
    ExtraOption("redis_pool_size", "128", "Redis connections for the engine and unary RPCs"),
    ExtraOption("watch_pool_size", "512", "Redis connections for WatchSaga's blocking reads"),
    retention_option("saga"),
    *ROUTING_OPTIONS,
]


def _redis(cfg: ServerConfig, *, max_connections: int) -> aioredis.Redis:
    # redis_from_config carries the URL, password and Sentinel settings.
    return redis_from_config(cfg, max_connections=max_connections, pool_timeout_s=5.0)


def build(daemon: Daemon) -> None:
    """Wire the saga coordinator into `daemon`."""
    cfg = daemon.config
    x = cfg.extra
    # validated first: a bad value stops startup with its message
    keep_ms = retention_ms(x, daemon="saga", records="sagas")
    # Blocking pools: under load a call waits for a free connection instead of
    # failing with "too many connections".
    redis = _redis(cfg, max_connections=int(x["redis_pool_size"]))
    daemon.add_probe("redis", redis_probe(redis))
    daemon.on_shutdown(redis.aclose)
    # blocking XREADs of WatchSaga get their own pool so they never starve the engine
    watch_redis = _redis(cfg, max_connections=int(x["watch_pool_size"]))
    daemon.on_shutdown(watch_redis.aclose)
    store = SagaStore(redis, retention_ms=keep_ms)
    client = AgentClient.create(
        redis,
        RoutingSettings.from_extra(x),
        lambda target: create_channel(
            target,
            token=cfg.auth_token,
            tls_ca_file=cfg.tls_ca_file,
            client_cert_file=cfg.client_cert_pair[0],
            client_key_file=cfg.client_cert_pair[1],
        ),
        identity="saga-coordinator",
    )
    daemon.on_startup(client.start)
    caller = AgentCaller(client)
    coordinator_id = (
        x["coordinator_id"] or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    )
    engine = Engine(
        store,
        caller,
        EngineOptions(
            coordinator_id=coordinator_id,
            lease_ttl_ms=int(x["lease_ttl_ms"]),
            renew_interval_ms=int(x["renew_interval_ms"]),
            recovery_interval_ms=int(x["recovery_interval_ms"]),
            max_active=int(x["max_active_sagas"]),
            snapshot_every=int(x["snapshot_every"]),
        ),
    )
    daemon.add_service(
        saga_pb2_grpc.add_SagaServiceServicer_to_server,
        SagaServicer(store, engine, SagaStore(watch_redis)),
        saga_pb2.DESCRIPTOR.services_by_name["SagaService"],
    )
    daemon.on_startup(engine.start)
    daemon.on_shutdown(engine.stop)


def main() -> None:
    """Run the saga coordinator until SIGTERM."""
    run_daemon("saga", build, extra_options=OPTIONS)


if __name__ == "__main__":
    main()
