"""The registry's agent catalog in Redis, for every daemon that reads it.

The registry daemon writes the catalog (services/registry/README.md has the
full key schema and its Lua scripts build the same names from `PREFIX`); the
router, the saga coordinator and the swarm engine read it directly, so they
keep working while the registry restarts. This module is the one place that
knows the names, the agent-hash fields, the semantic-version constraints of
`common.v1.AgentSelector.version_constraint`, and the selector semantics:

Keys (prefix `am:reg:{catalog}:`; `<x>` is a placeholder):
    agent:<agent_id>          HASH endpoint, status, health, location, version, ...
    pb:<agent_id>             STRING serialized agentmesh.registry.v1.Agent
    load:<agent_id>           HASH LOAD_FIELDS + updated_ms
    idx:cap:<capability>      SET of agent ids
    idx:stype:<service_type>  SET of agent ids
    idx:tag:<tag>             SET of agent ids
    health                    ZSET agent id -> health
    agents                    ZSET every registered agent id, score 0
    deadline, counts, rev, events   registry bookkeeping (see its README)

The `{catalog}` in the prefix is a Redis Cluster hash tag: the whole catalog
lives in one hash slot, because every registry script updates an agent's
hash, the shared indexes and the event stream together, and discovery
intersects index sets (SINTER) in one command. On a single Redis or Sentinel
the braces are just characters of the name. At 1.6 KB per agent one slot
(one master) holds 100,000 agents in about 160 MB.

Selector (protos/agentmesh/common/v1/common.proto, AgentSelector): every
capability (AND), at least one service type (OR), every tag (AND), the
version constraint, health >= min_health_score; an empty filter matches
everything. Agents in `preferred_location` come first, then health
descending, then agent id (a stable order).

Version constraints (on the `semver` library): one or more clauses separated
by commas or spaces, all of which must hold (AND). A clause is an operator
and a version:

    >=1.2.0   >1.2   =1.0.0   ==1.0.0   <2   <=2.1.0   1.4.2 (same as =)
    ^1.2.3    compatible: >=1.2.3 <2.0.0; ^0.2.3 -> <0.3.0; ^0.0.3 -> <0.0.4
    ~1.2.3    patch-level: >=1.2.3 <1.3.0; ~1 -> <2.0.0

A partial version ("1", "1.4") is padded with zeros, and "=1.4" means any
1.4.x. Caret, tilde and X-ranges follow npm's node-semver
(https://github.com/npm/node-semver#advanced-range-syntax).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import redis.asyncio as aioredis
import semver

from agentmesh.common.v1 import common_pb2

# ---- key names -------------------------------------------------------------

#: Key prefix of the registry's catalog in Redis; `{catalog}` is its Redis
#: Cluster hash tag (one slot for the catalog, see the module docstring).
PREFIX = "am:reg:{catalog}:"

#: Fields of the agent hash that readers need, in the order `AgentInfo.from_fields` takes.
AGENT_FIELDS = ("endpoint", "status", "health", "location", "version")

#: Fields of the load hash (`load_key`) besides `updated_ms`, named as in common.v1.LoadMetrics.
LOAD_FIELDS = (
    "cpu_percent",
    "memory_percent",
    "error_rate",
    "response_time_ms",
    "queue_size",
    "capacity",
    "processing_time_ms",
)

#: Registry statuses of agents that may take work.
USABLE_STATUSES = ("ACTIVE", "DEGRADED")


def agent_key(agent_id: str, *, prefix: str = PREFIX) -> str:
    """HASH of one agent: endpoint, status, health, location, version, ..."""
    return f"{prefix}agent:{agent_id}"


def descriptor_key(agent_id: str, *, prefix: str = PREFIX) -> str:
    """STRING: the agent's serialized agentmesh.registry.v1.Agent as registered."""
    return f"{prefix}pb:{agent_id}"


def load_key(agent_id: str, *, prefix: str = PREFIX) -> str:
    """HASH of the agent's reported load: `LOAD_FIELDS` and updated_ms."""
    return f"{prefix}load:{agent_id}"


def capability_index_key(capability: str, *, prefix: str = PREFIX) -> str:
    """SET of the ids of agents with `capability`."""
    return f"{prefix}idx:cap:{capability}"


