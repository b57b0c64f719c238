"""Topic names and wildcard patterns.

A topic is levels joined by "."; a level is [A-Za-z0-9_-]+. Patterns add "*"
(exactly one level) and "#" (zero or more levels), as in AMQP topic exchanges.
Wildcards never match internal levels (leading "_") nor a final "dlq" level,
so "orders.#" does not pick up "orders.dlq" or "_agentmesh.replies".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

MAX_TOPIC_CHARS = 200
DLQ_SUFFIX = ".dlq"
_LEVEL = re.compile(r"^[A-Za-z0-9_-]+$")
_PLAIN = r"(?!_)[A-Za-z0-9_-]+"


def topic_error(name: str) -> str | None:
    """Why `name` is not a valid topic, or None when it is."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_TOPIC_CHARS:
        return f"must be at most {MAX_TOPIC_CHARS} characters"
    if not all(_LEVEL.match(level) for level in name.split(".")):
        return "must be levels of [A-Za-z0-9_-] joined by '.'"
    return None


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of `topic`."""
    return topic + DLQ_SUFFIX


def pattern_error(pattern: str) -> str | None:
    """Why `pattern` is not a valid topic pattern, or None."""
    if not pattern:
        return "must not be empty"
    if len(pattern) > MAX_TOPIC_CHARS:
        return f"must be at most {MAX_TOPIC_CHARS} characters"
    for level in pattern.split("."):
        if level not in ("*", "#") and not _LEVEL.match(level):
            return "levels must be '*', '#' or [A-Za-z0-9_-]+"
    return None


class TopicMatcher:
    """Matches topic names against a set of patterns.

    Args:
        patterns: valid patterns (checked with pattern_error).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = list(patterns)
        self._regexes = [_to_regex(p) for p in self.patterns]

    def matches(self, topic: str) -> bool:
        """True when any pattern matches `topic`."""
        return any(r.match(topic) for r in self._regexes)

    def select(self, topics: Iterable[str]) -> list[str]:
        """The matching topics, sorted."""
        return sorted(t for t in topics if self.matches(t))


def _to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a pattern level by level; '#' may match zero levels."""
    levels = pattern.split(".")
    # Build a regex over the dotted name where each element consumes its own
    # leading dot except the first, and '#' consumes "(\.level)*" or "level(\.level)*".
    rx = ""
    first = True
    for level in levels:
        if level == "#":
            if first:
                rx += f"(?:{_PLAIN}(?:\\.{_PLAIN})*)?"
            else:
                rx += f"(?:\\.{_PLAIN})*"
        else:
            piece = _PLAIN if level == "*" else re.escape(level)
            if first:
                rx += piece
            else:
                rx += "\\." + piece
        first = False
    # "#" at the start with zero levels leaves a leading dot to strip: allow it.
    if levels[0] == "#" and len(levels) > 1:
        rx = rx.replace(f"(?:{_PLAIN}(?:\\.{_PLAIN})*)?\\.", f"(?:{_PLAIN}\\.)*", 1)
    explicit_dlq = levels[-1] == "dlq"
    tail = "" if explicit_dlq else "(?<!\\.dlq)(?<!^dlq)"
    return re.compile(f"^{rx}$" if explicit_dlq else f"^{rx}{tail}$")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a new topic is created, beyond its partition count.

    Attributes:
        replication_factor: -1 means the broker's default, or 3 on a cluster
            of three or more brokers (cluster_replication, Kafka backend).
        min_insync_replicas: 0 means the broker's default, or 2 when the
            replication factor is 3 or more (cluster_replication).
        retention_ms: 0 means the broker's default; -1 keeps records forever.
        cleanup_policy: "delete", "compact", "compact,delete"; "" means the broker's default.
    """

    replication_factor: int = -1
    min_insync_replicas: int = 0
    retention_ms: int = 0
    cleanup_policy: str = ""

    def topic_config(self) -> dict[str, str]:
        """The Kafka topic configs these set (NewTopic config)."""
        out: dict[str, str] = {}
        if self.min_insync_replicas:
            out["min.insync.replicas"] = str(self.min_insync_replicas)
        if self.retention_ms:
            out["retention.ms"] = str(self.retention_ms)
        if self.cleanup_policy:
            out["cleanup.policy"] = self.cleanup_policy
        return out


#: The replication the gateway gives a topic it creates on a cluster of at
#: least this many brokers when the settings leave it open (replication factor
#: -1, min.insync.replicas 0): with acks=all every acknowledged record is then
#: on at least CLUSTER_MIN_INSYNC_REPLICAS brokers, so one broker may die
#: without losing an acknowledged record and without refusing writes.
CLUSTER_REPLICATION_FACTOR = 3
CLUSTER_MIN_INSYNC_REPLICAS = 2


def cluster_replication(spec: TopicSpec, brokers: int) -> TopicSpec:
    """`spec` with the replication left open filled in for a cluster of `brokers`.

    A replication factor of -1 becomes CLUSTER_REPLICATION_FACTOR (3) when
    `brokers` >= 3 and stays -1 (the broker's default) below that;
    min.insync.replicas 0 becomes CLUSTER_MIN_INSYNC_REPLICAS (2) when the
    replication factor is then 3 or more. Set values are kept as they are.

    Args:
        spec: the topic's settings (the gateway's defaults or a CreateTopic's).
        brokers: brokers the gateway has seen in the cluster's metadata.
    """
    rf = spec.replication_factor
    if rf == -1 and brokers >= CLUSTER_REPLICATION_FACTOR:
        rf = CLUSTER_REPLICATION_FACTOR
    isr = spec.min_insync_replicas
    if isr == 0 and rf >= CLUSTER_REPLICATION_FACTOR:
        isr = CLUSTER_MIN_INSYNC_REPLICAS
    if (rf, isr) == (spec.replication_factor, spec.min_insync_replicas):
        return spec
    return replace(spec, replication_factor=rf, min_insync_replicas=isr)
