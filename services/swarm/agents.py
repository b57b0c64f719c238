"""Swarm partitions and evaluations on the one agent path (agentmesh.runtime.agents).

Drivers find agents with agentmesh.catalog.find_agents, which reads the
registry's Redis key schema (services/registry/README.md) directly: the
capability, service-type and tag index SETs and the ``am:reg:agent:{id}``
hashes. Reading Redis directly, rather than calling
RegistryService.DiscoverAgents, keeps the swarm engine working while the
registry daemon restarts; the indexes are the registry's published contract
for exactly this.

The partition scheduler places each lease on an agent itself (pheromone
trails), so every call here names its agent; the mesh's AgentClient then
applies the same guardrails a router Invoke meets: the CEL safety rules on
the partition's real input, and the shared breakers and outlier ejection of
the swarm's selector pool. A call to an agent that is breaker-open or ejected
is refused with UNAVAILABLE (reason NO_HEALTHY_TARGET) before it is sent, and
the driver reassigns the partition to another agent, as it does when an agent
is unreachable; every outcome counts toward the agent's breaker.
"""

from __future__ import annotations

import logging

from agentmesh.agent.v1 import agent_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.agents import AgentClient, call_message

log = logging.getLogger("agentmesh.swarm.agents")


class SwarmAgents:
    """The swarm engine's calls to agents.

    Args:
        client: the daemon's AgentClient (started and closed with the daemon).
    """

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    async def eligible(self, selector: common_pb2.AgentSelector, action: str) -> frozenset[str]:
        """Ids of the agents matching `selector` that calls may go to now
        (the shared breakers and outlier ejection let them through)."""
        return await self.client.eligible_ids(call_message(action=action, selector=selector))

    async def execute(
        self,
        selector: common_pb2.AgentSelector,
        agent_id: str,
        req: agent_pb2.ExecuteRequest,
        *,
        timeout_s: float,
    ) -> agent_pb2.ExecuteResponse:
        """One Execute of a partition on `agent_id`, chosen from `selector`'s pool.

        Raises:
            agentmesh.runtime.errors.FailedPrecondition: a CRITICAL safety rule
                matched the input (nothing was sent).
            agentmesh.runtime.errors.Unavailable: NO_HEALTHY_TARGET when the
                agent is not eligible now (nothing was sent).
            grpc.aio.AioRpcError: the agent's own failure.
        """
        msg = call_message(
            action=req.action,
            payload=req.input,
            selector=selector,
            routing_key=req.idempotency_key,
            metadata=req.metadata,
        )
        target = await self.client.check_agent(msg, agent_id)
        out = await self.client.call(target, "Execute", req, timeout_s=timeout_s)
        if out.error is not None:
            raise out.error
        assert out.response is not None
        return out.response

    async def evaluate(
        self,
        selector: common_pb2.AgentSelector,
        agent_id: str,
        req: agent_pb2.EvaluateRequest,
        *,
        timeout_s: float,
    ) -> agent_pb2.EvaluateResponse:
        """One batch fitness evaluation on `agent_id`; the rules see the
        objective as the action and `parameters` as the payload.

        Raises:
            as `execute`.
        """
        msg = call_message(action=req.objective, payload=req.parameters, selector=selector)
        target = await self.client.check_agent(msg, agent_id)
        out = await self.client.call(target, "Evaluate", req, timeout_s=timeout_s)
        if out.error is not None:
            raise out.error
        assert out.response is not None
        return out.response

    async def close(self) -> None:
        """Stop the client and close every channel."""
        await self.client.close()