def service_type_index_key(service_type: str, *, prefix: str = PREFIX) -> str:
    """SET of the ids of agents with `service_type`."""
    return f"{prefix}idx:stype:{service_type}"


def tag_index_key(tag: str, *, prefix: str = PREFIX) -> str:
    """SET of the ids of agents with `tag`."""
    return f"{prefix}idx:tag:{tag}"


def health_key(*, prefix: str = PREFIX) -> str:
    """ZSET: agent id scored by its health."""
    return f"{prefix}health"


def agents_key(*, prefix: str = PREFIX) -> str:
    """ZSET of every registered agent id, score 0 (ordered by id with ZRANGEBYLEX)."""
    return f"{prefix}agents"


def deadline_key(*, prefix: str = PREFIX) -> str:
    """ZSET: agent id scored by the Unix ms after which its heartbeat is overdue."""
    return f"{prefix}deadline"


def counts_key(*, prefix: str = PREFIX) -> str:
    """HASH: status -> number of agents."""
    return f"{prefix}counts"


def revision_key(*, prefix: str = PREFIX) -> str:
    """STRING: the catalog revision counter."""
    return f"{prefix}rev"


def events_key(*, prefix: str = PREFIX) -> str:
    """STREAM of catalog events, entry id `{revision}-0`."""
    return f"{prefix}events"


# ---- version constraints ---------------------------------------------------

Predicate = Callable[[semver.Version], bool]

_CLAUSE = re.compile(r"^(>=|<=|==|=|>|<|\^|~)?v?(\d+)(?:\.(\d+))?(?:\.(\d+))?([-+].*)?$")
_OPERATORS = (">=", "<=", "==", "=", ">", "<", "^", "~")


class ConstraintError(ValueError):
    """A version constraint that does not parse; the message says why."""


def parse_version(text: str) -> semver.Version:
    """Parse a full semantic version such as "2.1.0" or "1.0.0-rc.1".

    Raises:
        ValueError: when `text` is not a semver 2.0.0 version.
    """
    return semver.Version.parse(text)


def _bounds(op: str, parts: tuple[int, int | None, int | None], rest: str) -> list[Predicate]:
    major, minor, patch = parts
    if rest and (minor is None or patch is None):
        raise ConstraintError("a pre-release or build suffix needs a full major.minor.patch")
    base = semver.Version.parse(f"{major}.{minor or 0}.{patch or 0}{rest}")
    if op == "^":
        if major > 0 or minor is None:
            upper = semver.Version(major + 1)
        elif (minor or 0) > 0 or patch is None:
            upper = semver.Version(0, (minor or 0) + 1)
        else:
            upper = semver.Version(0, 0, (patch or 0) + 1)
        return [lambda v: v >= base, lambda v: v < upper]
    if op == "~":
        upper = semver.Version(major + 1) if minor is None else semver.Version(major, minor + 1)
        return [lambda v: v >= base, lambda v: v < upper]
    if op in ("", "=", "=="):
        if minor is None or patch is None:
            # "=1.4" means any 1.4.x, as in node-semver's X-ranges.
            upper = semver.Version(major + 1) if minor is None else semver.Version(major, minor + 1)
            return [lambda v: v >= base, lambda v: v < upper]
        return [lambda v: v == base]
    compare: dict[str, Predicate] = {
        ">=": lambda v: v >= base,
        ">": lambda v: v > base,
        "<=": lambda v: v <= base,
        "<": lambda v: v < base,
    }
    return [compare[op]]


@lru_cache(maxsize=1024)
def parse_constraint(text: str) -> Predicate:
    """Compile a constraint (see the module docstring) to a predicate.

    Args:
        text: the constraint; empty matches every version.

    Returns:
        A function Version -> bool. Compiled constraints are cached.

    Raises:
        ConstraintError: when a clause does not parse.
    """
    clauses = [c for c in re.split(r"[,\s]+", text.strip()) if c]
    # Allow ">= 1.2" by gluing a lone operator to the next token.
    merged: list[str] = []
    for c in clauses:
        if merged and merged[-1] in _OPERATORS:
            merged[-1] += c
        else:
            merged.append(c)
    preds: list[Predicate] = []
    for clause in merged:
        m = _CLAUSE.match(clause)
        if not m:
            raise ConstraintError(f"cannot parse version clause {clause!r}")
        op, major, minor, patch, rest = m.groups()
        try:
            preds.extend(
                _bounds(
                    op or "",
                    (int(major), None if minor is None else int(minor),
                     None if patch is None else int(patch)),
                    rest or "",
                )
            )
        except ValueError as exc:
            raise ConstraintError(f"bad version in clause {clause!r}: {exc}") from exc
    if not preds:
        return lambda v: True
    return lambda v: all(p(v) for p in preds)


