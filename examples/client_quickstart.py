"""Talk to a running stack with the async client (`agentmesh up` first).

    python examples/client_quickstart.py
"""

from __future__ import annotations

import asyncio

from agentmesh import Client
from agentmesh.agent.structs import struct_to_dict
from agentmesh.runtime.errors import AgentMeshError


async def main() -> None:
    async with Client() as c:  # default ports, or AGENTMESH_<DAEMON>_TARGET
        for daemon in ("bus", "router", "registry", "saga", "swarm"):
            print(f"{daemon:9} {await c.health(daemon)}")
        calculators = await c.discover(capabilities=["carbon_calculation"])
        print(f"{len(calculators)} carbon calculators")
        if not calculators:
            return
        resp = await c.invoke(
            message={
                "selector": {"capabilities": ["carbon_calculation"]},
                "payload": {"struct_value": {"spend_usd": 1000.0, "factor": 0.35}},
            },
            action="calculate",
            idempotency_key="quickstart-1",
            timeout_s=5,
        )
        print(resp.agent_id, struct_to_dict(resp.output), "deduplicated:", resp.deduplicated)
        try:
            await c.get_agent(agent_id="agent-does-not-exist")
        except AgentMeshError as e:
            print(f"{type(e).__name__}: {e.message}")


if __name__ == "__main__":
    asyncio.run(main())
