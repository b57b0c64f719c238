"""Entry point: `python -m agentmesh.server.swarm` or `agentmesh-swarm`."""

from __future__ import annotations

from agentmesh.runtime.agents import AgentClient
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.deps import redis_from_config
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.server.swarm.agents import SwarmAgents
from agentmesh.server.swarm.driver import DriverContext
from agentmesh.server.swarm.manager import SwarmManager
from agentmesh.server.swarm.optimization import drive_optimization
from agentmesh.server.swarm.partitions import drive_partitions
from agentmesh.server.swarm.servicer import SwarmServicer
from agentmesh.server.swarm.settings import SwarmSettings
from agentmesh.server.swarm.store import SwarmStore
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc


async def drive(ctx: DriverContext, swarm: swarm_pb2.Swarm) -> None:
    """Run one swarm with the driver for its kind of fitness."""
    if swarm.task.WhichOneof("fitness") == "partition_work":
        await drive_partitions(ctx, swarm)
    else:
        await drive_optimization(ctx, swarm)


def build(daemon: Daemon) -> None:
    """Wire the swarm engine's service into `daemon`."""
    s = daemon.config.settings_as(SwarmSettings)
    redis = daemon.redis()
    daemon.guard_fencing(redis)  # NOT_SERVING if Redis comes back empty (lease tokens)
    store = SwarmStore(redis, retention_ms=s.retention_ms)
    cert, key = daemon.config.client_cert_pair
    # Drivers run in the background, outside any incoming RPC: no deadline or
    # request id to pass on, so the channels do not propagate (the deadline
    # is each call's own: partition_timeout, call_timeout).
    client = AgentClient.create(
        redis,
        s,
        lambda target: create_channel(
            target,
            token=daemon.config.auth_token,
            tls_ca_file=daemon.config.tls_ca_file,
            client_cert_file=cert,
            client_key_file=key,
            propagate=False,
        ),
        identity="swarm-engine",
    )
    daemon.on_startup(client.start)
    agents = SwarmAgents(client)
    manager = SwarmManager(
        store,
        redis,
        agents,
        drive,
        lease_ttl_ms=s.lease_ttl_ms,
        snapshot_every=s.snapshot_every,
        scan_interval_s=s.scan_interval_ms / 1000,
        record_interval_s=s.record_interval_ms / 1000,
        agent_refresh_s=s.agent_refresh_ms / 1000,
    )
    watch_redis = redis_from_config(daemon.config, max_connections=s.max_watchers)
    daemon.on_shutdown(watch_redis.aclose)
    daemon.add_service(
        swarm_pb2_grpc.add_SwarmServiceServicer_to_server,
        SwarmServicer(store, redis, manager, watch_store=SwarmStore(watch_redis)),
        swarm_pb2.DESCRIPTOR.services_by_name["SwarmService"],
    )
    daemon.on_startup(manager.start)
    daemon.on_shutdown(agents.close)
    daemon.on_shutdown(manager.close)


def main() -> None:
    """Run the swarm engine daemon until SIGTERM."""
    run_daemon("swarm", build, settings=SwarmSettings)


if __name__ == "__main__":
    main()
