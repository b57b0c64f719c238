"""A carbon-calculator agent: spend-based emissions, kg CO2e = spend_usd x factor.

    python examples/carbon_calculator_agent.py --agent-id agent-calc-1 \\
        --registry-target 127.0.0.1:50053 --port 0

The first ten lines after the imports are a complete agent; the compensation
and the objective show the other two handler kinds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentmesh.agent import ActionContext, Agent

agent = Agent("agent-calc-1", agent_type="carbon-calculator", version="1.0.0",
              capabilities=["carbon_calculation"])


@agent.action("calculate")
async def calculate(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Emissions of a batch of spend records: `records` = [{spend_usd, factor}, ...]."""
    records = input.get("records") or [input]
    spend = np.array([float(r["spend_usd"]) for r in records])
    factor = np.array([float(r["factor"]) for r in records])
    if (spend < 0).any() or (factor < 0).any():
        raise ValueError("spend_usd and factor must be non-negative")
    return {"kg_co2e": float(np.dot(spend, factor)), "records": len(records)}


@agent.compensation("calculate")
async def undo(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """A calculation has no side effect to undo; say so for the saga log."""
    return {"undone": ctx.original_output is not None}


@agent.evaluate("sphere")
def sphere(positions: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Fitness for the swarm engine: sum of squares of each row."""
    return np.sum(positions * positions, axis=1)


if __name__ == "__main__":
    agent.run()
