"""Health of A2A agents from their card endpoint.

A2A agents do not call Heartbeat. The registry fetches each one's agent card
every heartbeat interval instead: a fetch that returns a card is the agent's
heartbeat, so the usual health formula, flap damping and expiry apply (an
agent whose card stops answering goes stale, then INACTIVE, then is
deregistered after `deregistration_timeout_ms`). The other half of an A2A
agent's health is its call outcomes, which count toward its circuit breaker
and outlier ejection on the one agent path like any agent's.

Every replica probes (a heartbeat is idempotent, so two replicas probing the
same agent only refresh it twice); at most `CONCURRENCY` fetches run at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import redis

from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.server.registry import a2a_card
from agentmesh.server.registry.store import RegistryStore

log = logging.getLogger("agentmesh.registry.a2a")

#: Card fetches in flight at once per replica.
CONCURRENCY = 32


class CardProber:
    """Fetches the cards of A2A agents as their heartbeats.

    Args:
        store: the Redis catalog.
        tick_ms: how often due agents are looked for, ms.
    """

    def __init__(self, store: RegistryStore, *, tick_ms: int) -> None:
        self.store = store
        self.tick_s = tick_ms / 1000.0
        self._last: dict[str, float] = {}  # agent id -> monotonic time of its last probe
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        """Start probing in the background."""
        self._http = httpx.AsyncClient(timeout=a2a_card.CARD_TIMEOUT_S)
        self._task = asyncio.create_task(self._run(), name="registry-a2a-prober")

    async def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except redis.RedisError as e:
                log.warning("a2a probe skipped: %s", e)
            await asyncio.sleep(self.tick_s)

    async def probe_once(self) -> dict[str, bool]:
        """Probe every A2A agent whose heartbeat interval has passed.

        Returns:
            agent id -> whether its card answered (agents not due are absent).
        """
        key = a2a_card.a2a_key(self.store)
        ids = sorted(i.decode() if isinstance(i, bytes) else str(i)
                     for i in await self.store.r.smembers(key))
        if not ids:
            return {}
        agents = await self.store.get_many(ids)
        now = time.monotonic()
        due: list[tuple[str, str]] = []
        for aid, agent in zip(ids, agents, strict=True):
            if agent is None:  # deregistered or expired
                await self.store.r.srem(key, aid)
                self._last.pop(aid, None)
                continue
            interval_s = agent.heartbeat_interval.ToMilliseconds() / 1000.0
            if now - self._last.get(aid, float("-inf")) >= interval_s:
                self._last[aid] = now
                due.append((aid, agent.endpoint))
        gate = asyncio.Semaphore(CONCURRENCY)

        async def probe(aid: str, url: str) -> bool:
            async with gate:
                ok = await self._card_answers(url)
            if ok:
                await self.store.heartbeat(aid, None)
            return ok

        results = await asyncio.gather(*(probe(a, u) for a, u in due))
        return {aid: ok for (aid, _), ok in zip(due, results, strict=True)}

    async def _card_answers(self, url: str) -> bool:
        """True when `url` serves a JSON object (the card answered)."""
        assert self._http is not None
        try:
            resp = await self._http.get(url)
            return resp.status_code == 200 and isinstance(resp.json(), dict)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            return False
