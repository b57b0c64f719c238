"""Serve test agents written on the generated AgentService stubs only (no SDK),
as an agent in any other language would be: a plain grpc.aio server that
registers itself by writing the registry's Redis key schema
(tests.registry_records), for tests that run without a registry daemon.

    ns = stub_agent_parser().parse_args()
    redis = aioredis.Redis.from_url(ns.redis_url)
    await serve_stub_agent(MyServicer(...), redis=redis, agent_id=ns.agent_id,
                           capabilities=ns.capability)
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import redis.asyncio as aioredis

from agentmesh.agent.v1 import agent_pb2_grpc
from tests.procs import serve_until_signal
from tests.registry_records import write_agent_record


def stub_agent_parser() -> argparse.ArgumentParser:
    """A parser with the flags every stub agent takes: --agent-id, --redis-url
    (where to register), --capability (repeatable) and --delay-ms (per call)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent-id", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--capability", action="append", default=[])
    ap.add_argument("--delay-ms", type=float, default=0.0)
    return ap


async def serve_stub_agent(
    servicer: agent_pb2_grpc.AgentServiceServicer,
    *,
    redis: aioredis.Redis,
    agent_id: str,
    **record: Any,
) -> None:
    """Serve `servicer` on a free loopback port until SIGTERM/SIGINT.

    Once bound it writes the agent's registry record (`record` as
    `write_agent_record`'s fields, e.g. capabilities, health, location) into
    `redis`, then logs the `serving` line; `redis` is closed at the end.
    """
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)

    async def register(port: int) -> None:
        await write_agent_record(redis, agent_id, endpoint=f"127.0.0.1:{port}", **record)

    try:
        await serve_until_signal(server, before_serving=register, agent_id=agent_id)
    finally:
        await redis.aclose()
