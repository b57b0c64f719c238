"""The one way every AgentMesh daemon starts: config, logs, metrics, auth,
health, errors, deadlines and dependency clients."""

from __future__ import annotations
