"""AgentMesh: an orchestration mesh for fleets of AI agents.

Generated contracts live in `agentmesh.<area>.v1`; the shared daemon runtime in
`agentmesh.runtime`; the client and agent SDKs in `agentmesh.client` and
`agentmesh.agent`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentmesh.client import Client


def __getattr__(name: str) -> Any:
    # Lazy, so `import agentmesh.<area>.v1` stays light for daemons.
    if name == "Client":
        from agentmesh.client import Client

        return Client
    raise AttributeError(f"module 'agentmesh' has no attribute {name!r}")


__all__ = ["Client", "__version__"]
