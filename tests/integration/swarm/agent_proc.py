"""A worker agent process for the swarm tests, on the generated stubs only.

It serves AgentService on a free port and registers itself the way the
registry does (tests.registry_records: ``am:reg:agent:{id}`` HASH,
``am:reg:idx:cap:{capability}`` SETs), then prints
``{"msg": "serving", "port": N}`` on stderr.

* Execute ``emissions``: one partition of tests/integration/swarm/emissions.py,
  input ``partition_index``, ``partition_count``, ``suppliers``; deduplicated
  by idempotency key in memory; sleeps ``--delay-ms`` first so tests can
  kill it mid-run.
* Evaluate ``sphere`` / ``rastrigin``: numpy, after ``--delay-ms``.

Run: python -m tests.integration.swarm.agent_proc --redis-url redis://127.0.0.1:6379/4 \
        --agent-id a1 --capability cap-x [--delay-ms 50]
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import redis.asyncio as aioredis
from google.protobuf import struct_pb2

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.swarm.emissions import partition
from tests.stub_agents import serve_stub_agent, stub_agent_parser


class WorkerAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent_id: str, delay_s: float) -> None:
        self.agent_id = agent_id
        self.delay_s = delay_s
        self.done: dict[str, struct_pb2.Struct] = {}
        self.executed = 0

    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: Any
    ) -> agent_pb2.ExecuteResponse:
        if request.idempotency_key in self.done:
            return agent_pb2.ExecuteResponse(
                output=self.done[request.idempotency_key], deduplicated=True, agent_id=self.agent_id
            )
        if request.action != "emissions":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown action")
        await asyncio.sleep(self.delay_s)
        f = request.input.fields
        out = partition(
            int(f["partition_index"].number_value),
            int(f["partition_count"].number_value),
            int(f["suppliers"].number_value),
        )
        s = struct_pb2.Struct()
        s.update(out)
        if request.idempotency_key:
            self.done[request.idempotency_key] = s
        self.executed += 1
        return agent_pb2.ExecuteResponse(output=s, agent_id=self.agent_id)

    async def Evaluate(
        self, request: agent_pb2.EvaluateRequest, context: Any
    ) -> agent_pb2.EvaluateResponse:
        await asyncio.sleep(self.delay_s)
        x = np.asarray(request.positions, dtype=np.float64).reshape(-1, request.dimensions)
        if request.objective == "sphere":
            fit = (x * x).sum(axis=1)
        elif request.objective == "rastrigin":
            fit = 10 * x.shape[1] + (x * x - 10 * np.cos(2 * np.pi * x)).sum(axis=1)
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown objective")
        return agent_pb2.EvaluateResponse(fitness=fit.tolist())


async def main() -> None:
    ns = stub_agent_parser().parse_args()
    await serve_stub_agent(
        WorkerAgent(ns.agent_id, ns.delay_ms / 1000),  # type: ignore[abstract]  # no Compensate
        redis=aioredis.Redis.from_url(ns.redis_url),
        agent_id=ns.agent_id,
        location="local",
        capabilities=ns.capability,
    )


if __name__ == "__main__":
    asyncio.run(main())
