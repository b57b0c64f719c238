"""The reaper: evaluates agents whose heartbeats are overdue and deregisters
those silent past the deregistration timeout.

Safe with several replicas: a sweep runs only under the reaper lease
(`am:reg:reaper:lease`, SET NX PX), and the sweep script re-checks the lease
inside Redis, so two replicas never evaluate the same tick twice (which
would double-count flap-damping streaks). Each deregistration is one atomic
script that re-checks the heartbeat age, so an agent that heartbeats during
a sweep is never removed. Every replica also refreshes its gauges.
"""

from __future__ import annotations

import asyncio
import logging

from agentmesh.runtime.tasks import cancel_and_wait
from services.registry import metrics
from services.registry.store import STATUS_NAMES, RegistryStore

log = logging.getLogger("agentmesh.registry.reaper")


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
        if not await self.store.try_lease(ttl_ms=lease_ms):
            return []
        done: list[tuple[str, str]] = []
        ids = await self.store.overdue(limit=5000)
        for i in range(0, len(ids), 200):
            out = await self.store.sweep(ids[i : i + 200])
            if out is None:  # lost the lease mid-sweep; the new holder carries on
                break
            done.extend(out)
        expired = sum(1 for _, outcome in done if outcome == "EXPIRED")
        if expired:
            metrics.EXPIRED.inc(expired)
            log.info("expired silent agents", extra={"count": expired})
        return done

    async def refresh_gauges(self) -> None:
        """Update registry_agents_total and registry_agent_health from Redis."""
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
