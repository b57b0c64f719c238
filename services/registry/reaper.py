"""The reaper: evaluates agents whose heartbeats are overdue and deregisters
those silent past the deregistration timeout.

Safe with several replicas: a sweep runs only under the reaper lease (the
runtime's fenced lease, agentmesh.runtime.lease: record `am:reg:reaper:lease`,
fencing-token counter `am:reg:reaper:fence`), and the sweep script starts with
the lease's fence check inside Redis, so two replicas never evaluate the same
tick twice (which would double-count flap-damping streaks), and a replica
that paused past its lease writes nothing. Each deregistration is one atomic
script that re-checks the heartbeat age, so an agent that heartbeats during
a sweep is never removed. Every replica also refreshes its gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agentmesh import catalog
from agentmesh.runtime.lease import FencedLeases, LeaseKeys
from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.server.registry import lua, metrics
from agentmesh.server.registry.store import STATUS_NAMES, RegistryStore

log = logging.getLogger("agentmesh.registry.reaper")

#: The per-capability count reads every capability index and every member's
#: status (O(agents)), so it runs at most this often instead of every sweep;
#: Prometheus scrapes every 15-30 s anyway.
CAPABILITY_REFRESH_S = 5.0
#: A capability whose last agent was deregistered (or expired) keeps reporting
#: 0 healthy agents this long, so "no healthy agent" can fire before its
#: series disappears.
CAPABILITY_RETAIN_S = 3600.0
#: Statuses the router will send work to (it skips INACTIVE and DECOMMISSIONED).
HEALTHY_STATUSES = (b"ACTIVE", b"DEGRADED")


class Reaper:
    """Periodic sweep task.

    Args:
        store: the Redis catalog.
        interval_ms: sweep period, ms.
    """

    def __init__(self, store: RegistryStore, *, interval_ms: int) -> None:
        self.store = store
        self.interval_s = interval_ms / 1000.0
        self._task: asyncio.Task[None] | None = None
        self._caps_refreshed = float("-inf")
        self._caps_seen: dict[str, float] = {}  # capability -> monotonic time last present
        self.leases = FencedLeases(store.r)
        self.lease_keys = LeaseKeys(store.p + lua.REAPER_LEASE, store.p + lua.REAPER_FENCE)

    def start(self) -> None:
        """Start sweeping in the background."""
        self._task = asyncio.create_task(self._run(), name="registry-reaper")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            # Not a single cancel(): redis-py's wait_for can swallow it on 3.11
            # and the sweep loop would run on, hanging the SIGTERM shutdown.
            await cancel_and_wait(self._task)

    async def sweep_once(self) -> list[tuple[str, str]]:
        """One sweep if this replica gets the lease; the (agent_id, outcome) pairs."""
        lease_ms = max(1000, int(self.interval_s * 3000))
        # Reentrant: the holder extends its lease (same token) every sweep.
        grant = await self.leases.acquire(
            self.lease_keys, owner=self.store.s.replica_id, ttl_ms=lease_ms, reentrant=True
        )
        if grant.lease is None:
            return []
        done: list[tuple[str, str]] = []
        ids = await self.store.overdue(limit=5000)
        for i in range(0, len(ids), 200):
            out = await self.store.sweep(ids[i : i + 200], lease=grant.lease)
            if out is None:  # lost the lease mid-sweep; the new holder carries on
                break
            done.extend(out)
        expired = sum(1 for _, outcome in done if outcome == "EXPIRED")
        if expired:
            metrics.EXPIRED.inc(expired)
            log.info("expired silent agents", extra={"count": expired})
        return done

    async def refresh_gauges(self) -> None:
        """Update registry_agents_total, registry_agent_health and (every
        CAPABILITY_REFRESH_S) registry_capability_healthy_agents from Redis."""
        counts = await self.store.status_counts()
        for name in STATUS_NAMES:
            if name != "DECOMMISSIONED":
                metrics.AGENTS.labels(name).set(counts.get(name, 0))
        pipe = self.store.r.pipeline(transaction=False)
        key = self.store.p + "health"
        for lo, hi in metrics.HEALTH_BANDS:
            pipe.zcount(key, lo, hi if hi >= 1.0 else f"({hi}")
        for (lo, hi), n in zip(metrics.HEALTH_BANDS, await pipe.execute(), strict=True):
            metrics.AGENT_HEALTH.labels(metrics.band_label(lo, hi)).set(n)
        now = time.monotonic()
        if now - self._caps_refreshed >= CAPABILITY_REFRESH_S:
            self._caps_refreshed = now
            await self.refresh_capability_gauge(now_s=now)

    async def healthy_by_capability(self) -> tuple[dict[str, int], set[str]]:
        """ACTIVE or DEGRADED agents per capability.

        Returns:
            (counts for the first `metrics.MAX_CAPABILITY_LABELS` capability
            names in sorted order, every capability name in the catalog).
        """
        r, p = self.store.r, self.store.p
        prefix = catalog.capability_index_key("", prefix=p)
        present = {
            (k.decode() if isinstance(k, bytes) else k)[len(prefix) :]
            async for k in r.scan_iter(match=prefix + "*", count=1000)
        }
        names = sorted(present)[: metrics.MAX_CAPABILITY_LABELS]
        pipe = r.pipeline(transaction=False)
        for name in names:
            pipe.smembers(prefix + name)
        members: list[set[bytes]] = await pipe.execute()
        ids = sorted(set().union(*members))
        pipe = r.pipeline(transaction=False)
        for aid in ids:
            pipe.hget(catalog.agent_key(aid.decode(), prefix=p), "status")
        healthy = {
            aid for aid, st in zip(ids, await pipe.execute(), strict=True)
            if st in HEALTHY_STATUSES
        }
        counts = {name: len(m & healthy) for name, m in zip(names, members, strict=True)}
        return counts, present

    async def refresh_capability_gauge(self, *, now_s: float) -> None:
        """Set registry_capability_healthy_agents from Redis.

        Args:
            now_s: time.monotonic() of this refresh (drives the retention of
                capabilities that lost their last agent).
        """
        counts, present = await self.healthy_by_capability()
        for name, n in counts.items():
            metrics.CAPABILITY_HEALTHY.labels(name).set(n)
            self._caps_seen[name] = now_s
        for name, seen in list(self._caps_seen.items()):
            if name in counts:
                continue
            # Still registered but pushed past the label cap: drop, do not report 0.
            if name in present or now_s - seen > CAPABILITY_RETAIN_S:
                del self._caps_seen[name]
                metrics.CAPABILITY_HEALTHY.remove(name)
            else:
                metrics.CAPABILITY_HEALTHY.labels(name).set(0)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
                await self.refresh_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis blips must not kill the reaper
                log.warning("reaper sweep failed", exc_info=True)
            await asyncio.sleep(self.interval_s)
