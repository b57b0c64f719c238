"""Agent ids and the bus names derived from them, shared by the registry, the
bus gateway and the agent SDK so one rule decides what an agent id is.

An agent id is `agent-[a-z0-9-]+`, at most 128 characters. Each agent has an
inbox topic on the bus, `agents.<agent_id>` (every agent id is one valid topic
level), where messages addressed to it by `Envelope.recipient_id` go.
"""

from __future__ import annotations

import re

AGENT_ID = re.compile(r"^agent-[a-z0-9-]+$")
MAX_ID_LEN = 128
#: Prefix of the inbox topics: `agents.<agent_id>`.
INBOX_PREFIX = "agents."


def agent_id_violation(agent_id: str) -> str | None:
    """Why `agent_id` is malformed, or None."""
    if not agent_id:
        return "required"
    if len(agent_id) > MAX_ID_LEN or not AGENT_ID.match(agent_id):
        return "must match agent-[a-z0-9-]+ and be at most 128 characters"
    return None


def inbox_topic(agent_id: str) -> str:
    """The bus topic messages addressed to `agent_id` go to: `agents.<agent_id>`."""
    return INBOX_PREFIX + agent_id


def inbox_owner(topic: str) -> str | None:
    """The agent whose inbox `topic` is, or None when it is not an inbox topic."""
    if topic.startswith(INBOX_PREFIX):
        rest = topic[len(INBOX_PREFIX):]
        if agent_id_violation(rest) is None:
            return rest
    return None
