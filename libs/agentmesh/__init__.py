"""AgentMesh: an orchestration mesh for fleets of AI agents.

Generated contracts live in `agentmesh.<area>.v1`; the shared daemon runtime in
`agentmesh.runtime`; the client and agent SDKs in `agentmesh.client` and
`agentmesh.agent`.
"""

from __future__ import annotations

__version__ = "0.1.0"
