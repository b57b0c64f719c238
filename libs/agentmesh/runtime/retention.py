"""The retention period of finished records (sagas, swarms), shared by the
daemons that keep them: Temporal's namespace retention, as a daemon option."""

from __future__ import annotations

from collections.abc import Mapping

from agentmesh.runtime.config import ExtraOption

#: Default retention of finished records, s (7 days, like a Temporal namespace's default).
DEFAULT_RETENTION_S = 604_800


def retention_option(records: str) -> ExtraOption:
    """The `--retention-s` daemon option.

    Args:
        records: what is kept, singular, for the help text (`saga`, `swarm`).
    """
    return ExtraOption(
        "retention_s",
        str(DEFAULT_RETENTION_S),
        f"keep a finished {records}'s keys this long after it ends, s; 0 = forever",
    )


def retention_ms(extra: Mapping[str, str], *, daemon: str, records: str) -> int:
    """`--retention-s` as milliseconds; 0 keeps finished records forever.

    Args:
        extra: ServerConfig.extra of the daemon.
        daemon: the daemon's name (`saga`, `swarm`), for the flag and env names.
        records: what is kept, plural, for the error message (`sagas`, `swarms`).

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
            f"agentmesh-{daemon}: --retention-s / AGENTMESH_{daemon.upper()}_RETENTION_S="
            f"{raw!r} must be a whole number of seconds >= 0 (0 keeps finished {records} "
            f"forever; default {DEFAULT_RETENTION_S} = 7 days)"
        )
    return seconds * 1000
