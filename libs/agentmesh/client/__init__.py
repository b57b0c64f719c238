"""The async client SDK: `from agentmesh.client import Client` (also `agentmesh.Client`)."""

from __future__ import annotations

from agentmesh.client.base import DAEMONS, default_target
from agentmesh.client.bus_messages import Message, RemoteError, make_envelope
from agentmesh.client.client import Client
from agentmesh.client.lock import Lease, LockLost, LockNotAcquired
from agentmesh.client.safety import CircuitOpen
from agentmesh.client.subscriber import Subscriber
from agentmesh.client.tasks import TaskCancelled, TaskEnded, TaskFailed, TaskTimedOut
from agentmesh.client.workflows import (
    CompensationRun,
    SagaCancelled,
    SagaCompensated,
    SagaEnded,
    SagaFailed,
    SwarmEnded,
    SwarmFailed,
    SwarmStopped,
)

__all__ = [
    "DAEMONS",
    "CircuitOpen",
    "Client",
    "CompensationRun",
    "Lease",
    "LockLost",
    "LockNotAcquired",
    "Message",
    "RemoteError",
    "SagaCancelled",
    "SagaCompensated",
    "SagaEnded",
    "SagaFailed",
    "Subscriber",
    "SwarmEnded",
    "SwarmFailed",
    "SwarmStopped",
    "TaskCancelled",
    "TaskEnded",
    "TaskFailed",
    "TaskTimedOut",
    "default_target",
    "make_envelope",
]
