"""A carbon-calculator agent on the bus: it answers requests, publishes what
it computed, and takes commands addressed to it.

    python examples/bus_agent.py --agent-id agent-bus-calc-1 --bus-target 127.0.0.1:50051

Ask it from anywhere (the reply is the handler's return value):

    grpcurl -plaintext -d '{"message": {"topic": "carbon.requests.spend",
      "payload": {"struct_value": {"spend_usd": 100, "factor": 0.5}}}}' \\
      127.0.0.1:50051 agentmesh.bus.v1.BusService/Request

Replicas started with the same agent type share `carbon.requests.*`
(one consumer group); a handler that raises is retried with a delay and
ends in `carbon.requests.spend.dlq` after 5 deliveries. SIGTERM lets
in-flight messages finish and be acked.
"""

from __future__ import annotations

from typing import Any

from agentmesh.agent import Agent
from agentmesh.agent.bus import MessageContext

agent = Agent("agent-bus-calc-1", agent_type="carbon-bus-calculator", version="1.0.0")
state = {"factor_scale": 1.0}


@agent.on_message("carbon.requests.*")
async def calculate(payload: dict[str, Any], ctx: MessageContext) -> dict[str, Any]:
    """kg CO2e = spend_usd x factor; the result also goes out as an event."""
    if float(payload["spend_usd"]) < 0:
        raise ValueError("spend_usd must be non-negative")
    kg = float(payload["spend_usd"]) * float(payload["factor"]) * state["factor_scale"]
    await ctx.publish({"kg_co2e": kg, "request_id": ctx.message.id},
                      topic="carbon.results", message_type="event")
    return {"kg_co2e": kg}


@agent.on_message(inbox=True)
async def command(payload: dict[str, Any], ctx: MessageContext) -> dict[str, Any]:
    """Commands sent to this agent's inbox (`recipient_id` = its id)."""
    if "factor_scale" in payload:
        state["factor_scale"] = float(payload["factor_scale"])
    return {"factor_scale": state["factor_scale"]}


if __name__ == "__main__":
    agent.run()
