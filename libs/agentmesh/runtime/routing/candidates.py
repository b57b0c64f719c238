"""Candidate agents read from the registry's Redis state, and which of them
are eligible right now.

A *pool* is a set of candidates named by a `PoolSpec` (explicit ids or a
selector). `PoolStore` keeps a snapshot of every pool in use, refreshed in the
background every `state_ttl_ms`, so routing decisions do not wait on Redis.
Eligibility follows Envoy: unhealthy (INACTIVE, DECOMMISSIONED), breaker-open
and ejected agents are skipped, unless the healthy fraction falls below the
panic threshold, in which case every non-decommissioned candidate is eligible
(https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/panic_threshold).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from agentmesh import catalog
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.routing import keys
from agentmesh.runtime.routing.targets import TargetState, TargetStates
from agentmesh.runtime.tasks import cancel_and_wait

log = logging.getLogger("agentmesh.router.candidates")

ROUTABLE_STATUSES = frozenset(catalog.USABLE_STATUSES)


@dataclass(slots=True)
class Candidate:
    """One agent as the registry describes it.

    Attributes:
        agent_id: its id.
        endpoint: host:port of its AgentService.
        status: ACTIVE, DEGRADED, INACTIVE or DECOMMISSIONED.
        health: health score in [0, 1].
        location / version: registry fields.
        queue_size / capacity / processing_time_ms / error_rate: its reported load.
        load_stale: True when its last load report was older than the
            pool's max load age, and queue, time and errors read as 0.
    """

    agent_id: str
    endpoint: str
    status: str
    health: float
    location: str = ""
    version: str = ""
    queue_size: float = 0.0
    capacity: float = 0.0
    processing_time_ms: float = 0.0
    error_rate: float = 0.0
    load_stale: bool = False
    #: The load factor's reported part, computed on first use (see strategies).
    base_load: float = -1.0


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What a pool is made of.

    Attributes:
        key: stable short name of the pool, used in Redis keys and caches.
        ids: explicit agent ids in order, or None.
        selector: serialized AgentSelector, used when `ids` is None.
    """

    key: str
    ids: tuple[str, ...] | None = None
    selector: bytes = b""

    @classmethod
    def of_ids(cls, ids: Iterable[str]) -> PoolSpec:
        """A pool of explicit agent ids (order kept for FAILOVER)."""
        t = tuple(ids)
        return cls(key="ids:" + _digest("\x00".join(t).encode()), ids=t)

    @classmethod
    def of_selector(cls, selector: common_pb2.AgentSelector) -> PoolSpec:
        """A pool of the agents matching `selector`."""
        raw = selector.SerializeToString(deterministic=True)
        return cls(key="sel:" + _digest(raw), selector=raw)


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


@dataclass(slots=True)
class Eligible:
    """The candidates a decision may use.

    Attributes:
        candidates: eligible candidates; in explicit-id order for id pools,
            by agent id otherwise.
        panic: True when the panic threshold let unhealthy candidates in.
        total: candidates in the pool.
        skipped: why others were skipped, reason -> count.
    """

    candidates: list[Candidate]
    panic: bool
    total: int
    skipped: dict[str, int] = field(default_factory=dict)
    #: Values derived from `candidates` by the strategies (orders, weights),
    #: dropped whenever eligibility is recomputed.
    memo: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> frozenset[str]:
        """Eligible agent ids."""
        got = self.memo.get("ids")
        if got is None:
            got = self.memo["ids"] = frozenset(c.agent_id for c in self.candidates)
        return got


@dataclass(slots=True)
class _Pool:
    spec: PoolSpec
    candidates: list[Candidate]
    fetched_at: float
    used_at: float
    eligible: Eligible | None = None
    eligible_gen: int = -1
    fingerprint: int = 0


def eligible_of(
    candidates: list[Candidate],
    states: TargetStates,
    *,
    now_ms: int,
    panic_threshold: float,
    max_ejection_percent: float,
) -> Eligible:
    """Apply health, breakers, ejections and the panic threshold.

    Args:
        candidates: the pool.
        states: breaker and outlier state by agent id.
        now_ms: wall clock in ms (breaker and ejection expiry).
        panic_threshold: healthy fraction below which every routable candidate is eligible.
        max_ejection_percent: at most this share of the pool is kept out by
            ejection; the later ejections are ignored, as in Envoy.
    """
    routable = [c for c in candidates if c.status != "DECOMMISSIONED"]
    skipped: dict[str, int] = {}
    if len(routable) < len(candidates):
        skipped["decommissioned"] = len(candidates) - len(routable)
    allowed_ejections = math.floor(max_ejection_percent / 100.0 * len(routable))
    ejected = sorted(
        (
            (s.ejected_until_ms, c.agent_id)
            for c in routable
            if (s := states.get(c.agent_id)) is not None and s.is_ejected(now_ms)
        ),
    )
    kept_out = {aid for _, aid in ejected[:allowed_ejections]}
    healthy: list[Candidate] = []
    for c in routable:
        st = states.get(c.agent_id)
        if c.status not in ROUTABLE_STATUSES:
            reason = c.status.lower() or "unknown_status"
            skipped[reason] = skipped.get(reason, 0) + 1
        elif st is not None and st.effective_breaker(now_ms) == "OPEN":
            skipped["breaker_open"] = skipped.get("breaker_open", 0) + 1
        elif c.agent_id in kept_out:
            skipped["ejected"] = skipped.get("ejected", 0) + 1
        else:
            healthy.append(c)
    if routable and len(healthy) / len(routable) < panic_threshold:
        return Eligible(routable, True, len(candidates), skipped)
    return Eligible(healthy, False, len(candidates), skipped)