@lru_cache(maxsize=65536)
def version_matches(version: str, constraint: str) -> bool:
    """Whether `version` satisfies `constraint`.

    An empty (or blank) constraint matches every version; otherwise an
    unparsable `version` matches nothing. Memoized: fleets run few distinct
    versions, and semver comparisons in Python cost microseconds each, which
    dominated uncached discovery.

    Raises:
        ConstraintError: when the constraint does not parse.
    """
    pred = parse_constraint(constraint)
    if not constraint.strip():
        return True
    try:
        return pred(parse_version(version))
    except ValueError:
        return False


def selector_violations(
    selector: common_pb2.AgentSelector, *, field: str = "selector"
) -> list[tuple[str, str]]:
    """Violations of an AgentSelector's filters: a bad constraint or health bound.

    Args:
        selector: the selector as sent.
        field: field path of the selector, prefixed to each violation.

    Returns:
        (field path, description) pairs, empty when the selector is valid;
        for InvalidArgument's field_violations.
    """
    bad: list[tuple[str, str]] = []
    if selector.version_constraint:
        try:
            parse_constraint(selector.version_constraint)
        except ConstraintError as exc:
            bad.append((f"{field}.version_constraint", str(exc)))
    h = selector.min_health_score
    if math.isnan(h) or not 0.0 <= h <= 1.0:
        bad.append((f"{field}.min_health_score", "must be in [0, 1]"))
    return bad


