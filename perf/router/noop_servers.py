"""Baselines for the router benchmark, on plain grpc.aio with no interceptors:

    python perf/router/noop_servers.py router
        a RouterService whose Route returns an empty response at once;
    python perf/router/noop_servers.py agent <redis-url> <agent-id> <capability>
        an AgentService whose Execute echoes its input, registered in the
        registry's Redis key schema (am:reg:agent:{id}, am:reg:idx:cap:{cap}).

Each prints its bound port on stdout.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import grpc
import redis.asyncio as aioredis

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.router.v1 import router_pb2, router_pb2_grpc


class _NoopRouter(router_pb2_grpc.RouterServiceServicer):
    async def Route(
        self, request: router_pb2.RouteRequest, context: Any
    ) -> router_pb2.RouteResponse:
        return router_pb2.RouteResponse()


class _EchoAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id

    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: Any
    ) -> agent_pb2.ExecuteResponse:
        return agent_pb2.ExecuteResponse(output=request.input, agent_id=self.agent_id)


async def _main(argv: list[str]) -> None:
    server = grpc.aio.server()
    if argv[0] == "router":
        router_pb2_grpc.add_RouterServiceServicer_to_server(_NoopRouter(), server)
    else:
        url, agent_id, cap = argv[1:4]
        agent_pb2_grpc.add_AgentServiceServicer_to_server(_EchoAgent(agent_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if argv[0] == "agent":
        r = aioredis.Redis.from_url(url)
        await r.hset(
            f"am:reg:agent:{agent_id}",
            mapping={
                "endpoint": f"127.0.0.1:{port}",
                "status": "ACTIVE",
                "health": "1.0",
                "version": "1.0.0",
                "last_heartbeat_ms": str(int(time.time() * 1000)),
            },
        )
        await r.sadd(f"am:reg:idx:cap:{cap}", agent_id)
        await r.aclose()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
