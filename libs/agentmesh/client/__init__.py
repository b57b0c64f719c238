"""The async client SDK: `from agentmesh.client import Client` (also `agentmesh.Client`)."""

from __future__ import annotations

from agentmesh.client.base import DAEMONS, default_target
from agentmesh.client.client import Client

__all__ = ["DAEMONS", "Client", "default_target"]
