"""Finding worker agents through the registry's Redis indexes, and talking to them.

The registry owns the key schema (services/registry/README.md); this module
only reads it:

* ``am:reg:idx:cap:{capability}`` SET of agent ids, one per capability;
* ``am:reg:idx:stype:{service_type}`` and ``am:reg:idx:tag:{tag}`` SETs;
* ``am:reg:agent:{id}`` HASH with ``endpoint`` (host:port of its
  AgentService), ``status``, ``health`` (0..1), ``version``, ``location``.

Reading Redis directly, rather than calling RegistryService.Discover, keeps
the swarm engine working while the registry daemon restarts; the indexes are
the registry's published contract for exactly this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
import semver

from agentmesh.agent.v1 import agent_pb2_grpc
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.channels import create_channel

log = logging.getLogger("agentmesh.swarm.agents")

REG_PREFIX = "am:reg:"
#: Registry statuses that may take work.
USABLE_STATUSES = frozenset({"ACTIVE", "DEGRADED"})


@dataclass(frozen=True)
class AgentInfo:
    """One agent as the registry lists it.

    Attributes:
        agent_id: registry id.
        endpoint: host:port of its AgentService.
        health: health score in [0, 1].
        location: where it runs.
    """

    agent_id: str
    endpoint: str
    health: float
    location: str


def _matches_version(version: str, constraint: str) -> bool:
    if not constraint:
        return True
    try:
        v = semver.Version.parse(version)
    except ValueError:
        return False
    c = constraint.strip()
    try:
        if c.startswith("^"):
            base = semver.Version.parse(c[1:])
            upper = base.bump_major() if base.major else base.bump_minor()
            return base <= v < upper
        if c.startswith("~"):
            base = semver.Version.parse(c[1:])
            return base <= v < base.bump_minor()
        if c.startswith("=") and not c.startswith("=="):
            return v == semver.Version.parse(c[1:])
        return v.match(c)
    except ValueError:
        return False


async def discover(
    redis: aioredis.Redis, selector: common_pb2.AgentSelector
) -> list[AgentInfo]:
    """Agents that match `selector` and may take work.

    Matching follows common.v1.AgentSelector: all capabilities, one of the
    service types, all tags, the version constraint, min health; status
    ACTIVE or DEGRADED. Agents in `preferred_location` come first, then by
    health, highest first, then by id (a stable order).

    Raises:
        redis.exceptions.RedisError: when Redis is unreachable.
    """
    r: Any = redis  # redis-py's stubs type replies as bytes | str; this client returns bytes
    sets = [f"{REG_PREFIX}idx:cap:{c}" for c in selector.capabilities]
    sets += [f"{REG_PREFIX}idx:tag:{t}" for t in selector.tags]
    if not sets:
        return []
    ids = {m.decode() for m in await r.sinter(sets)}
    if selector.service_types:
        stype = await r.sunion([f"{REG_PREFIX}idx:stype:{s}" for s in selector.service_types])
        ids &= {m.decode() for m in stype}
    ordered = sorted(ids)
    if not ordered:
        return []
    fields = ("endpoint", "status", "health", "version", "location")
    async with redis.pipeline(transaction=False) as pipe:
        for aid in ordered:
            pipe.hmget(f"{REG_PREFIX}agent:{aid}", fields)
        rows = await pipe.execute()
    out: list[AgentInfo] = []
    for aid, row in zip(ordered, rows, strict=True):
        endpoint, status, health_raw, version, location = (
            (x.decode() if x is not None else "") for x in row
        )
        if not endpoint or status not in USABLE_STATUSES:
            continue
        try:
            health = float(health_raw) if health_raw else 1.0
        except ValueError:
            health = 0.0
        if health < selector.min_health_score:
            continue
        if not _matches_version(version, selector.version_constraint):
            continue
        out.append(AgentInfo(aid, endpoint, health, location))
    pref = selector.preferred_location
    out.sort(key=lambda a: (not (pref and a.location == pref), -a.health, a.agent_id))
    return out


class AgentPool:
    """AgentService stubs by endpoint, with one channel per endpoint.

    Args:
        token: bearer token for calls to agents.
        tls_ca_file: CA for TLS to agents; empty for plaintext.
    """

    def __init__(self, *, token: str = "", tls_ca_file: str = "") -> None:
        self._token = token
        self._ca = tls_ca_file
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for every call: the bearer token, if any."""
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def stub(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """The stub for `endpoint`, creating its channel on first use.

        The channels do not use the runtime's propagating interceptor: drivers
        run in the background, outside any incoming RPC, so there is no
        deadline or request id to pass on, and the interceptor roughly doubles
        the client cost of a call. Pass `metadata` on each call instead; the
        deadline is the task's own (`partition_timeout`, `call_timeout`).
        """
        stub = self._stubs.get(endpoint)
        if stub is None:
            ch = create_channel(
                endpoint, token=self._token, tls_ca_file=self._ca, propagate=False
            )
            self._channels[endpoint] = ch
            stub = self._stubs[endpoint] = agent_pb2_grpc.AgentServiceStub(ch)
        return stub

    async def drop(self, endpoint: str) -> None:
        """Close the channel to an endpoint that went away."""
        ch = self._channels.pop(endpoint, None)
        self._stubs.pop(endpoint, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        """Close every channel."""
        for ch in list(self._channels.values()):
            await ch.close()
        self._channels.clear()
        self._stubs.clear()
