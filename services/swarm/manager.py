"""Which swarms this replica drives: leases, takeover and driver tasks.

Each active swarm (``am:swarm:{swarms}:idx:active``) is driven by at most one replica,
the holder of its lease. A replica takes a lease when DeploySwarm creates the
swarm, and its scan loop tries every ``scan_interval_s`` to take the lease of
any active swarm nobody holds (its driver died or was SIGKILLed and the lease
expired after ``lease_ttl_ms``); it then resumes from the swarm's last
snapshot. Each acquisition gets a larger fencing token; every write a driver
makes is fenced on it (see store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentmesh.runtime.dataset_epoch import detected_reset
from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.server.swarm import metrics
from agentmesh.server.swarm.agents import SwarmAgents
from agentmesh.server.swarm.driver import DriverContext, finish, now_ts
from agentmesh.server.swarm.store import TERMINAL_STATES, Lease, LeaseLost, SwarmStore
from agentmesh.swarm.v1 import swarm_pb2

log = logging.getLogger("agentmesh.swarm.manager")

#: role label → count, summed into swarm_agents_total.
RoleCounts = dict[str, int]
#: Runs one swarm to its end; raises LeaseLost when the lease goes.
DriveFn = Callable[[DriverContext, swarm_pb2.Swarm], Awaitable[None]]


class SwarmManager:
    """Runs the swarms this replica holds leases on.

    Args:
        store: swarm persistence.
        redis: the daemon's Redis client.
        agents: calls to agents, on the one agent path.
        drive: runs one swarm (picks the optimisation or partition driver).
        lease_ttl_ms: lease time-to-live; a dead replica's swarms are taken
            over this long after its last renewal.
        snapshot_every: iterations between snapshots.
        scan_interval_s: how often to look for swarms without a driver.
        record_interval_s: see DriverContext.
        agent_refresh_s: see DriverContext.
    """

    def __init__(
        self,
        store: SwarmStore,
        redis: aioredis.Redis,
        agents: SwarmAgents,
        drive: DriveFn,
        *,
        lease_ttl_ms: int,
        snapshot_every: int,
        scan_interval_s: float,
        record_interval_s: float = 0.2,
        agent_refresh_s: float = 1.0,
    ) -> None:
        self.store = store
        self.redis = redis
        self.agents = agents
        self.owner = f"swarm-{uuid.uuid4().hex[:12]}"
        self._drive = drive
        self.lease_ttl_ms = lease_ttl_ms
        self.snapshot_every = snapshot_every
        self.scan_interval_s = scan_interval_s
        self.record_interval_s = record_interval_s
        self.agent_refresh_s = agent_refresh_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._roles: dict[str, RoleCounts] = {}
        self._scan_task: asyncio.Task[None] | None = None
        self._closing = False

    # ---- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        """Start the scan loop (takes over orphaned swarms)."""
        self._scan_task = asyncio.create_task(self._scan_loop(), name="swarm-scan")

    async def close(self) -> None:
        """Stop driving: cancel drivers, release their leases for a fast takeover."""
        self._closing = True
        # cancel_and_wait: one cancel can be lost inside a redis-py call on 3.11.
        if self._scan_task:
            await cancel_and_wait(self._scan_task)
        await asyncio.gather(
            *(cancel_and_wait(t) for t in list(self._tasks.values())), return_exceptions=True
        )

    def driving(self, swarm_id: str) -> bool:
        """True while this replica drives `swarm_id`."""
        return swarm_id in self._tasks

    # ---- taking swarms ------------------------------------------------------
    async def try_drive(self, swarm_id: str) -> bool:
        """Take the swarm's lease and start driving it; False if someone holds it."""
        if self._closing or swarm_id in self._tasks:
            return False
        lease = await self.store.acquire(swarm_id, owner=self.owner, ttl_ms=self.lease_ttl_ms)
        if lease is None:
            return False
        # A fresh context: the driver must not inherit the deadline, request
        # id or principal of the RPC (DeploySwarm, StopSwarm) that started it.
        self._tasks[swarm_id] = asyncio.create_task(
            self._run(lease), name=f"swarm-{swarm_id}", context=contextvars.Context()
        )
        return True

    async def _scan_loop(self) -> None:
        while True:
            try:
                if detected_reset() is not None:  # health says why; take no lease
                    await asyncio.sleep(self.scan_interval_s)
                    continue
                for sid in await self.store.active_ids():
                    if sid not in self._tasks:
                        await self.try_drive(sid)
                # the retention sweep rides on this loop (see store.py: why a sweep)
                await self.store.prune_expired()
            except RedisError as e:  # a background loop: log, scan again next interval
                log.warning("scan failed", extra={"error": str(e)})
            await asyncio.sleep(self.scan_interval_s)

    async def _renew_loop(self, lease: Lease, driver: asyncio.Task[None]) -> None:
        interval = self.lease_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                ok = await self.store.renew(lease, ttl_ms=self.lease_ttl_ms)
            except RedisError as e:
                # Keep trying until the TTL runs out; the fenced writes
                # protect against a takeover meanwhile.
                log.warning(
                    "lease renew failed", extra={"swarm_id": lease.swarm_id, "error": str(e)}
                )
                continue
            if not ok:
                log.warning("lease lost", extra={"swarm_id": lease.swarm_id})
                driver.cancel()
                return

    async def _run(self, lease: Lease) -> None:
        sid = lease.swarm_id
        me = asyncio.current_task()
        assert me is not None
        renew = asyncio.create_task(self._renew_loop(lease, me))
        release = True
        try:
            swarm = await self.store.get(sid)
            if swarm is None or swarm.state in TERMINAL_STATES:
                return
            resumed = swarm.state == swarm_pb2.SWARM_STATE_RUNNING
            if resumed:
                swarm.resumes += 1
                metrics.SWARM_TASKS.labels("resumed").inc()
                log.info("resuming swarm", extra={"swarm_id": sid, "fencing_token": lease.token})
            swarm.state = swarm_pb2.SWARM_STATE_RUNNING
            swarm.fencing_token = lease.token
            if not swarm.HasField("start_time"):
                swarm.start_time.CopyFrom(now_ts())
            if (await self.store.commit(lease, swarm=swarm)).stop_requested:
                # Stopped before anyone drove it: no work at all.
                finish(swarm, swarm_pb2.SWARM_STATE_STOPPED, swarm_pb2.TERMINATION_STOPPED)
                await self.store.commit(lease, swarm=swarm)
                return
            ctx = DriverContext(
                store=self.store,
                redis=self.redis,
                lease=lease,
                agents=self.agents,
                snapshot_every=self.snapshot_every,
                record_interval_s=self.record_interval_s,
                agent_refresh_s=self.agent_refresh_s,
                set_roles=lambda counts: self._set_roles(sid, counts),
            )
            try:
                await self._drive(ctx, swarm)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except RedisError:  # Redis, not the swarm, failed: keep it RUNNING for a takeover
                raise
            except Exception as e:  # a bug or an engine error: fail the swarm, keep the daemon
                log.exception("swarm driver failed", extra={"swarm_id": sid})
                finish(
                    swarm, swarm_pb2.SWARM_STATE_FAILED, swarm_pb2.TERMINATION_ERROR,
                    error=f"internal error: {type(e).__name__}: {e}",
                )
                await self.store.commit(lease, swarm=swarm)
        except LeaseLost:
            release = False
            log.warning("lease lost; stopped driving", extra={"swarm_id": sid})
        except asyncio.CancelledError:
            # Shutdown: release below so another replica takes over at once.
            pass
        except RedisError as e:  # stop driving; a scan here or elsewhere resumes it
            log.warning("redis failed while driving", extra={"swarm_id": sid, "error": str(e)})
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            self._tasks.pop(sid, None)
            self._set_roles(sid, None)
            if release:
                # Best effort: an unreleased lease expires after its TTL.
                with contextlib.suppress(RedisError):
                    await self.store.release(lease)

    # ---- metrics -------------------------------------------------------------
    def _set_roles(self, swarm_id: str, counts: RoleCounts | None) -> None:
        if counts is None:
            self._roles.pop(swarm_id, None)
        else:
            self._roles[swarm_id] = counts
        totals: RoleCounts = {}
        for c in self._roles.values():
            for role, n in c.items():
                totals[role] = totals.get(role, 0) + n
        for role in ("queen", "soldier", "nurse", "worker", "forager", "scout"):
            metrics.SWARM_AGENTS.labels(role).set(totals.get(role, 0))
