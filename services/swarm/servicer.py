"""SwarmService over gRPC: validation, records and watching; drivers do the work."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import redis.asyncio as aioredis

from agentmesh.catalog import find_agents
from agentmesh.runtime.context import current_principal, remaining_s
from agentmesh.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from agentmesh.server.swarm import metrics
from agentmesh.server.swarm.driver import now_ts
from agentmesh.server.swarm.manager import SwarmManager
from agentmesh.server.swarm.optimization import check_engine_config
from agentmesh.server.swarm.store import TERMINAL_STATES, SwarmStore
from agentmesh.server.swarm.validation import validate_swarm_id, validate_task
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: How long StopSwarm waits for the driver to stop, seconds.
STOP_WAIT_S = 5.0
#: How long one Redis stream read blocks in WatchSwarm, ms.
WATCH_BLOCK_MS = 1000


def _new_swarm_id() -> str:
    # Time first so ids sort roughly by creation; random tail for uniqueness.
    return f"sw-{int(time.time() * 1000):x}-{uuid.uuid4().hex[:10]}"


def _encode_token(ms: int, swarm_id: str) -> str:
    return base64.urlsafe_b64encode(f"{ms}:{swarm_id}".encode()).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        ms, sid = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(ms), sid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            "bad page token", field_violations={"page_token": "not a token from ListSwarms"}
        ) from None


class SwarmServicer(swarm_pb2_grpc.SwarmServiceServicer):
    """The SwarmService implementation.

    Args:
        store: swarm persistence.
        redis: the daemon's Redis client (for agent discovery).
        manager: this replica's drivers.
        watch_store: persistence on a separate connection pool for WatchSwarm's
            blocking stream reads, so many watchers cannot starve the drivers
            of connections; default `store`.
    """

    def __init__(
        self,
        store: SwarmStore,
        redis: aioredis.Redis,
        manager: SwarmManager,
        *,
        watch_store: SwarmStore | None = None,
    ) -> None:
        self.store = store
        self.redis = redis
        self.manager = manager
        self.watch_store = watch_store or store

    async def _get(self, swarm_id: str) -> swarm_pb2.Swarm:
        if not swarm_id:
            raise InvalidArgument("swarm_id is required", field_violations={"swarm_id": "required"})
        swarm = await self.store.get(swarm_id)
        if swarm is None:
            raise NotFound(
                f"no swarm {swarm_id!r}", resource_type="agentmesh.swarm.v1.Swarm",
                resource_name=swarm_id,
            )
        return swarm

    async def _check_agents(self, task: swarm_pb2.SwarmTask) -> None:
        kind = task.WhichOneof("fitness")
        if kind == "partition_work":
            selector = task.partition_work.selector
            need = task.agents_required
        elif kind == "agent_evaluated":
            selector = task.agent_evaluated.selector
            need = 1
        else:
            return
        found = await find_agents(self.redis, selector)
        if len(found) < need:
            caps = ",".join(selector.capabilities)
            raise FailedPrecondition(
                f"found {len(found)} usable agents with capabilities [{caps}], "
                f"the task needs {need}",
                violations=[
                    (
                        "AGENTS_AVAILABLE",
                        f"capabilities:{caps}",
                        f"{len(found)} ACTIVE/DEGRADED agents match the selector; "
                        f"agents_required is {need}",
                    )
                ],
            )

    async def DeploySwarm(
        self, request: swarm_pb2.DeploySwarmRequest, context: grpc.aio.ServicerContext
    ) -> swarm_pb2.DeploySwarmResponse:
        """See the proto."""
        if request.swarm_id:
            validate_swarm_id(request.swarm_id)
        if not request.HasField("task"):
            raise InvalidArgument("task is required", field_violations={"task": "required"})
        task = validate_task(request.task)
        # The engine re-checks what only it knows (e.g. the O(n²) boids cap).
        check_engine_config(task)
        await self._check_agents(task)
        swarm = swarm_pb2.Swarm(
            swarm_id=request.swarm_id or _new_swarm_id(),
            task=task,
            state=swarm_pb2.SWARM_STATE_PENDING,
            seed=task.seed or int.from_bytes(os.urandom(8), "little") >> 1,
        )
        swarm.create_time.CopyFrom(now_ts())
        principal = current_principal()
        if principal is not None:
            swarm.owner = principal.identity
        if task.WhichOneof("fitness") == "partition_work":
            swarm.partitions.partitions_total = task.data_partitions
        if not await self.store.create(swarm):
            existing = await self.store.get(swarm.swarm_id)
            if existing is not None and existing.task == task:
                return swarm_pb2.DeploySwarmResponse(swarm=existing)
            raise AlreadyExists(f"swarm {swarm.swarm_id!r} exists with a different task")
        metrics.SWARM_TASKS.labels("deployed").inc()
        await self.manager.try_drive(swarm.swarm_id)
        return swarm_pb2.DeploySwarmResponse(swarm=await self.store.get(swarm.swarm_id) or swarm)

    async def GetSwarm(
        self, request: swarm_pb2.GetSwarmRequest, context: grpc.aio.ServicerContext
    ) -> swarm_pb2.GetSwarmResponse:
        """See the proto."""
        return swarm_pb2.GetSwarmResponse(swarm=await self._get(request.swarm_id))

    async def ListSwarms(
        self, request: swarm_pb2.ListSwarmsRequest, context: grpc.aio.ServicerContext
    ) -> swarm_pb2.ListSwarmsResponse:
        """See the proto."""
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                "bad page size", field_violations={"page_size": f"must be in [0, {MAX_PAGE_SIZE}]"}
            )
        size = request.page_size or DEFAULT_PAGE_SIZE
        states = set(request.states)
        cursor = _decode_token(request.page_token) if request.page_token else None
        out: list[swarm_pb2.Swarm] = []
        last: tuple[int, str] | None = cursor
        more = True
        while len(out) < size:
            ids = await self.store.page_ids(before=last, count=size - len(out) + 1)
            if not ids:
                more = False
                break
            take = ids[: size - len(out)]
            swarms = await self.store.get_many([sid for sid, _ in take])
            out.extend(s for s in swarms if not states or s.state in states)
            last = (take[-1][1], take[-1][0])
            if len(ids) <= len(take):
                more = False
                break
        resp = swarm_pb2.ListSwarmsResponse(swarms=out)
        if more and last is not None:
            resp.next_page_token = _encode_token(*last)
        return resp

    async def StopSwarm(
        self, request: swarm_pb2.StopSwarmRequest, context: grpc.aio.ServicerContext
    ) -> swarm_pb2.StopSwarmResponse:
        """See the proto."""
        swarm = await self._get(request.swarm_id)
        principal = current_principal()
        if (
            principal is not None
            and not principal.is_admin
            and swarm.owner
            and principal.identity != swarm.owner
        ):
            raise PermissionDenied(
                f"swarm {swarm.swarm_id!r} belongs to {swarm.owner!r}; only it or an admin "
                "may stop it"
            )
        if swarm.state == swarm_pb2.SWARM_STATE_STOPPED:
            return swarm_pb2.StopSwarmResponse(swarm=swarm)
        if swarm.state in TERMINAL_STATES:
            raise FailedPrecondition(
                f"swarm {swarm.swarm_id!r} already ended "
                f"{swarm_pb2.SwarmState.Name(swarm.state)}",
                violations=[("STATE", swarm.swarm_id, "only PENDING or RUNNING swarms stop")],
            )
        await self.store.request_stop(swarm.swarm_id)
        # Nobody may be driving it (e.g. its replica died): drive it here, the
        # driver sees the flag on its first commit.
        await self.manager.try_drive(swarm.swarm_id)
        wait_s = remaining_s(STOP_WAIT_S) or STOP_WAIT_S
        deadline = time.monotonic() + max(0.0, wait_s - 0.2)
        while time.monotonic() < deadline:
            swarm = await self._get(request.swarm_id)
            if swarm.state in TERMINAL_STATES:
                break
            await asyncio.sleep(0.05)
        return swarm_pb2.StopSwarmResponse(swarm=swarm)

    async def WatchSwarm(
        self, request: swarm_pb2.WatchSwarmRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[swarm_pb2.WatchSwarmResponse]:
        """See the proto."""
        async for msg in self._watch(request):
            yield msg

    async def _watch(
        self, request: swarm_pb2.WatchSwarmRequest
    ) -> AsyncIterator[swarm_pb2.WatchSwarmResponse]:
        swarm = await self._get(request.swarm_id)
        sid = swarm.swarm_id
        start = request.start_iteration
        store = self.watch_store
        if start == 0:
            # Only what happens from now on, after the latest known stats.
            cursor, latest = await store.last_stats(sid)
            if swarm.state in TERMINAL_STATES:
                yield swarm_pb2.WatchSwarmResponse(
                    stats=swarm.stats, state=swarm.state, swarm=swarm
                )
                return
            if latest is None:  # not started yet
                latest = swarm_pb2.WatchSwarmResponse(stats=swarm.stats, state=swarm.state)
            if latest.state in TERMINAL_STATES:
                latest.swarm.CopyFrom(await self._get(sid))
                yield latest
                return
            last_sent = latest.stats.iteration
            yield latest
        else:
            cursor = "0"
            last_sent = start - 1
        while True:
            entries = await store.read_stats(sid, after_id=cursor, block_ms=WATCH_BLOCK_MS)
            for entry_id, msg in entries:
                cursor = entry_id
                terminal = msg.state in TERMINAL_STATES
                # After a takeover the iterations since the last snapshot run
                # again; send each iteration number once.
                if msg.stats.iteration <= last_sent and not terminal:
                    continue
                if terminal:
                    msg.swarm.CopyFrom(await self._get(sid))
                    yield msg
                    return
                last_sent = msg.stats.iteration
                yield msg
            if not entries:
                swarm = await self._get(sid)
                if swarm.state in TERMINAL_STATES:
                    # Ended without a terminal stats entry (e.g. stopped while PENDING).
                    yield swarm_pb2.WatchSwarmResponse(
                        stats=swarm.stats, state=swarm.state, swarm=swarm
                    )
                    return
