"""TaskService: the gRPC API over the task store and the local scheduler.

Bad input is refused with INVALID_ARGUMENT and a field violation per problem
before anything is stored. Redis errors propagate to the runtime's handler
wrapper (UNAVAILABLE, reason REDIS_DOWN).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2

from agentmesh.runtime.errors import InvalidArgument, NotFound
from agentmesh.runtime.priority import priority_class
from agentmesh.server.saga import metrics
from agentmesh.server.saga.tasks.scheduler import TaskScheduler, due_ms, now_ms
from agentmesh.server.saga.tasks.store import CLASS_NAMES, TERMINAL, TaskStore, new_task_id
from agentmesh.server.saga.tracing import task_span
from agentmesh.task.v1 import task_pb2, task_pb2_grpc

T = task_pb2

MAX_TASK_TYPE = 200
MAX_IDEMPOTENCY_KEY = 200
#: Index entries ListTasks reads at most per call while filtering.
LIST_SCAN = 5000
#: Longest WaitTask waits for a local change of a task this replica drives
#: before it reads the stream (in case its lease moved to another replica), s.
LOCAL_WAIT_S = 1.0


def _duration_ms(d: duration_pb2.Duration) -> int:
    return d.seconds * 1000 + d.nanos // 1_000_000


def _negative(d: duration_pb2.Duration) -> bool:
    return d.seconds < 0 or d.nanos < 0


def _need_id(task_id: str) -> None:
    if not task_id:
        raise InvalidArgument("task_id is required", field_violations={"task_id": "required"})


def _token(score: float, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{task_id}".encode()).decode()


def _untoken(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        score, sep, tid = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        if not sep or not tid:
            raise ValueError(token)
        return float(score), tid
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(
            "bad page_token", field_violations={"page_token": "not a token this API returned"}
        ) from e


def _summary(t: task_pb2.Task) -> task_pb2.Task:
    s = task_pb2.Task()
    s.CopyFrom(t)
    s.ClearField("payload")
    s.ClearField("result")
    return s


class TaskServicer(task_pb2_grpc.TaskServiceServicer):
    """The TaskService implementation.

    Args:
        store: persistence.
        scheduler: the local scheduler (woken on ScheduleTask).
        watch_store: a store on a separate Redis pool for WaitTask's blocking reads.
        default_timeout_ms: run timeout of an attempt when the request sets none.
        default_schedule_to_start_ms: schedule-to-start timeout when the request sets none.
        max_payload_bytes: largest payload accepted.
    """

    def __init__(
        self,
        store: TaskStore,
        scheduler: TaskScheduler,
        watch_store: TaskStore,
        *,
        default_timeout_ms: int,
        default_schedule_to_start_ms: int,
        max_payload_bytes: int,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.watch_store = watch_store
        self.default_timeout_ms = default_timeout_ms
        self.default_schedule_to_start_ms = default_schedule_to_start_ms
        self.max_payload_bytes = max_payload_bytes

    def _validate(self, r: task_pb2.ScheduleTaskRequest) -> None:
        bad: list[tuple[str, str]] = []
        if not r.task_type.strip():
            bad.append(("task_type", "required"))
        elif len(r.task_type) > MAX_TASK_TYPE:
            bad.append(("task_type", f"at most {MAX_TASK_TYPE} characters"))
        target = r.WhichOneof("target")
        if target is None or (target == "agent_id" and not r.agent_id.strip()):
            bad.append(("target", "set agent_id or selector"))
        elif target == "selector" and not (
            r.selector.capabilities or r.selector.service_types or r.selector.tags
        ):
            bad.append(("selector", "needs at least one capability, service type or tag"))
        size = r.payload.ByteSize()
        if size > self.max_payload_bytes:
            bad.append(("payload", f"{size} bytes is over the maximum of {self.max_payload_bytes}"))
        for name in ("timeout", "schedule_to_start_timeout"):
            if r.HasField(name) and _negative(getattr(r, name)):
                bad.append((name, "must not be negative"))
        p = r.retry_policy
        if p.multiplier and p.multiplier < 1.0:
            bad.append(("retry_policy.multiplier", "must be >= 1"))
        if p.HasField("initial_backoff") and _negative(p.initial_backoff):
            bad.append(("retry_policy.initial_backoff", "must not be negative"))
        if p.HasField("max_backoff") and _negative(p.max_backoff):
            bad.append(("retry_policy.max_backoff", "must not be negative"))
        if len(r.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            bad.append(("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters"))
        if bad:
            raise InvalidArgument(
                "invalid ScheduleTask request: " + "; ".join(f"{f}: {d}" for f, d in bad),
                field_violations=bad,
            )

    async def ScheduleTask(
        self, request: task_pb2.ScheduleTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_pb2.ScheduleTaskResponse:
        """See task.proto."""
        self._validate(request)
        r = request
        task_id = new_task_id(r.idempotency_key)
        t = T.Task(
            task_id=task_id,
            task_type=r.task_type,
            traceparent=task_span(task_id, r.task_type),
            priority=r.priority,
            idempotency_key=r.idempotency_key,
            strategy=r.strategy,
            state=T.TASK_STATE_PENDING,
            revision=1,
        )
        if r.WhichOneof("target") == "agent_id":
            t.agent_id = r.agent_id
        else:
            t.selector.CopyFrom(r.selector)
        t.payload.CopyFrom(r.payload)
        t.retry_policy.CopyFrom(r.retry_policy)
        t.timeout.FromMilliseconds(
            _duration_ms(r.timeout) if _duration_ms(r.timeout) > 0 else self.default_timeout_ms
        )
        s2s = _duration_ms(r.schedule_to_start_timeout)
        t.schedule_to_start_timeout.FromMilliseconds(
            s2s if s2s > 0 else self.default_schedule_to_start_ms
        )
        if r.HasField("not_before"):
            t.not_before.CopyFrom(r.not_before)
        t.create_time.FromMilliseconds(now_ms())
        # A replica that cannot start the task itself wakes the others in the
        # same round trip; its own pass is woken in-process.
        sch = self.scheduler
        stored, created = await self.store.create(
            t,
            due_ms=due_ms(t),
            wake_from="" if sch.starts_locally else sch.opts.coordinator_id,
        )
        if created:
            metrics.TASK_SCHEDULED.labels(
                metrics.type_label(t.task_type), CLASS_NAMES[priority_class(t.priority)]
            ).inc()
            sch.wake(due_ms=due_ms(t), task=stored)
        return T.ScheduleTaskResponse(task=stored, already_scheduled=not created)

    async def _get(self, task_id: str) -> task_pb2.Task:
        _need_id(task_id)
        t = await self.store.get(task_id)
        if t is None:
            raise NotFound(
                f"task {task_id!r} not found", resource_type="task", resource_name=task_id
            )
        return t

    async def GetTask(
        self, request: task_pb2.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_pb2.GetTaskResponse:
        """See task.proto."""
        return T.GetTaskResponse(task=await self._get(request.task_id))

    async def ListTasks(
        self, request: task_pb2.ListTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_pb2.ListTasksResponse:
        """See task.proto."""
        bad: list[tuple[str, str]] = []
        for i, st in enumerate(request.states):
            if st == T.TASK_STATE_UNSPECIFIED or st not in T.TaskState.values():
                bad.append((f"states[{i}]", f"unknown state {st}"))
        if request.page_size < 0 or request.page_size > 500:
            bad.append(("page_size", "must be in [0, 500]"))
        if bad:
            raise InvalidArgument(
                "invalid ListTasks request: " + "; ".join(f"{f}: {d}" for f, d in bad),
                field_violations=bad,
            )
        before = _untoken(request.page_token)
        size = request.page_size or 50
        states = set(request.states)
        out: list[task_pb2.Task] = []
        scanned = 0
        last: tuple[float, str] | None = before
        gone: list[str] = []
        more = True
        while len(out) < size and scanned < LIST_SCAN:
            rows = await self.store.page(before=last, count=min(200, LIST_SCAN - scanned))
            if not rows:
                more = False
                break
            scanned += len(rows)
            tasks = await self.store.get_many([tid for tid, _ in rows])
            for (tid, score), t in zip(rows, tasks, strict=True):
                last = (score, tid)
                if t is None:
                    gone.append(tid)
                    continue
                if states and t.state not in states:
                    continue
                if request.task_type and t.task_type != request.task_type:
                    continue
                if request.agent_id and t.assigned_agent_id != request.agent_id:
                    continue
                out.append(_summary(t))
                if len(out) >= size:
                    break
        await self.store.drop_from_index(gone)
        resp = T.ListTasksResponse(tasks=out)
        if more and last is not None and last != before:
            resp.next_page_token = _token(*last)
        return resp

    async def CancelTask(
        self, request: task_pb2.CancelTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_pb2.CancelTaskResponse:
        """See task.proto."""
        for _ in range(10):
            t = await self._get(request.task_id)
            if t.state in TERMINAL:
                return T.CancelTaskResponse(task=t)
            c = T.Task()
            c.CopyFrom(t)
            c.cancel_requested = False
            c.state = T.TASK_STATE_CANCELLED
            c.revision = t.revision + 1
            c.end_time.FromMilliseconds(now_ms())
            res = await self.store.cancel_unleased(t, c)
            if res == -1:
                break
            if res == -2:
                continue  # changed under us; read again
            if res > 0:
                metrics.TASK_COMPLETED.labels(metrics.type_label(t.task_type), "cancelled").inc()
            t = await self._get(request.task_id)
            return T.CancelTaskResponse(task=t)
        return T.CancelTaskResponse(task=await self._get(request.task_id))

    async def WaitTask(
        self, request: task_pb2.WaitTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[task_pb2.WaitTaskResponse]:
        """See task.proto."""
        tid = request.task_id
        _need_id(tid)
        after = request.after_revision
        only_end = request.terminal_only
        # Registered before the first read, so no change this replica writes
        # after that read is missed.
        with self.store.watch(tid) as local:
            evs: list[tuple[int, task_pb2.Task]] = []
            if only_end:  # the record alone: the changes before it are not wanted
                current = await self.store.get(tid)
            else:
                current, evs = await self.store.read_with_events(tid, after_revision=after)
            if current is None:
                raise NotFound(f"task {tid!r} not found", resource_type="task", resource_name=tid)
            if current.state in TERMINAL and after >= current.revision:
                return
            if only_end:
                if current.state in TERMINAL:
                    yield T.WaitTaskResponse(task=current)
                    return
                after = max(after, current.revision)
            while True:
                for rev, t in evs:
                    if rev <= after:
                        continue
                    after = rev
                    if t.state in TERMINAL:
                        yield T.WaitTaskResponse(task=t)
                        return
                    if not only_end:
                        yield T.WaitTaskResponse(task=t)
                evs = await self._changes(tid, after, local)

    async def _changes(
        self, task_id: str, after: int, local: asyncio.Queue[tuple[int, bytes]]
    ) -> list[tuple[int, task_pb2.Task]]:
        """The task's next changes after revision `after` (possibly none).

        While this replica drives the task, its changes come from `local`
        (what this process commits; no Redis read), with the stream read only
        when a revision is missing (another writer came between) or after
        LOCAL_WAIT_S without a change (the lease may have moved). Otherwise
        a blocking XREAD waits for the next stream entry.

        Raises:
            NotFound: the task is gone (expired).
        """
        items: list[tuple[int, bytes]] = []
        if local.empty() and task_id in self.scheduler.driven:
            try:
                items.append(await asyncio.wait_for(local.get(), LOCAL_WAIT_S))
            except TimeoutError:
                return await self.store.events_after(task_id, after_revision=after)
        while not local.empty():
            items.append(local.get_nowait())
        fresh = [(r, pb) for r, pb in items if r > after]
        if fresh:
            if all(r == after + 1 + i for i, (r, _) in enumerate(fresh)):
                return [(r, task_pb2.Task.FromString(pb)) for r, pb in fresh]
            return await self.store.events_after(task_id, after_revision=after)
        if items:  # only changes already streamed: look again
            return []
        evs = await self.watch_store.events_after(task_id, after_revision=after, block_ms=1000)
        if not evs and await self.store.get(task_id) is None:
            raise NotFound(
                f"task {task_id!r} not found", resource_type="task", resource_name=task_id
            )
        return evs
