"""The Agent SDK: write an agent in about ten lines.

    from agentmesh.agent import Agent

    agent = Agent("agent-calc-1", agent_type="carbon-calculator", version="1.0.0",
                  capabilities=["carbon_calculation"])

    @agent.action("calculate")
    async def calculate(input: dict, ctx) -> dict:
        return {"kg_co2e": input["spend_usd"] * input["factor"]}

    if __name__ == "__main__":
        agent.run()

The generated contract lives in `agentmesh.agent.v1`. The SDK is imported
lazily, so importing only the generated stubs stays light. `Agent`
(`agentmesh.agent.sdk`) is the declaration and lifecycle facade over
`executor.IdempotentExecutor` (dedupe and the compensation fence),
`servicer.AgentServicer`, `registration.Registrar` and `cli` (flags, `run`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentmesh.agent.bus import MessageContext
    from agentmesh.agent.context import ActionContext
    from agentmesh.agent.executor import IdempotentExecutor
    from agentmesh.agent.idempotency import (
        IdempotencyStore,
        MemoryIdempotencyStore,
        RedisIdempotencyStore,
        StoredResult,
    )
    from agentmesh.agent.load import LoadTracker
    from agentmesh.agent.orchestrator import Orchestrator, Result, SafetyViolation
    from agentmesh.agent.registration import Registrar
    from agentmesh.agent.sdk import (
        WILDCARD,
        Agent,
        AgentSettings,
        map_exception,
        serve_all,
    )
    from agentmesh.agent.structs import dict_to_struct, struct_to_dict

_EXPORTS = {
    "ActionContext": "agentmesh.agent.context",
    "MessageContext": "agentmesh.agent.bus",
    "IdempotentExecutor": "agentmesh.agent.executor",
    "Registrar": "agentmesh.agent.registration",
    "IdempotencyStore": "agentmesh.agent.idempotency",
    "MemoryIdempotencyStore": "agentmesh.agent.idempotency",
    "RedisIdempotencyStore": "agentmesh.agent.idempotency",
    "StoredResult": "agentmesh.agent.idempotency",
    "LoadTracker": "agentmesh.agent.load",
    "Orchestrator": "agentmesh.agent.orchestrator",
    "Result": "agentmesh.agent.orchestrator",
    "SafetyViolation": "agentmesh.agent.orchestrator",
    "WILDCARD": "agentmesh.agent.sdk",
    "Agent": "agentmesh.agent.sdk",
    "AgentSettings": "agentmesh.agent.sdk",
    "dict_to_struct": "agentmesh.agent.structs",
    "map_exception": "agentmesh.agent.executor",
    "serve_all": "agentmesh.agent.sdk",
    "struct_to_dict": "agentmesh.agent.structs",
}

__all__ = [
    "WILDCARD",
    "ActionContext",
    "Agent",
    "AgentSettings",
    "IdempotencyStore",
    "IdempotentExecutor",
    "LoadTracker",
    "MemoryIdempotencyStore",
    "MessageContext",
    "Orchestrator",
    "RedisIdempotencyStore",
    "Registrar",
    "Result",
    "SafetyViolation",
    "StoredResult",
    "dict_to_struct",
    "map_exception",
    "serve_all",
    "struct_to_dict",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentmesh.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
