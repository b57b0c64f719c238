"""Baseline for the Agent SDK benchmark: AgentService on a bare grpc.aio server,
echoing the input, with no SDK, interceptor, dedupe or load tracking.

Usage: python perf/sdk/noop_agent.py   (prints the bound port on stdout)
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc


class Noop(agent_pb2_grpc.AgentServiceServicer):
    async def Execute(self, request: Any, context: Any) -> agent_pb2.ExecuteResponse:
        return agent_pb2.ExecuteResponse(output=request.input, agent_id="agent-noop")


async def main() -> None:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
