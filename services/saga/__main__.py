"""Entry point: `python -m agentmesh.server.saga` or `agentmesh-saga`."""

from __future__ import annotations

import os
import socket

import grpc
import redis.asyncio as aioredis

from agentmesh.runtime.agents import AgentClient
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.config import ServerConfig
from agentmesh.runtime.deps import redis_from_config, redis_probe
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.agents import AgentCaller
from agentmesh.server.saga.engine import Engine, EngineOptions
from agentmesh.server.saga.servicer import SagaServicer
from agentmesh.server.saga.settings import SagaSettings
from agentmesh.server.saga.store import SagaStore
from agentmesh.server.saga.swarm_steps import SwarmStages
from agentmesh.server.saga.tasks.placement import parse_strategy_map
from agentmesh.server.saga.tasks.scheduler import TaskOptions, TaskScheduler
from agentmesh.server.saga.tasks.servicer import TaskServicer
from agentmesh.server.saga.tasks.store import TaskStore
from agentmesh.task.v1 import task_pb2, task_pb2_grpc


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
    daemon.guard_fencing(redis)  # NOT_SERVING if Redis comes back empty (lease tokens)
    daemon.on_shutdown(redis.aclose)
    # blocking XREADs of WatchSaga get their own pool so they never starve the engine
    watch_redis = _redis(cfg, max_connections=s.watch_pool_size)
    daemon.on_shutdown(watch_redis.aclose)
    store = SagaStore(redis, retention_ms=s.retention_ms)

    def channel(target: str) -> grpc.aio.Channel:
        return create_channel(
            target,
            token=cfg.auth_token,
            tls_ca_file=cfg.tls_ca_file,
            client_cert_file=cfg.client_cert_pair[0],
            client_key_file=cfg.client_cert_pair[1],
        )

    client = AgentClient.create(redis, s, channel, identity="saga-coordinator")
    daemon.on_startup(client.start)
    # Swarm steps deploy on the swarm engine; the channel connects lazily, so
    # a coordinator without swarm steps never needs the engine up.
    caller = AgentCaller(client, SwarmStages(channel(cfg.swarm_target)))
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
        SagaServicer(
            store,
            engine,
            SagaStore(watch_redis),
            default_timeout_ms=s.default_timeout_ms,
            compensation_timeout_ms=s.compensation_timeout_ms,
        ),
        saga_pb2.DESCRIPTOR.services_by_name["SagaService"],
    )
    daemon.on_startup(engine.start)
    daemon.on_shutdown(engine.stop)
    # TaskService: tasks are leased and recovered like sagas, and call their
    # agents through the same AgentClient (one set of guardrails and breakers).
    task_store = TaskStore(redis, retention_ms=s.retention_ms)
    task_watch_store = TaskStore(watch_redis)  # blocking reads: WaitTask, the WAKE stream
    scheduler = TaskScheduler(
        task_store,
        client,
        TaskOptions(
            coordinator_id=coordinator_id,
            lease_ttl_ms=s.lease_ttl_ms,
            renew_interval_ms=s.renew_interval_ms,
            recovery_interval_ms=s.recovery_interval_ms,
            max_active=s.max_active_tasks,
            poll_interval_ms=s.task_poll_interval_ms,
            default_timeout_ms=s.task_timeout_ms,
            default_capacity=s.task_default_capacity,
            strategies=parse_strategy_map(s.task_default_strategy),
        ),
        wake_store=task_watch_store,
    )
    daemon.add_service(
        task_pb2_grpc.add_TaskServiceServicer_to_server,
        TaskServicer(
            task_store,
            scheduler,
            task_watch_store,
            default_timeout_ms=s.task_timeout_ms,
            default_schedule_to_start_ms=s.task_schedule_to_start_ms,
            max_payload_bytes=s.task_max_payload_bytes,
        ),
        task_pb2.DESCRIPTOR.services_by_name["TaskService"],
    )
    daemon.on_startup(scheduler.start)
    daemon.on_shutdown(scheduler.stop)


def main() -> None:
    """Run the saga coordinator until SIGTERM."""
    run_daemon("saga", build, settings=SagaSettings)


if __name__ == "__main__":
    main()
