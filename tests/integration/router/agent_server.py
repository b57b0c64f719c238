"""A small AgentService process for the router's tests, built on the generated
stubs only, that registers itself by writing the registry's Redis key schema
(tests.registry_records).

    python -m tests.integration.router.agent_server --agent-id a1 \\
        --redis-url redis://127.0.0.1:6379/2 --capability calc [--health 0.9] \\
        [--vote yes] [--number 3.5] [--merge '{"k": 1}'] [--delay-ms 50] \\
        [--fail-key am:rt:test:fail:a1]

Execute answers {"agent_id", "remaining_ms" (the deadline budget the agent
saw, -1 without one), "attempt", "input", "vote", "number", "calls", **merge}.
While the Redis key named by --fail-key exists, Execute fails with
UNAVAILABLE; tests toggle it to make an agent fail and recover. The process
logs {"msg": "serving", "port": N} on stderr once bound and registered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import grpc
import redis.asyncio as aioredis
from google.protobuf import struct_pb2

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.stub_agents import serve_stub_agent, stub_agent_parser


class Agent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, ns: argparse.Namespace, r: aioredis.Redis) -> None:
        self.ns = ns
        self.r = r
        self.calls = 0

    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse:
        self.calls += 1
        remaining = context.time_remaining()
        if self.ns.fail_key and await self.r.exists(self.ns.fail_key):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
        if self.ns.delay_ms:
            await asyncio.sleep(self.ns.delay_ms / 1000.0)
        out = struct_pb2.Struct()
        doc: dict[str, Any] = {
            "agent_id": self.ns.agent_id,
            "remaining_ms": -1 if remaining is None else remaining * 1000.0,
            "attempt": request.attempt,
            "calls": self.calls,
            "input": json.loads(json.dumps(dict(request.input.items()), default=str)),
        }
        if self.ns.vote:
            doc["vote"] = self.ns.vote
        if self.ns.number is not None:
            doc["number"] = self.ns.number
        doc.update(json.loads(self.ns.merge or "{}"))
        out.update(doc)
        return agent_pb2.ExecuteResponse(output=out, agent_id=self.ns.agent_id)


async def main() -> None:
    ap = stub_agent_parser()
    ap.add_argument("--health", type=float, default=1.0)
    ap.add_argument("--vote", default="")
    ap.add_argument("--number", type=float, default=None)
    ap.add_argument("--merge", default="")
    ap.add_argument("--fail-key", default="")
    ns = ap.parse_args()
    r = aioredis.Redis.from_url(ns.redis_url)
    await serve_stub_agent(
        Agent(ns, r),  # type: ignore[abstract]  # Compensate/Evaluate: UNIMPLEMENTED
        redis=r, agent_id=ns.agent_id, capabilities=ns.capability, health=ns.health
    )


if __name__ == "__main__":
    asyncio.run(main())
