"""The agent catalog in Redis: atomic writes through Lua, reads by key.

Key schema: services/registry/README.md; the catalog key names are
agentmesh.catalog's (the scripts in agentmesh.server.registry.lua build the same
names from the prefix they are passed). Writes go through those scripts;
reads are plain HGETALL/ZRANGE/XRANGE.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh import catalog
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.lease import Lease, LeaseLost, call_fenced
from agentmesh.server.registry import lua
from agentmesh.server.registry.settings import RegistrySettings

STATUS_BY_NAME: dict[str, registry_pb2.AgentStatus.ValueType] = {
    "ACTIVE": registry_pb2.AGENT_STATUS_ACTIVE,
    "DEGRADED": registry_pb2.AGENT_STATUS_DEGRADED,
    "INACTIVE": registry_pb2.AGENT_STATUS_INACTIVE,
    "DECOMMISSIONED": registry_pb2.AGENT_STATUS_DECOMMISSIONED,
}
STATUS_NAMES = tuple(STATUS_BY_NAME)

EVENT_TYPES: dict[str, registry_pb2.AgentEventType.ValueType] = {
    "REGISTERED": registry_pb2.AGENT_EVENT_TYPE_REGISTERED,
    "UPDATED": registry_pb2.AGENT_EVENT_TYPE_UPDATED,
    "HEALTH_CHANGED": registry_pb2.AGENT_EVENT_TYPE_HEALTH_CHANGED,
    "DEREGISTERED": registry_pb2.AGENT_EVENT_TYPE_DEREGISTERED,
}


def ts_ms(ms: int | float) -> Timestamp:
    """A Timestamp for a Unix time in milliseconds."""
    t = Timestamp()
    t.FromMilliseconds(int(ms))
    return t


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class RegisterResult:
    """Outcome of a registration.

    Attributes:
        created: False when an existing registration was updated.
        agent: the stored agent with status, health and times.
    """

    created: bool
    agent: registry_pb2.Agent


@dataclass(frozen=True)
class HeartbeatOutcome:
    """What a heartbeat computed.

    Attributes:
        status: status name after the heartbeat.
        health: health score after the heartbeat.
        interval_ms: the agent's heartbeat interval, ms.
        revision: revision of the HEALTH_CHANGED event it caused, or 0.
    """

    status: str
    health: float
    interval_ms: int
    revision: int = 0


@dataclass(frozen=True)
class StoredEvent:
    """One entry of the event stream.

    Attributes:
        revision: the catalog revision of the event.
        event: the event with the agent snapshot filled in.
    """

    revision: int
    event: registry_pb2.AgentEvent


class RegistryStore:
    """Catalog reads and atomic writes.

    Args:
        client: redis.asyncio client with decode_responses=False.
        settings: registry settings (prefix, policy, retention).
    """

    def __init__(self, client: aioredis.Redis, settings: RegistrySettings) -> None:
        self.r = client
        self.s = settings
        self.p = settings.prefix
        self._cfg = settings.lua_config()
        # KEYS[1] of every catalog script: routes it to the catalog's slot (lua.py).
        self._slot = [catalog.revision_key(prefix=self.p)]
        self._register = client.register_script(lua.REGISTER)
        self._heartbeat = client.register_script(lua.HEARTBEAT)
        self._heartbeat_batch = client.register_script(lua.HEARTBEAT_BATCH)
        self._deregister = client.register_script(lua.DEREGISTER)
        self._sweep = client.register_script(lua.SWEEP)
        self._probe = client.register_script(lua.HEALTH_PROBE)

    # ---- writes -----------------------------------------------------------
    async def register(self, agent: registry_pb2.Agent, *, interval_ms: int) -> RegisterResult:
        """Upsert an agent atomically (hash, indexes, sorted sets, event).

        Args:
            agent: a validated descriptor; output-only fields must be cleared.
            interval_ms: the heartbeat interval to store, ms.
        """
        res = await self._register(
            keys=self._slot,
            args=[
                self.p, self._cfg, agent.agent_id, agent.SerializeToString(),
                agent.endpoint, agent.location, agent.version, interval_ms,
                json.dumps(sorted(set(agent.capabilities))),
                json.dumps(sorted(set(agent.service_types))),
                json.dumps(sorted(set(agent.tags))),
            ]
        )
        created, rev, status, health, reg_ms, upd_ms, now = res
        out = registry_pb2.Agent()
        out.CopyFrom(agent)
        out.status = STATUS_BY_NAME[_s(status)]
        out.health_score = float(_s(health))
        out.register_time.CopyFrom(ts_ms(reg_ms))
        out.update_time.CopyFrom(ts_ms(upd_ms))
        out.last_heartbeat_time.CopyFrom(ts_ms(now))
        out.revision = int(rev)
        return RegisterResult(created=bool(created), agent=out)

    def _hb_args(
        self, agent_id: str, load: common_pb2.LoadMetrics | None
    ) -> list[Any]:
        if load is None:
            return [self.p, self._cfg, agent_id, "0", 0, 0, 0, 0, 0, 0, 0]
        return [
            self.p, self._cfg, agent_id, "1", repr(load.cpu_percent), repr(load.memory_percent),
            repr(load.error_rate), repr(load.response_time_ms), load.queue_size,
            load.capacity, repr(load.processing_time_ms),
        ]

    @staticmethod
    def _hb_outcome(res: Sequence[Any]) -> HeartbeatOutcome | None:
        if not res or int(res[0]) == 0:
            return None
        return HeartbeatOutcome(status=_s(res[1]), health=float(_s(res[2])),
                                interval_ms=int(res[3]), revision=int(res[4]))

    async def heartbeat(
        self, agent_id: str, load: common_pb2.LoadMetrics | None
    ) -> HeartbeatOutcome | None:
        """Record a heartbeat; None when the agent is not registered."""
        res = await self._heartbeat(keys=self._slot, args=self._hb_args(agent_id, load))
        return self._hb_outcome(res)

    async def heartbeat_many(
        self, beats: Sequence[tuple[str, common_pb2.LoadMetrics | None]], *, chunk: int = 250
    ) -> list[HeartbeatOutcome | None]:
        """Record many heartbeats, `chunk` per script call (each chunk atomic).

        Returns:
            One outcome per heartbeat, in order; None for unknown agents.
        """
        out: list[HeartbeatOutcome | None] = []
        for start in range(0, len(beats), chunk):
            args: list[Any] = [self.p, self._cfg]
            for agent_id, load in beats[start : start + chunk]:
                args += self._hb_args(agent_id, load)[2:]
            flat = await self._heartbeat_batch(keys=self._slot, args=args)
            for i in range(0, len(flat), 4):
                status = _s(flat[i])
                out.append(
                    HeartbeatOutcome(status=status, health=float(_s(flat[i + 1])),
                                     interval_ms=int(flat[i + 2]), revision=int(flat[i + 3]))
                    if status else None
                )
        return out

    async def deregister(self, agent_id: str, *, reason: str) -> registry_pb2.Agent | None:
        """Remove an agent atomically; its last state, or None when not registered."""
        res = await self._deregister(keys=self._slot, args=[self.p, self._cfg, agent_id, reason])
        if not res:
            return None
        pb, _prev, health, rev, now = res
        agent = registry_pb2.Agent.FromString(pb)
        agent.status = registry_pb2.AGENT_STATUS_DECOMMISSIONED
        agent.health_score = float(_s(health))
        agent.revision = int(rev)
        agent.update_time.CopyFrom(ts_ms(now))
        return agent

    async def sweep(
        self, agent_ids: Sequence[str], *, lease: Lease
    ) -> list[tuple[str, str]] | None:
        """Evaluate overdue agents, fenced on the reaper lease (see reaper.py).

        Returns:
            (agent_id, outcome) pairs, outcome a status name or "EXPIRED";
            None when `lease` is no longer held (nothing was written).
        """
        try:
            res = await call_fenced(
                self._sweep, keys=self._slot,
                args=[self.p, self._cfg, lease.owner, lease.token, *agent_ids],
            )
        except LeaseLost:
            return None
        flat = [_s(x) for x in res]
        return list(zip(flat[0::2], flat[1::2], strict=True))

    async def overdue(self, *, limit: int = 1000) -> list[str]:
        """Agents whose heartbeat is older than stale_factor intervals (by Redis time)."""
        sec, usec = await self.r.time()
        now_ms = sec * 1000 + usec // 1000
        ids: Any = await self.r.zrangebyscore(
            catalog.deadline_key(prefix=self.p), "-inf", now_ms, start=0, num=limit
        )
        return [_s(i) for i in ids]

    async def health_probe(
        self, *, age_ms: float, interval_ms: float, error_rate: float,
        response_time_ms: float, cpu_percent: float,
    ) -> float:
        """The Lua health formula evaluated in Redis (for tests)."""
        res = await self._probe(
            keys=self._slot,
            args=[self.p, self._cfg, age_ms, interval_ms, error_rate, response_time_ms,
                  cpu_percent]
        )
        return float(_s(res))

    # ---- reads ------------------------------------------------------------
    def _compose(
        self, pb: bytes, h: dict[bytes, bytes], load: dict[bytes, bytes] | None
    ) -> registry_pb2.Agent:
        agent = registry_pb2.Agent.FromString(pb)
        agent.status = STATUS_BY_NAME.get(_s(h.get(b"status")), registry_pb2.AGENT_STATUS_ACTIVE)
        agent.health_score = float(_s(h.get(b"health")) or 0)
        if b"registered_ms" in h:
            agent.register_time.CopyFrom(ts_ms(int(h[b"registered_ms"])))
        if b"updated_ms" in h:
            agent.update_time.CopyFrom(ts_ms(int(h[b"updated_ms"])))
        if b"last_heartbeat_ms" in h:
            agent.last_heartbeat_time.CopyFrom(ts_ms(int(h[b"last_heartbeat_ms"])))
        if b"interval_ms" in h:
            agent.heartbeat_interval.FromMilliseconds(int(h[b"interval_ms"]))
        agent.revision = int(h.get(b"rev", b"0"))
        if load:
            lm = agent.load
            for name in catalog.LOAD_FIELDS:
                raw = load.get(name.encode())
                if raw is not None:
                    value = float(raw)
                    setattr(lm, name, int(value) if name in ("queue_size", "capacity") else value)
        return agent

    async def get(self, agent_id: str) -> registry_pb2.Agent | None:
        """One agent with its status, health and load; None when not registered."""
        return (await self.get_many([agent_id]))[0]

    async def get_many(self, agent_ids: Sequence[str]) -> list[registry_pb2.Agent | None]:
        """Agents by id in one pipelined round trip; None for missing ones."""
        pipe = self.r.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.get(catalog.descriptor_key(agent_id, prefix=self.p))
            pipe.hgetall(catalog.agent_key(agent_id, prefix=self.p))
            pipe.hgetall(catalog.load_key(agent_id, prefix=self.p))
        res = await pipe.execute()
        out: list[registry_pb2.Agent | None] = []
        for i in range(len(agent_ids)):
            pb, h, load = res[3 * i : 3 * i + 3]
            out.append(self._compose(pb, h, load) if pb is not None and h else None)
        return out

    async def list_ids(self, *, after: str, count: int) -> list[str]:
        """Up to `count` agent ids greater than `after`, in order."""
        lo = "(" + after if after else "-"
        ids = await self.r.zrangebylex(
            catalog.agents_key(prefix=self.p), lo, "+", start=0, num=count
        )
        return [_s(i) for i in ids]

    async def count(self) -> int:
        """Number of registered agents."""
        return int(await self.r.zcard(catalog.agents_key(prefix=self.p)))

    async def revision(self) -> int:
        """The current catalog revision (0 before any event)."""
        return int(await self.r.get(catalog.revision_key(prefix=self.p)) or 0)

    def epoch_key(self) -> str:
        """STRING: a random id written once per Redis dataset. It is gone
        (or different) once Redis comes back empty (a restart without
        persistence, a failover to an empty replica, a FLUSHALL)."""
        return f"{self.p}epoch"

    async def epoch(self) -> str | None:
        """The dataset's epoch id, None when there is none (yet, or any more)."""
        raw = await self.r.get(self.epoch_key())
        return None if raw is None else _s(raw)

    async def ensure_epoch(self) -> str:
        """The dataset's epoch id, writing a new one first if there is none
        (SET NX: of replicas racing, one id wins and all return it)."""
        await self.r.set(self.epoch_key(), uuid.uuid4().hex, nx=True)
        return await self.epoch() or ""

    async def status_counts(self) -> dict[str, int]:
        """Registered agents per status."""
        raw = await self.r.hgetall(catalog.counts_key(prefix=self.p))
        return {_s(k): int(v) for k, v in raw.items()}

    async def first_revision(self) -> int:
        """Revision of the oldest retained event, or 0 when the stream is empty."""
        first: Any = await self.r.xrange(catalog.events_key(prefix=self.p), "-", "+", count=1)
        return int(_s(first[0][0]).split("-")[0]) if first else 0

    async def events(self, *, start: int, count: int) -> list[StoredEvent]:
        """Up to `count` events with revision >= start, oldest first."""
        raw: Any = await self.r.xrange(
            catalog.events_key(prefix=self.p), f"{start}-0", "+", count=count
        )
        return [self.decode_event(eid, fields) for eid, fields in raw]

    async def read_events(self, *, after: int, block_ms: int, count: int) -> list[StoredEvent]:
        """Events with revision > after, waiting up to block_ms for the first one."""
        raw: Any = await self.r.xread(
            {catalog.events_key(prefix=self.p): f"{after}-0"}, count=count, block=block_ms
        )
        out: list[StoredEvent] = []
        for _stream, entries in raw or []:
            out.extend(self.decode_event(eid, f) for eid, f in entries)
        return out

    @staticmethod
    def decode_event(eid: bytes | str, f: dict[bytes, bytes]) -> StoredEvent:
        """A StoredEvent from a stream entry."""
        rev = int(_s(eid).split("-")[0])
        agent = registry_pb2.Agent.FromString(f.get(b"pb", b""))
        agent.status = STATUS_BY_NAME.get(_s(f.get(b"status")), registry_pb2.AGENT_STATUS_ACTIVE)
        agent.health_score = float(_s(f.get(b"health")) or 0)
        agent.revision = rev
        ev = registry_pb2.AgentEvent(
            revision=rev,
            type=EVENT_TYPES[_s(f[b"t"])],
            agent=agent,
            previous_status=STATUS_BY_NAME.get(
                _s(f.get(b"prev")), registry_pb2.AGENT_STATUS_UNSPECIFIED
            ),
            reason=_s(f.get(b"reason")),
        )
        ev.event_time.CopyFrom(ts_ms(int(_s(f.get(b"ts")) or 0)))
        return StoredEvent(revision=rev, event=ev)
