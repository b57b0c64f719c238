"""The baseline: a RegistryService whose DiscoverAgents returns an empty
response at once, on plain grpc.aio with no interceptors and no Redis.

Usage: python perf/registry/noop_server.py   (prints the bound port on stdout)
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc


class _Noop(registry_pb2_grpc.RegistryServiceServicer):
    async def DiscoverAgents(
        self, request: registry_pb2.DiscoverAgentsRequest, context: Any
    ) -> registry_pb2.DiscoverAgentsResponse:
        return registry_pb2.DiscoverAgentsResponse()


async def _main() -> None:
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(_Noop(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_main())