# ---- agent records ---------------------------------------------------------


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def parse_health(raw: bytes | str | None) -> float:
    """The `health` field of an agent hash as a score.

    A missing or empty field reads as 1.0 (a record written without one, as
    tests do); one that is not a finite number reads as 0.0, so it never
    passes a health bound by accident.
    """
    text = _text(raw)
    if not text:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One agent as its catalog hash describes it.

    Attributes:
        agent_id: registry id.
        endpoint: host:port of its AgentService.
        status: ACTIVE, DEGRADED, INACTIVE or DECOMMISSIONED ("" when unset).
        health: health score in [0, 1] (see `parse_health`).
        location: where it runs, "" when unset.
        version: its semantic version, "" when unset.
    """

    agent_id: str
    endpoint: str
    status: str
    health: float
    location: str = ""
    version: str = ""

    @classmethod
    def from_fields(
        cls, agent_id: str, values: Sequence[bytes | str | None]
    ) -> AgentInfo | None:
        """From an HMGET of `AGENT_FIELDS` on `agent_key(agent_id)`.

        Returns:
            The agent, or None when it has no endpoint (not registered, or
            removed since an index was read).
        """
        endpoint, status, health, location, version = values
        if not endpoint:
            return None
        return cls(
            agent_id=agent_id,
            endpoint=_text(endpoint),
            status=_text(status),
            health=parse_health(health),
            location=_text(location),
            version=_text(version),
        )


class Ranked(Protocol):
    """Anything `discovery_order` can rank."""

    @property
    def agent_id(self) -> str: ...

    @property
    def health(self) -> float: ...

    @property
    def location(self) -> str: ...


class Filterable(Protocol):
    """Anything `selector_filter` can test."""

    @property
    def health(self) -> float: ...

    @property
    def version(self) -> str: ...


def discovery_order(preferred_location: str) -> Callable[[Ranked], tuple[bool, float, str]]:
    """Sort key of discovery: `preferred_location` first, then health descending,
    then agent id, so equal agents always come in the same order."""

    def key(a: Ranked) -> tuple[bool, float, str]:
        return (not (preferred_location and a.location == preferred_location), -a.health,
                a.agent_id)

    return key


def selector_filter(selector: common_pb2.AgentSelector) -> Callable[[Filterable], bool]:
    """The selector's per-agent filters (min health, version constraint) as a predicate.

    The index filters (capabilities, service types, tags) are `match_index`'s
    job; status is the caller's choice.

    Raises:
        ConstraintError: when the version constraint does not parse (raised
            here, before any agent is looked at).
    """
    constraint = selector.version_constraint
    parse_constraint(constraint)
    min_health = selector.min_health_score

    def admits(a: Filterable) -> bool:
        if a.health < min_health:
            return False
        return not constraint or version_matches(a.version, constraint)

    return admits


# ---- reading the catalog ---------------------------------------------------


async def match_index(
    redis: aioredis.Redis, selector: common_pb2.AgentSelector, *, prefix: str = PREFIX
) -> list[str]:
    """Ids of the agents whose index sets satisfy the selector: every
    capability and tag (SINTER), at least one service type (SUNION). A
    selector without any of them matches every registered agent. One
    pipelined round trip.

    Returns:
        Agent ids, sorted. They may include agents removed since (no hash).

    Raises:
        redis.RedisError: when Redis fails.
    """
    inter = [capability_index_key(c, prefix=prefix) for c in selector.capabilities]
    inter += [tag_index_key(t, prefix=prefix) for t in selector.tags]
    union = [service_type_index_key(s, prefix=prefix) for s in selector.service_types]
    p: Any = redis.pipeline(transaction=False)  # redis-py's stubs type replies loosely
    async with p:
        # As commands, not p.sinter/p.sunion: redis-py's cluster pipeline blocks
        # those methods, though the keys share the catalog's slot (see above).
        if inter:
            p.execute_command("SINTER", *inter)
        if union:
            p.execute_command("SUNION", *union)
        if not inter and not union:
            p.zrange(agents_key(prefix=prefix), 0, -1)
        replies = await p.execute()
    ids = {_text(m) for m in replies[0]}
    for more in replies[1:]:
        ids.intersection_update(_text(m) for m in more)
    return sorted(ids)


async def read_agents(
    redis: aioredis.Redis, agent_ids: Sequence[str], *, prefix: str = PREFIX
) -> list[AgentInfo]:
    """The catalog hashes of `agent_ids` in one pipelined round trip.

    Returns:
        The agents in the order given; ids without an endpoint are left out.

    Raises:
        redis.RedisError: when Redis fails.
    """
    if not agent_ids:
        return []
    p: Any = redis.pipeline(transaction=False)
    async with p:
        for aid in agent_ids:
            p.hmget(agent_key(aid, prefix=prefix), AGENT_FIELDS)
        rows = await p.execute()
    out: list[AgentInfo] = []
    for aid, row in zip(agent_ids, rows, strict=True):
        info = AgentInfo.from_fields(aid, row)
        if info is not None:
            out.append(info)
    return out


async def find_agents(
    redis: aioredis.Redis,
    selector: common_pb2.AgentSelector,
    *,
    usable_statuses: Sequence[str] | None = USABLE_STATUSES,
    prefix: str = PREFIX,
) -> list[AgentInfo]:
    """The agents that match `selector`, in discovery order.

    Two pipelined round trips: the index sets (`match_index`), then the
    agent hashes (`read_agents`). Agents are then filtered by status,
    min_health_score and version_constraint, and sorted by
    `discovery_order(selector.preferred_location)`.

    Args:
        redis: the registry's Redis (bytes or decoded replies both work).
        selector: what to match; see the module docstring.
        usable_statuses: statuses kept; None keeps every status.
        prefix: the registry's key prefix.

    Returns:
        Matching agents, preferred location first, then health descending,
        then agent id.

    Raises:
        ConstraintError: when the version constraint does not parse (before
            Redis is read).
        redis.RedisError: when Redis fails.
    """
    admits = selector_filter(selector)
    ids = await match_index(redis, selector, prefix=prefix)
    statuses = None if usable_statuses is None else frozenset(usable_statuses)
    found = [
        a
        for a in await read_agents(redis, ids, prefix=prefix)
        if (statuses is None or a.status in statuses) and admits(a)
    ]
    found.sort(key=discovery_order(selector.preferred_location))
    return found
