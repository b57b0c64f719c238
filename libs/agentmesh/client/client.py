"""`agentmesh.Client`: the async client of the whole mesh.

    async with Client(registry="127.0.0.1:50053", router="127.0.0.1:50052") as c:
        found = await c.discover_agents(selector={"capabilities": ["carbon_calculation"]})
        out = await c.invoke(message={"capabilities": ["carbon_calculation"]}, action="calculate",
                             input={"spend_usd": 10.0}, idempotency_key="req-1")

Every RPC has a typed method named after it in snake_case (generated into
`agentmesh.client.services`). A method takes either the request message or its
fields as keywords, plus `timeout_s` and `metadata`, and returns the response
message. Errors are `agentmesh.runtime.errors.AgentMeshError` subclasses. The
raw stubs are `c.registry`, `c.coordination`, `c.router`, `c.bus`, `c.saga`
and `c.swarm`. Higher-level helpers are below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from agentmesh.agent.structs import dict_to_struct, struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.client.services import ServiceMethods
from agentmesh.runtime.errors import from_rpc_error


class Client(ServiceMethods):
    """Async client of every AgentMesh daemon; see the module docstring and
    `agentmesh.client.base.ClientBase` for the constructor."""

    async def __aenter__(self) -> Client:
        return self

    async def iter_agents(self, *, page_size: int = 500, **fields: Any) -> AsyncIterator[Any]:
        """Every registered agent (agentmesh.registry.v1.Agent), following page tokens.

        Args:
            page_size: agents per ListAgents page.
            fields: other ListAgentsRequest fields, e.g. `status="AGENT_STATUS_ACTIVE"`.
        """
        token = ""
        while True:
            resp = await self.list_agents(page_size=page_size, page_token=token, **fields)
            for a in resp.agents:
                yield a
            token = resp.next_page_token
            if not token:
                return

    async def discover(
        self,
        *,
        capabilities: list[str] | None = None,
        service_types: list[str] | None = None,
        tags: list[str] | None = None,
        version_constraint: str = "",
        min_health_score: float = 0.0,
        preferred_location: str = "",
        max_results: int = 0,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Agents matching a selector, in discovery order (agentmesh.registry.v1.Agent list)."""
        resp = await self.discover_agents(
            selector={
                "capabilities": capabilities or [],
                "service_types": service_types or [],
                "tags": tags or [],
                "version_constraint": version_constraint,
                "min_health_score": min_health_score,
                "preferred_location": preferred_location,
            },
            max_results=max_results,
            timeout_s=timeout_s,
        )
        return list(resp.agents)

    def agent(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """Raw AgentService stub of one agent at `endpoint` (`host:port`)."""
        return agent_pb2_grpc.AgentServiceStub(self.channel(endpoint))

    async def execute(
        self,
        endpoint: str,
        action: str,
        input: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
        attempt: int = 1,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[dict[str, Any], agent_pb2.ExecuteResponse]:
        """Call one agent directly, bypassing the router.

        Returns:
            (output as a dict, the full ExecuteResponse).

        Raises:
            AgentMeshError: the agent's status as the mesh error.
        """
        req = agent_pb2.ExecuteRequest(
            action=action,
            input=dict_to_struct(input or {}),
            idempotency_key=idempotency_key,
            attempt=attempt,
            metadata=dict(metadata or {}),
        )
        try:
            resp = await self.agent(endpoint).Execute(
                req, timeout=self.default_timeout_s if timeout_s is None else timeout_s
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return struct_to_dict(resp.output), resp
