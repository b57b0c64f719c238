"""The async client SDK: `from agentmesh.client import Client` (also `agentmesh.Client`)."""

from __future__ import annotations

from agentmesh.client.base import DAEMONS, default_target
from agentmesh.client.client import Client
from agentmesh.client.safety import CircuitOpen
from agentmesh.client.tasks import TaskCancelled, TaskEnded, TaskFailed, TaskTimedOut

__all__ = [
    "DAEMONS",
    "CircuitOpen",
    "Client",
    "TaskCancelled",
    "TaskEnded",
    "TaskFailed",
    "TaskTimedOut",
    "default_target",
]
