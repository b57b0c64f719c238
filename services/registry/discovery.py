"""DiscoverAgents over a local mirror of the catalog, with a result cache.

Each replica keeps the whole catalog in memory (descriptor, status, health,
in-memory capability/service-type/tag indexes) and keeps it current from the
event stream, the informer pattern of Kubernetes clients: the watch tailer
(agentmesh.server.registry.watch) hands it every event batch as soon as XREAD returns
it. Consistency: an answer reflects every change made through this replica
before the call (writes raise the mirror's wanted revision), and changes made
through other replicas once the tailer delivers them (one blocking XREAD,
normally well under a millisecond). When the tailer is not healthy, or the
mirror saw a gap, `sync()` falls back to reading the revision from Redis and
applying the missing events with XRANGE; if the events were trimmed away, the
mirror reloads from the agent hashes.

Health in the mirror is the health of the agent's last event: it lags the
live score by less than `health_event_step` (default 0.05), or by one event
for status changes. Results are cached per selector until the revision moves
or the TTL runs out.

Cost at 10k agents: a cache hit is one Redis GET plus a dict lookup; a miss
intersects in-memory sets (smallest first) and sorts only the survivors.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from agentmesh.catalog import discovery_order, version_matches
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2
from agentmesh.server.registry import metrics
from agentmesh.server.registry.store import RegistryStore, StoredEvent
from agentmesh.server.registry.watch import WatchHub

log = logging.getLogger("agentmesh.registry.discovery")

_SERVED = frozenset({registry_pb2.AGENT_STATUS_ACTIVE, registry_pb2.AGENT_STATUS_DEGRADED})
_EMPTY: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Entry:
    # Plain copies of the hot fields: reading attributes of a upb message is
    # several times slower than reading a slot.
    agent: registry_pb2.Agent
    agent_id: str
    status: int
    health: float
    location: str
    version_text: str
    caps: frozenset[str]
    stypes: frozenset[str]
    tags: frozenset[str]


@dataclass
class _Cached:
    revision: int
    expires: float
    response: registry_pb2.DiscoverAgentsResponse


def selector_matches(
    agent: registry_pb2.Agent, selector: common_pb2.AgentSelector
) -> bool:
    """True when `agent` has every capability and tag, and one service type, of `selector`."""
    if selector.capabilities and not set(selector.capabilities) <= set(agent.capabilities):
        return False
    if selector.tags and not set(selector.tags) <= set(agent.tags):
        return False
    return not (
        selector.service_types and not set(selector.service_types) & set(agent.service_types)
    )


class CatalogMirror:
    """The in-memory catalog and the discovery engine.

    Args:
        store: the Redis catalog.
        cache_ttl_ms: lifetime of a cached discovery answer, ms.
        cache_size: maximum cached selectors; the cache is cleared when full.
    """

    def __init__(
        self, store: RegistryStore, *, cache_ttl_ms: int, cache_size: int = 4096
    ) -> None:
        self.store = store
        self.revision = 0
        self.loaded = False
        self._entries: dict[str, _Entry] = {}
        self._by_cap: dict[str, set[str]] = {}
        self._by_stype: dict[str, set[str]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._lock = asyncio.Lock()
        self._cache: dict[tuple[object, ...], _Cached] = {}
        self._cache_ttl_s = cache_ttl_ms / 1000.0
        self._cache_size = cache_size
        self._hub: WatchHub | None = None
        self._wanted = 0
        self._stale = True

    def attach(self, hub: WatchHub) -> None:
        """Follow `hub`'s tailer instead of asking Redis for the revision on
        every call, and reload when it finds the dataset reset."""
        self._hub = hub
        hub.listeners.append(self._on_events)
        hub.reset_listeners.append(self.reset)

    def reset(self) -> None:
        """Forget the mirror (Redis came back empty): the next call reloads it
        from Redis, and answers no agent that exists only in memory."""
        self.loaded = False
        self._stale = True
        self._wanted = 0
        self._cache.clear()

    def want(self, revision: int) -> None:
        """Make the next answer include at least `revision` (after a local write)."""
        self._wanted = max(self._wanted, revision)

    def _on_events(self, events: list[StoredEvent]) -> None:
        if not self.loaded or self._lock.locked() or not events:
            self._stale = True
            return
        if events[0].revision > self.revision + 1:
            self._stale = True  # a gap: the slow path fills it
            return
        for ev in events:
            if ev.revision > self.revision:
                self._apply(ev)

    def __len__(self) -> int:
        return len(self._entries)

    async def stats(self) -> registry_pb2.GetRegistryStatsResponse:
        """The catalog summary of GetRegistryStats, from the synced mirror
        (one pass over the in-memory entries; no Redis scan)."""
        await self.sync()
        out = registry_pb2.GetRegistryStatsResponse(
            total_agents=len(self._entries), revision=self.revision
        )
        health = 0.0
        for e in self._entries.values():
            name = registry_pb2.AgentStatus.Name(e.status)  # type: ignore[arg-type]
            out.agents_by_status[name] = out.agents_by_status[name] + 1
            health += e.health
        for cap, ids in self._by_cap.items():
            if ids:
                out.agents_by_capability[cap] = len(ids)
        out.unique_capabilities = len(out.agents_by_capability)
        out.average_health_score = health / len(self._entries) if self._entries else 0.0
        return out

    # ---- keeping current --------------------------------------------------
    async def sync(self) -> None:
        """Bring the mirror up to date (see the module docstring)."""
        if (self.loaded and not self._stale and self._hub is not None and self._hub.fresh()
                and self.revision >= self._wanted):
            return
        await self._sync_from_redis()
        self._stale = False

    async def _sync_from_redis(self) -> None:
        current = await self.store.revision()
        if self.loaded and current <= self.revision:
            if current < self.revision:  # Redis was flushed or replaced: start over.
                async with self._lock:
                    await self._reload()
            return
        async with self._lock:
            if not self.loaded:
                await self._reload()
                return
            while self.revision < current:
                events = await self.store.events(start=self.revision + 1, count=5000)
                if not events or events[0].revision != self.revision + 1:
                    log.info("event history trimmed; reloading the catalog mirror")
                    await self._reload()
                    return
                for ev in events:
                    self._apply(ev)

    async def _reload(self) -> None:
        rev = await self.store.revision()
        self._entries.clear()
        self._by_cap.clear()
        self._by_stype.clear()
        self._by_tag.clear()
        after = ""
        while True:
            ids = await self.store.list_ids(after=after, count=2000)
            if not ids:
                break
            for agent in await self.store.get_many(ids):
                if agent is not None:
                    self._put(agent)
            after = ids[-1]
        self.revision = rev
        self.loaded = True
        # Changes made while we were reading: apply them on top, in order.
        for ev in await self.store.events(start=rev + 1, count=100_000):
            self._apply(ev)
        self._cache.clear()
        # Move the long-lived catalog out of the collector's view, so full
        # collections stop walking 10k entries (a p99 outlier otherwise).
        gc.freeze()

    def _apply(self, ev: StoredEvent) -> None:
        agent = ev.event.agent
        if ev.event.type == registry_pb2.AGENT_EVENT_TYPE_DEREGISTERED:
            self._drop(agent.agent_id)
        else:
            self._put(agent)
        self.revision = ev.revision

    def _put(self, agent: registry_pb2.Agent) -> None:
        self._drop(agent.agent_id)
        e = _Entry(agent, agent.agent_id, agent.status, agent.health_score, agent.location,
                   agent.version, frozenset(agent.capabilities), frozenset(agent.service_types),
                   frozenset(agent.tags))
        self._entries[agent.agent_id] = e
        for index, keys in ((self._by_cap, e.caps), (self._by_stype, e.stypes),
                            (self._by_tag, e.tags)):
            for k in keys:
                index.setdefault(k, set()).add(agent.agent_id)

    def _drop(self, agent_id: str) -> None:
        e = self._entries.pop(agent_id, None)
        if e is None:
            return
        for index, keys in ((self._by_cap, e.caps), (self._by_stype, e.stypes),
                            (self._by_tag, e.tags)):
            for k in keys:
                members = index.get(k)
                if members is not None:
                    members.discard(agent_id)
                    if not members:
                        del index[k]

    # ---- answering --------------------------------------------------------
    async def discover(
        self, selector: common_pb2.AgentSelector, *, max_results: int, include_inactive: bool
    ) -> registry_pb2.DiscoverAgentsResponse:
        """Matching agents in discovery order (see DiscoverAgents in registry.proto).

        Args:
            selector: a validated selector.
            max_results: cap on returned agents; 0 means all.
            include_inactive: also return INACTIVE agents.
        """
        await self.sync()
        key = (
            tuple(sorted(selector.capabilities)), tuple(sorted(selector.service_types)),
            tuple(sorted(selector.tags)), selector.version_constraint,
            selector.min_health_score, selector.preferred_location, max_results,
            include_inactive,
        )
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit.revision == self.revision and hit.expires > now:
            metrics.child(metrics.DISCOVERY_CACHE, "hit").inc()
            return hit.response
        metrics.child(metrics.DISCOVERY_CACHE, "miss").inc()
        matches = self._match(selector, include_inactive)
        order = discovery_order(selector.preferred_location)
        if max_results and max_results < len(matches):
            chosen = heapq.nsmallest(max_results, matches, key=order)
        else:
            chosen = sorted(matches, key=order)
        response = registry_pb2.DiscoverAgentsResponse(
            agents=[e.agent for e in chosen], total_matches=len(matches)
        )
        cached = registry_pb2.DiscoverAgentsResponse()
        cached.CopyFrom(response)
        cached.cached = True
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = _Cached(self.revision, now + self._cache_ttl_s, cached)
        return response

    def _match(
        self, selector: common_pb2.AgentSelector, include_inactive: bool
    ) -> list[_Entry]:
        sets: list[Iterable[str]] = [self._by_cap.get(c, _EMPTY) for c in selector.capabilities]
        sets += [self._by_tag.get(t, _EMPTY) for t in selector.tags]
        candidates: Iterable[str]
        if sets:
            sets.sort(key=lambda s: len(s))  # type: ignore[arg-type]
            candidates = set(sets[0]).intersection(*sets[1:])
        else:
            candidates = self._entries.keys()
        if selector.service_types:
            wanted: set[str] = set()
            for st in selector.service_types:
                wanted |= self._by_stype.get(st, _EMPTY)
            candidates = wanted.intersection(candidates)
        constraint = selector.version_constraint
        min_health = selector.min_health_score
        out: list[_Entry] = []
        entries = self._entries
        for agent_id in candidates:
            e = entries[agent_id]
            if not include_inactive and e.status not in _SERVED:
                continue
            if e.health < min_health:
                continue
            if constraint and not version_matches(e.version_text, constraint):
                continue
            out.append(e)
        return out
