"""`grpc.health.v1` health that tells the truth about a daemon's dependencies.

A DependencyMonitor probes each dependency (Redis PING, Kafka metadata) every
`interval_s`. The overall service ("") and every served service are SERVING
only while all probes pass, NOT_SERVING otherwise, and NOT_SERVING for good
once the daemon starts draining.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from grpc_health.v1 import health, health_pb2

from agentmesh.runtime.metrics import DEPENDENCY_UP, HEALTH_SERVING

log = logging.getLogger("agentmesh.health")

#: A probe returns normally when the dependency is usable and raises otherwise.
Probe = Callable[[], Awaitable[object]]


class DependencyMonitor:
    """Drives a HealthServicer from dependency probes.

    Args:
        servicer: the grpc_health aio servicer to update.
        services: fully qualified service names served by the daemon.
        probes: dependency name → probe.
        interval_s: seconds between probe rounds.
        timeout_s: per-probe timeout in seconds; a slow probe counts as down.
    """

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        services: Iterable[str],
        probes: dict[str, Probe],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self._servicer = servicer
        self._services = ["", *services]
        self._probes = probes
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self.down: dict[str, str] = {}

    @property
    def serving(self) -> bool:
        """True when every dependency passed its last probe and we are not draining."""
        return not self.down and not self._draining

    async def _probe(self, name: str, probe: Probe) -> str | None:
        try:
            await asyncio.wait_for(probe(), self._timeout_s)
            return None
        except Exception as exc:  # any failure means the dependency is unusable
            return f"{type(exc).__name__}: {exc}"

    async def check_once(self) -> bool:
        """Run every probe once and publish the result; returns `serving`."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(n, self._probes[n]) for n in names))
        down = {n: r for n, r in zip(names, results, strict=True) if r is not None}
        if down != self.down:
            if down:
                log.warning("dependencies down", extra={"down": down})
            else:
                log.info("dependencies healthy again")
        self.down = down
        for n in names:
            DEPENDENCY_UP.labels(n).set(0 if n in down else 1)
        await self._publish()
        return self.serving

    async def _publish(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for svc in self._services:
            await self._servicer.set(svc, status)
            HEALTH_SERVING.labels(svc).set(1 if self.serving else 0)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_once()

    async def start(self) -> None:
        """Probe once, then keep probing in the background."""
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def drain(self) -> None:
        """Report NOT_SERVING for good and stop probing."""
        self._draining = True
        if self._task:
            self._task.cancel()
        await self._publish()
