"""Entry point: `python -m services.saga` or `agentmesh-saga`."""

from __future__ import annotations

import os
import socket

import redis.asyncio as aioredis

from agentmesh.runtime.agents import AgentClient
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.config import ServerConfig
from agentmesh.runtime.deps import redis_from_config, redis_probe
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from services.saga.agents import AgentCaller
from services.saga.engine import Engine, EngineOptions
from services.saga.servicer import SagaServicer
from services.saga.settings import SagaSettings
from services.saga.store import SagaStore


def _redis(cfg: ServerConfig, *, max_connections: int) -> aioredis.Redis:
    # redis_from_config carries the URL, password and Sentinel settings.
    return redis_from_config(cfg, max_connections=max_connections, pool_timeout_s=5.0)


def build(daemon: Daemon) -> None:
    """Wire the saga coordinator into `daemon`."""
    cfg = daemon.config
    s = cfg.settings_as(SagaSettings)
    # Blocking pools: under load a call waits for a free connection instead of
    # failing with "too many connections".
    redis = _redis(cfg, max_connections=s.redis_pool_size)
    daemon.add_probe("redis", redis_probe(redis))
    daemon.on_shutdown(redis.aclose)
    # blocking XREADs of WatchSaga get their own pool so they never starve the engine
    watch_redis = _redis(cfg, max_connections=s.watch_pool_size)
    daemon.on_shutdown(watch_redis.aclose)
    store = SagaStore(redis, retention_ms=s.retention_ms)
    client = AgentClient.create(
        redis,
        s,
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
        s.coordinator_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    )
    engine = Engine(
        store,
        caller,
        EngineOptions(
            coordinator_id=coordinator_id,
            lease_ttl_ms=s.lease_ttl_ms,
            renew_interval_ms=s.renew_interval_ms,
            recovery_interval_ms=s.recovery_interval_ms,
            max_active=s.max_active_sagas,
            snapshot_every=s.snapshot_every,
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
    run_daemon("saga", build, settings=SagaSettings)


if __name__ == "__main__":
    main()
