"""Helpers for tests that run Agent SDK agents, in this process or as processes
(for the processes themselves see `tests.procs.testing_agent`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from agentmesh.agent import Agent
from agentmesh.agent.v1 import agent_pb2_grpc


@asynccontextmanager
async def serving(agent: Agent) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    """Start `agent` on a free loopback port and yield a stub on it; close and stop after."""
    port = await agent.start()
    assert port > 0
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield agent_pb2_grpc.AgentServiceStub(channel)
    finally:
        await channel.close()
        await agent.stop()


def forget_agent_keys(url: str, agent_id: str) -> None:
    """Delete what an agent left in Redis under its own prefix `am:agent:{agent_id}:`
    (idempotency results, tombstones, recorded effects). A Redis that is already
    gone (a test's private server) is ignored."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(f"am:agent:{agent_id}:*", count=500))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass
    finally:
        client.close()
