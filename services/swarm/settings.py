"""Swarm-specific settings that need more than `int(...)`: validated at startup."""

from __future__ import annotations

from collections.abc import Mapping

#: Default retention of finished swarms, s (7 days, like a Temporal namespace's default).
DEFAULT_RETENTION_S = 604_800


def retention_ms(extra: Mapping[str, str]) -> int:
    """`--retention-s` as milliseconds; 0 keeps finished swarms forever.

    Args:
        extra: ServerConfig.extra of the swarm daemon.

    Returns:
        Retention in ms (>= 0).

    Raises:
        SystemExit: the value is not a whole number of seconds >= 0 (the daemon
            stops at startup with this message instead of a traceback).
    """
    raw = extra.get("retention_s", str(DEFAULT_RETENTION_S)).strip()
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise SystemExit(
            f"agentmesh-swarm: --retention-s / AGENTMESH_SWARM_RETENTION_S={raw!r} must be a "
            "whole number of seconds >= 0 (0 keeps finished swarms forever; default "
            f"{DEFAULT_RETENTION_S} = 7 days)"
        )
    return seconds * 1000