async def resolve_selector(redis: aioredis.Redis, selector: common_pb2.AgentSelector) -> list[str]:
    """Agent ids matching the index part of a selector (capabilities AND,
    service types OR, tags AND), sorted; see agentmesh.catalog.match_index.

    Raises:
        ValueError: when the selector has no capability, service type or tag
            (the router does not route to the whole catalog).
    """
    if not (selector.capabilities or selector.service_types or selector.tags):
        raise ValueError("selector needs at least one capability, service type or tag")
    return await catalog.match_index(redis, selector)


def load_is_stale(load: Mapping[bytes, bytes], *, now_ms: int, max_age_ms: int) -> bool:
    """True when a load hash's `updated_ms` is more than `max_age_ms` before `now_ms`.

    A hash without `updated_ms` (every mesh writer sets it) has no known age
    and is trusted; `max_age_ms` 0 trusts every report.
    """
    if max_age_ms <= 0 or not load:
        return False
    raw = load.get(b"updated_ms")
    if raw is None:
        return False
    return now_ms - _float(raw, float(now_ms)) > max_age_ms


async def fetch_candidates(
    redis: aioredis.Redis, ids: Iterable[str], *, max_load_age_ms: int = 0
) -> tuple[list[Candidate], dict[str, TargetState]]:
    """Read agents, their load and their target state in one pipeline.

    Agents without a registry hash (no endpoint) are left out; the agent
    fields are parsed by agentmesh.catalog.AgentInfo. A load report older
    than `max_load_age_ms` (see `load_is_stale`) reads as neutral: queue,
    processing time and error rate 0, the declared capacity kept.
    """
    id_list = list(ids)
    async with redis.pipeline(transaction=False) as p:
        for aid in id_list:
            p.hmget(catalog.agent_key(aid), catalog.AGENT_FIELDS)
            p.hgetall(catalog.load_key(aid))
            p.hgetall(keys.target(aid))
        raw = await p.execute()
    out: list[Candidate] = []
    states: dict[str, TargetState] = {}
    now_ms = int(time.time() * 1000)
    for i, aid in enumerate(id_list):
        fields, load, tstate = raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]
        if tstate:
            states[aid] = TargetState.from_hash(aid, tstate)
        info = catalog.AgentInfo.from_fields(aid, fields)
        if info is None:
            continue
        stale = load_is_stale(load, now_ms=now_ms, max_age_ms=max_load_age_ms)
        if stale:
            load = {b"capacity": load.get(b"capacity", b"0")}
        out.append(
            Candidate(
                agent_id=aid,
                endpoint=info.endpoint,
                status=info.status,
                health=info.health,
                location=info.location,
                version=info.version,
                queue_size=_float(load.get(b"queue_size"), 0.0),
                capacity=_float(load.get(b"capacity"), 0.0),
                processing_time_ms=_float(
                    load.get(b"processing_time_ms") or load.get(b"response_time_ms"), 0.0
                ),
                error_rate=_float(load.get(b"error_rate"), 0.0),
                load_stale=stale,
            )
        )
    return out, states


def _float(raw: bytes | str | None, default: float) -> float:
    if raw is None or raw == b"" or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        return default
    return v if math.isfinite(v) else default


