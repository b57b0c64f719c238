"""The no-op baselines of the benchmarks: one generated servicer on a plain
grpc.aio server (no interceptors, no Redis), answering at once.

    python perf/noop_servers.py registry         DiscoverAgents -> empty response
    python perf/noop_servers.py router           Route -> empty response; RouteBatch ->
                                                 one fixed one-target decision per request
    python perf/noop_servers.py safety           ValidateOperation -> is_safe; AcquirePermit
                                                 -> granted
    python perf/noop_servers.py agent [AGENT_ID] Execute -> its input (agent id
                                                 default `agent-noop`)

Each logs `{"msg": "serving", "port": N}` on stderr once bound (what
tests.procs.DaemonProcess waits for) and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.router.v1 import router_pb2, router_pb2_grpc, safety_pb2, safety_pb2_grpc
from tests.procs import serve_until_signal


class NoopRegistry(registry_pb2_grpc.RegistryServiceServicer):
    async def DiscoverAgents(
        self, request: registry_pb2.DiscoverAgentsRequest, context: Any
    ) -> registry_pb2.DiscoverAgentsResponse:
        return registry_pb2.DiscoverAgentsResponse()


class NoopRouter(router_pb2_grpc.RouterServiceServicer):
    async def Route(
        self, request: router_pb2.RouteRequest, context: Any
    ) -> router_pb2.RouteResponse:
        return router_pb2.RouteResponse()

    def __init__(self) -> None:
        # Prebuilt per batch size: the baseline pays only gRPC and serialization
        # of an answer the size of the router's (one target per decision).
        self._batches: dict[int, router_pb2.RouteBatchResponse] = {}
        target = router_pb2.RouteTarget(agent_id="bench-0000", endpoint="10.1.0.0:50100",
                                        health_score=0.5)
        self._decision = router_pb2.RouteResponse(
            targets=[target], strategy=router_pb2.STRATEGY_LEAST_LOADED, cache_hit=True)

    async def RouteBatch(
        self, request: router_pb2.RouteBatchRequest, context: Any
    ) -> router_pb2.RouteBatchResponse:
        n = len(request.requests)
        if n not in self._batches:
            self._batches[n] = router_pb2.RouteBatchResponse(
                results=[router_pb2.RouteResult(decision=self._decision)] * n
            )
        return self._batches[n]


class NoopSafety(safety_pb2_grpc.SafetyServiceServicer):
    async def ValidateOperation(
        self, request: safety_pb2.ValidateOperationRequest, context: Any
    ) -> safety_pb2.ValidateOperationResponse:
        return safety_pb2.ValidateOperationResponse(is_safe=True, halt_on_critical=True)

    async def AcquirePermit(
        self, request: safety_pb2.AcquirePermitRequest, context: Any
    ) -> safety_pb2.AcquirePermitResponse:
        return safety_pb2.AcquirePermitResponse(granted=True)


class EchoAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id

    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: Any
    ) -> agent_pb2.ExecuteResponse:
        return agent_pb2.ExecuteResponse(output=request.input, agent_id=self.agent_id)


async def main(argv: list[str]) -> None:
    server = grpc.aio.server()
    kind = argv[0] if argv else ""
    if kind == "registry":
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(NoopRegistry(), server)  # type: ignore[abstract]
    elif kind == "router":
        router_pb2_grpc.add_RouterServiceServicer_to_server(NoopRouter(), server)  # type: ignore[abstract]
    elif kind == "safety":
        safety_pb2_grpc.add_SafetyServiceServicer_to_server(NoopSafety(), server)  # type: ignore[abstract]
    elif kind == "agent":
        agent_id = argv[1] if len(argv) > 1 else "agent-noop"
        agent_pb2_grpc.add_AgentServiceServicer_to_server(EchoAgent(agent_id), server)  # type: ignore[abstract]
    else:
        raise SystemExit(f"usage: {sys.argv[0]} registry|router|safety|agent [AGENT_ID]")
    await serve_until_signal(server, kind=kind)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
