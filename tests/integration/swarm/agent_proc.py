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

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import grpc
import numpy as np
import redis.asyncio as aioredis
from google.protobuf import struct_pb2

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.swarm.emissions import partition
from tests.registry_records import write_agent_record


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
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", required=True)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--capability", action="append", default=[])
    p.add_argument("--delay-ms", type=float, default=0.0)
    ns = p.parse_args()
    server = grpc.aio.server()
    agent = WorkerAgent(ns.agent_id, ns.delay_ms / 1000)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    redis = aioredis.Redis.from_url(ns.redis_url)
    await write_agent_record(
        redis, ns.agent_id, endpoint=f"127.0.0.1:{port}", location="local",
        capabilities=ns.capability,
    )
    line = json.dumps({"msg": "serving", "port": port, "agent_id": ns.agent_id})
    print(line, file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