class PoolStore:
    """Snapshots of candidate pools, refreshed in the background.

    Args:
        redis: the registry's Redis.
        states: shared breaker/outlier state, updated here on refresh.
        state_ttl_ms: refresh interval of a pool in use.
        panic_threshold / max_ejection_percent: see `eligible_of`.
        max_load_age_ms: see `fetch_candidates`.
        idle_s: pools unused this long are dropped.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        states: TargetStates,
        *,
        state_ttl_ms: int,
        panic_threshold: float,
        max_ejection_percent: float,
        max_load_age_ms: int = 0,
        idle_s: float = 60.0,
    ) -> None:
        self._redis = redis
        self._max_load_age_ms = max_load_age_ms
        self._states = states
        self._ttl_s = state_ttl_ms / 1000.0
        self._panic = panic_threshold
        self._max_eject = max_ejection_percent
        self._idle_s = idle_s
        self._pools: dict[str, _Pool] = {}
        self._loading: dict[str, asyncio.Future[_Pool]] = {}
        #: Bumped whenever eligibility may have changed (health change).
        self.health_gen = 0
        self._task: asyncio.Task[None] | None = None

    # ---- reading --------------------------------------------------------
    async def eligible(self, spec: PoolSpec) -> Eligible:
        """The eligible candidates of a pool, loading it on first use.

        Raises:
            ValueError: for a selector without an index filter.
            redis.RedisError: when Redis is down on first use.
        """
        pool = self._pools.get(spec.key)
        if pool is None:
            pool = await self._load(spec)
        return self.eligible_cached(pool)

    def peek(self, spec: PoolSpec) -> Eligible | None:
        """The eligible candidates of a pool already loaded, without awaiting."""
        pool = self._pools.get(spec.key)
        return None if pool is None else self.eligible_cached(pool)

    def eligible_cached(self, pool: _Pool) -> Eligible:
        """Eligibility of a loaded pool, recomputed only after a health change."""
        pool.used_at = time.monotonic()
        if pool.eligible is None or pool.eligible_gen != self.health_gen:
            pool.eligible = eligible_of(
                pool.candidates,
                self._states,
                now_ms=int(time.time() * 1000),
                panic_threshold=self._panic,
                max_ejection_percent=self._max_eject,
            )
            pool.eligible_gen = self.health_gen
        return pool.eligible

    async def _load(self, spec: PoolSpec) -> _Pool:
        fut = self._loading.get(spec.key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loading[spec.key] = fut
        try:
            pool = await self._fetch(spec)
            self._pools[spec.key] = pool
            fut.set_result(pool)
            return pool
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters may not exist
            raise
        finally:
            del self._loading[spec.key]

    async def _fetch(self, spec: PoolSpec) -> _Pool:
        if spec.ids is not None:
            ids: list[str] = list(dict.fromkeys(spec.ids))
            selector = None
        else:
            selector = common_pb2.AgentSelector.FromString(spec.selector)
            # raises ConstraintError (a ValueError) before Redis is read
            admits = catalog.selector_filter(selector)
            ids = await resolve_selector(self._redis, selector)
        cands, states = await fetch_candidates(
            self._redis, ids, max_load_age_ms=self._max_load_age_ms
        )
        if selector is not None:
            cands = [c for c in cands if admits(c)]
            # Location first, then id, not discovery's health order: health
            # moves on every refresh and would reshuffle round robin; the
            # strategies that want health order sort by it themselves.
            if selector.preferred_location:
                loc = selector.preferred_location
                cands.sort(key=lambda c: (c.location != loc, c.agent_id))
        self._states.merge(states, ids)
        now = time.monotonic()
        return _Pool(spec, cands, now, now, fingerprint=self._fingerprint(cands))

    def _fingerprint(self, cands: list[Candidate]) -> int:
        now_ms = int(time.time() * 1000)
        parts = []
        for c in cands:
            st = self._states.get(c.agent_id)
            parts.append(
                (
                    c.agent_id,
                    c.status,
                    round(c.health, 2),
                    c.endpoint,
                    st.effective_breaker(now_ms) if st else "",
                    st.is_ejected(now_ms) if st else False,
                )
            )
        return hash(tuple(parts))

    # ---- background refresh --------------------------------------------
    def start(self) -> None:
        """Start refreshing pools in use every state_ttl_ms."""
        self._task = asyncio.create_task(self._refresh_loop(), name="router-pool-refresh")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task:
            # Not a single cancel(): redis-py's wait_for can swallow it on 3.11
            # and the loop would run on, hanging the SIGTERM shutdown.
            await cancel_and_wait(self._task)

    def invalidate(self) -> None:
        """Eligibility may have changed (a local breaker transition): recompute."""
        self.health_gen += 1

    async def refresh_all(self) -> None:
        """Refresh every pool in use now; drop idle ones."""
        now = time.monotonic()
        changed = False
        for key, pool in list(self._pools.items()):
            if now - pool.used_at > self._idle_s:
                del self._pools[key]
                continue
            fresh = await self._fetch(pool.spec)
            fresh.used_at = pool.used_at
            if fresh.fingerprint != pool.fingerprint:
                changed = True
                self._pools[key] = fresh
            else:
                # same eligibility: keep the cached Eligible, take the new load figures
                pool.candidates = fresh.candidates
                pool.fetched_at = fresh.fetched_at
                if pool.eligible is not None:
                    by_id = {c.agent_id: c for c in fresh.candidates}
                    pool.eligible.candidates = [
                        by_id.get(c.agent_id, c) for c in pool.eligible.candidates
                    ]
                    pool.eligible.memo.clear()
        if changed:
            self.health_gen += 1

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s)
            try:
                await self.refresh_all()
            except Exception as e:  # Redis blips must not kill the loop
                log.warning("pool refresh failed", extra={"error": repr(e)})
