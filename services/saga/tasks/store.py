"""Tasks in Redis: the record, its state-change stream, queues, capacity slots.

Keys (prefix ``am:task:``; every key of one task is hash-tagged by its id, so
each per-task script touches one Redis Cluster slot):

* ``am:task:{<id>}`` HASH ``pb`` (the serialized agentmesh.task.v1.Task as of
  revision ``rev``), ``state``, ``rev``, ``cancel`` ("1" once CancelTask was
  called; kept outside ``pb`` so a cancel never races the driver's
  compare-and-set on ``rev``);
* ``am:task:ev:{<id>}`` STREAM, one entry per revision with id ``<rev>-0`` and
  field ``pb`` (the task right after that change): WaitTask's log;
* ``am:task:lease:{<id>}`` / ``am:task:fence:{<id>}``: the task's fenced lease
  (agentmesh.runtime.lease);
* ``am:task:q:<class>`` ZSET of PENDING task ids per priority class (0 =
  CRITICAL .. 3 = LOW), scored by the time they become due (Unix ms; FIFO);
* ``am:task:active`` ZSET of non-terminal task ids by creation (recovery scan);
* ``am:task:index`` ZSET of every kept task id by creation (ListTasks);
* ``am:task:wake`` STREAM (trimmed to about 64 entries): an entry wakes the
  scheduling pass of every replica, which block on it with XREAD instead of
  polling the queues;
* ``am:task:slots:{<agent_id>}`` ZSET `<task id>@<coordinator id>` -> slot expiry (Redis clock, ms):
  the capacity slots held on one agent by every replica. A slot is renewed
  with the task's lease and expires with it, so a dead replica's slots free
  themselves; a driver releases its slot when the attempt ends.

A terminal task's record, stream and fence counter expire after the
retention period; stale index entries are dropped when ListTasks meets them.
The queue, active and index entries are written after the record (they live
in other slots): a ScheduleTask that fails between the two leaves a record
that the client's retry with the same idempotency key completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from agentmesh.runtime.dataset_epoch import refuse_if_reset
from agentmesh.runtime.deps import is_cluster
from agentmesh.runtime.lease import (
    CLOCK_PRELUDE,
    FENCE_CHECK,
    LEASE_LUA,
    FencedLeases,
    Lease,
    LeaseKeys,
    LeaseLost,
    call_many,
    is_fenced,
)
from agentmesh.runtime.priority import CLASSES, priority_class
from agentmesh.runtime.redis_pipeline import exchange
from agentmesh.task.v1 import task_pb2

log = logging.getLogger("agentmesh.saga.tasks")

PREFIX = "am:task:"
ACTIVE = PREFIX + "active"
INDEX = PREFIX + "index"
#: STREAM whose entries wake the scheduling pass of every replica (one key,
#: so one Redis Cluster slot): written when a task is queued that the
#: replica which queued it cannot start itself (it serves the API only or
#: drives its maximum of tasks).
WAKE = PREFIX + "wake"
#: Entries kept on WAKE (approximate trim); readers only need the newest.
WAKE_MAXLEN = 64

T = task_pb2
TERMINAL = frozenset(
    {T.TASK_STATE_COMPLETED, T.TASK_STATE_FAILED, T.TASK_STATE_TIMEOUT, T.TASK_STATE_CANCELLED}
)

#: Allowed transitions (the table in task.proto); commit() refuses others.
TRANSITIONS: dict[int, frozenset[int]] = {
    T.TASK_STATE_PENDING: frozenset(
        {T.TASK_STATE_SCHEDULED, T.TASK_STATE_CANCELLED, T.TASK_STATE_TIMEOUT}
    ),
    T.TASK_STATE_SCHEDULED: frozenset(
        {T.TASK_STATE_RUNNING, T.TASK_STATE_CANCELLED, T.TASK_STATE_RETRYING}
    ),
    T.TASK_STATE_RUNNING: frozenset(
        {
            T.TASK_STATE_COMPLETED,
            T.TASK_STATE_FAILED,
            T.TASK_STATE_TIMEOUT,
            T.TASK_STATE_RETRYING,
            T.TASK_STATE_CANCELLED,
        }
    ),
    T.TASK_STATE_RETRYING: frozenset(
        {T.TASK_STATE_SCHEDULED, T.TASK_STATE_CANCELLED, T.TASK_STATE_TIMEOUT}
    ),
}

# CLASSES and priority_class are the mesh-wide scheme (agentmesh.runtime.priority).


#: How long the active-set and queue entries of tasks that ended wait to be
#: removed together in one pipeline, s. They only steer the recovery scan
#: and the scheduling pass, which both skip terminal tasks (and the recovery
#: pass removes any entry left behind by a replica that died meanwhile).
CLEANUP_S = 0.05

#: Label value of each class for metrics.
CLASS_NAMES = ("critical", "high", "normal", "low")


def task_key(task_id: str) -> str:
    """HASH of one task."""
    return f"{PREFIX}{{{task_id}}}"


def events_key(task_id: str) -> str:
    """STREAM of one task's state changes."""
    return f"{PREFIX}ev:{{{task_id}}}"


def lease_keys(task_id: str) -> LeaseKeys:
    """The task's lease record and fence counter."""
    return LeaseKeys.for_name(PREFIX, task_id)


def queue_key(cls: int) -> str:
    """ZSET of the PENDING tasks of one priority class, by due time (ms)."""
    return f"{PREFIX}q:{cls}"


def slots_key(agent_id: str) -> str:
    """ZSET of the capacity slots held on one agent: task id -> expiry ms."""
    return f"{PREFIX}slots:{{{agent_id}}}"


def new_task_id(idempotency_key: str) -> str:
    """A new task id; derived from the idempotency key when there is one, so a
    second ScheduleTask with that key finds the first task in one slot."""
    if idempotency_key:
        return "t-" + hashlib.blake2b(idempotency_key.encode(), digest_size=10).hexdigest()
    return "t-" + os.urandom(10).hex()


_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = redis.call('HMGET', KEYS[1], 'pb', 'cancel')
  return {0, cur[1], cur[2] or ''}
end
redis.call('HSET', KEYS[1], 'pb', ARGV[1], 'state', ARGV[2], 'rev', 1)
redis.call('XADD', KEYS[2], '1-0', 'pb', ARGV[1])
return {1, '', ''}
"""

# KEYS lease record, task, events, fence; ARGV owner, token, expected rev,
# state, pb, expire_ms (0 = keep), terminal ("1": release the lease too).
_COMMIT = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + FENCE_CHECK
    + """
local rev = tonumber(redis.call('HGET', KEYS[2], 'rev') or '0')
if rev ~= tonumber(ARGV[3]) then return redis.error_reply('STALE ' .. rev) end
rev = rev + 1
redis.call('HSET', KEYS[2], 'pb', ARGV[5], 'state', ARGV[4], 'rev', rev)
redis.call('XADD', KEYS[3], rev .. '-0', 'pb', ARGV[5])
local px = tonumber(ARGV[6])
if px > 0 then
  redis.call('PEXPIRE', KEYS[2], px)
  redis.call('PEXPIRE', KEYS[3], px)
  redis.call('PEXPIRE', KEYS[4], px)
end
if ARGV[7] == '1' then redis.call('DEL', KEYS[1]) end  -- terminal: the lease ends with it
return {rev, redis.call('HGET', KEYS[2], 'cancel') or ''}
"""
)

# KEYS lease record, fence, task; ARGV owner, ttl_ms.
_CLAIM = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1} end
local g = lease_acquire(KEYS[1], KEYS[2], '', ARGV[1], ARGV[2], false)
if tonumber(g[1]) == 0 then return {0} end
local cur = redis.call('HMGET', KEYS[3], 'pb', 'rev', 'cancel')
return {g[1], cur[1], cur[2], cur[3] or ''}
"""
)

# KEYS lease record, fence, task, events; ARGV owner, ttl_ms, expected rev,
# pb as SCHEDULED (rev + 1), pb as RUNNING (rev + 2). Takes the lease and, when
# the task is still at the expected revision with no cancel requested, writes
# both changes (the placement and the attempt's start) in the same script.
# Returns {-1} no task, {0} leased by another, {token, '', rev + 2, '', 1}
# started, {token, pb, rev, cancel, 0} claimed but left as it was.
_CLAIM_START = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1} end
local g = lease_acquire(KEYS[1], KEYS[2], '', ARGV[1], ARGV[2], false)
if tonumber(g[1]) == 0 then return {0} end
local cur = redis.call('HMGET', KEYS[3], 'pb', 'rev', 'cancel')
local rev = tonumber(cur[2] or '0')
if rev ~= tonumber(ARGV[3]) or cur[3] == '1' then
  return {g[1], cur[1], cur[2], cur[3] or '', 0}
end
redis.call('XADD', KEYS[4], (rev + 1) .. '-0', 'pb', ARGV[4])
redis.call('XADD', KEYS[4], (rev + 2) .. '-0', 'pb', ARGV[5])
redis.call('HSET', KEYS[3], 'pb', ARGV[5], 'state', 'TASK_STATE_RUNNING', 'rev', rev + 2)
return {g[1], '', rev + 2, '', 1}
"""
)

# KEYS lease record, task, events, fence; ARGV expected rev, pb, expire_ms.
# Returns -1 no task, 0 leased (the driver cancels it), -2 stale, else new rev.
_CANCEL = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('HSET', KEYS[2], 'cancel', '1')
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local rev = tonumber(redis.call('HGET', KEYS[2], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then return -2 end
if ARGV[2] == '' then return rev end
rev = rev + 1
redis.call('HSET', KEYS[2], 'pb', ARGV[2], 'state', 'TASK_STATE_CANCELLED', 'rev', rev)
redis.call('XADD', KEYS[3], rev .. '-0', 'pb', ARGV[2])
local px = tonumber(ARGV[3])
if px > 0 then
  redis.call('PEXPIRE', KEYS[2], px)
  redis.call('PEXPIRE', KEYS[3], px)
  redis.call('PEXPIRE', KEYS[4], px)
end
return rev
"""

# KEYS slots; ARGV task id, capacity (0 = unlimited), ttl_ms. 1 granted, 0 full.
_SLOT_ACQUIRE = (
    CLOCK_PRELUDE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
  return 1
end
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS slots; ARGV task id, ttl_ms: extend a held slot (XX: never re-creates one).
_SLOT_RENEW = (
    CLOCK_PRELUDE
    + "return redis.call('ZADD', KEYS[1], 'XX', 'CH', now_ms + tonumber(ARGV[2]), ARGV[1])\n"
)

# KEYS slots: live slots held on the agent.
_SLOT_COUNT = (
    CLOCK_PRELUDE
    + "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)\n"
    + "return redis.call('ZCARD', KEYS[1])\n"
)


#: One command of a pipeline: (script, keys, args) or (command name, *args).
Call = tuple[Any, ...]


async def send(redis: Any, calls: Sequence[Call]) -> list[Any]:
    """Run `calls` in one round trip (a non-transactional pipeline, in order).

    A script call goes in as EVALSHA; when Redis lost its script cache, only
    the calls that got NOSCRIPT are sent again (after loading the script), so
    a script that already ran is never run twice.

    On one Redis (direct or Sentinel) the replies are Redis's own, without
    redis-py's response callbacks (e.g. SET is b"OK", a WITHSCORES range a
    flat [member, score, ...] list); a Redis Cluster client's pipeline
    applies them. Callers read both shapes.

    Returns:
        One reply per call; a call's error reply (a script's error, a wrong
        type) is returned in its place as the ResponseError, not raised.

    Raises:
        redis.exceptions.RedisError: the connection failed, or Redis did not
            answer within the client's socket timeout (TimeoutError).
    """
    out: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    lean = not is_cluster(redis)
    for _attempt in range(2):
        cmds: list[tuple[Any, ...]] = []
        for i in todo:
            c = calls[i]
            if isinstance(c[0], AsyncScript):
                # as a command: redis-py's cluster pipeline blocks its evalsha
                # method, and routes EVALSHA given as a command by its keys
                cmds.append(("EVALSHA", c[0].sha, len(c[1]), *c[1], *c[2]))
            else:
                cmds.append(c)
        if lean:
            res = await exchange(redis, cmds)
        else:
            async with redis.pipeline(transaction=False) as p:
                for cmd in cmds:
                    p.execute_command(*cmd)
                res = await p.execute(raise_on_error=False)
        again = []
        for i, r in zip(todo, res, strict=True):
            out[i] = r
            if isinstance(r, NoScriptError):
                again.append(i)
        if not again:
            break
        for sha_script in {calls[i][0] for i in again}:
            await redis.script_load(sha_script.script)
        todo = again
    return out


#: Most commands in one coalesced pipeline; a bigger turn goes out as several.
TURN_MAX_CALLS = 256

_Turn = tuple[Sequence[Call], "asyncio.Future[list[Any]]"]


class TurnBatch:
    """The `send` calls that callers make in one event-loop turn go out as
    one pipeline: the group commit of runtime/script_batch.ScriptBatch, for
    a task's writes, which are a script plus plain commands.

    Why: the tasks one coordinator drives end in bursts (agent replies arrive
    together), and ScheduleTask/WaitTask calls arrive together; one pipeline
    is one socket write, one read loop and one pooled connection where N are
    N of each, and redis-py's per-pipeline overhead is a large share of the
    coordinator's CPU (perf/saga/TASKS_RESULTS.md).

    What stays the same: each caller's calls are sent in its order, each
    script is its own atomic run with its own reply (errors in place, as
    `send` returns them), and a caller awaits its own replies. A pipeline is
    not a transaction: calls of different callers are independent. A
    cancelled caller cancels only its own wait (its calls may still run, as
    for a cancelled single call).

    Args:
        redis: the client the pipelines go to.
    """

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._queue: list[_Turn] = []
        self._scheduled = False
        self._senders: set[asyncio.Task[None]] = set()

    async def __call__(self, calls: Sequence[Call]) -> list[Any]:
        """`send(redis, calls)` in this turn's pipeline; one reply per call.

        Raises:
            redis.exceptions.RedisError: the connection failed (the calls
                may or may not have run).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((calls, fut))
        if not self._scheduled:
            # The sender's first step runs after every callback already due
            # in this turn, so the calls other tasks make in this turn join.
            self._scheduled = True
            self._start(self._flush())
        return await fut

    async def _flush(self) -> None:
        self._scheduled = False
        q, self._queue = self._queue, []
        chunks: list[list[_Turn]] = [[]]
        n = 0
        for item in q:
            if chunks[-1] and n + len(item[0]) > TURN_MAX_CALLS:
                chunks.append([])
                n = 0
            chunks[-1].append(item)
            n += len(item[0])
        for chunk in chunks[1:]:
            self._start(self._send(chunk))
        await self._send(chunks[0])

    def _start(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._senders.add(t)
        t.add_done_callback(self._senders.discard)

    async def _send(self, chunk: list[_Turn]) -> None:
        try:
            res = await send(self.redis, [c for calls, _ in chunk for c in calls])
        except BaseException as e:
            for _, fut in chunk:
                if not fut.done():
                    if isinstance(e, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        i = 0
        for calls, fut in chunk:
            if not fut.done():
                fut.set_result(res[i : i + len(calls)])
            i += len(calls)

    async def aclose(self) -> None:
        """Wait for the pipelines in flight."""
        if self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)


def _raise(r: Any) -> Any:
    if isinstance(r, Exception):
        raise r
    return r


def _zrems(items: Sequence[tuple[int, str]]) -> list[Call]:
    """One ZREM per priority queue for (class, task id) entries."""
    by_cls: dict[int, list[str]] = {}
    for cls, tid in items:
        by_cls.setdefault(cls, []).append(tid)
    return [("ZREM", queue_key(cls), *ids) for cls, ids in by_cls.items()]


class StaleRevision(Exception):
    """The task changed since it was read (compare-and-set on `rev` failed)."""


@dataclass(slots=True)
class Claimed:
    """A task whose lease this replica took.

    Attributes:
        lease: the held lease.
        task: the task as stored (cancel_requested merged in).
    """

    lease: Lease
    task: task_pb2.Task


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


def _b(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode()


def decode(pb: bytes | str, cancel: bytes | str | None) -> task_pb2.Task:
    """A stored task with its cancel flag merged in."""
    t = task_pb2.Task.FromString(_b(pb))
    if _s(cancel) == "1":
        t.cancel_requested = True
    return t


def _events(rows: Sequence[Any]) -> list[tuple[int, task_pb2.Task]]:
    """Stream entries `<rev>-0` -> (revision, task), in order."""
    return [
        (int(_s(eid).split("-")[0]), task_pb2.Task.FromString(fields[b"pb"]))
        for eid, fields in rows
    ]


class TaskStore:
    """Reads and writes tasks (see the module docstring for the keys).

    Args:
        redis: asyncio client (bytes replies).
        retention_ms: how long a terminal task is kept; 0 keeps it forever.
    """

    def __init__(self, redis: aioredis.Redis, *, retention_ms: int = 0) -> None:
        # typed loosely: redis-py's reply types do not follow decode_responses
        self.redis: Any = redis
        self.retention_ms = retention_ms
        self.leases = FencedLeases(redis)
        #: creates, reads and commits of one event-loop turn: one pipeline
        self.batch = TurnBatch(redis)
        self._create = redis.register_script(_CREATE)
        self._commit = redis.register_script(_COMMIT)
        self._claim = redis.register_script(_CLAIM)
        self._cancel = redis.register_script(_CANCEL)
        self._slot_acquire = redis.register_script(_SLOT_ACQUIRE)
        self._slot_renew = redis.register_script(_SLOT_RENEW)
        self._slot_count = redis.register_script(_SLOT_COUNT)
        self._claim_start = redis.register_script(_CLAIM_START)
        #: WaitTask streams of this process per task id: each gets every
        #: change this process commits, as (revision, pb), so a stream on the
        #: replica that drives the task needs no Redis read per change.
        self._watchers: dict[str, list[asyncio.Queue[tuple[int, bytes]]]] = {}
        #: (class, task id) of tasks that ended, for the deferred cleanup.
        self._ended: list[tuple[int, str]] = []
        self._cleanup: asyncio.Task[Any] | None = None

    # ---- create and read ------------------------------------------------------
    async def create(
        self, task: task_pb2.Task, *, due_ms: int, wake_from: str = ""
    ) -> tuple[task_pb2.Task, bool]:
        """Store a new PENDING task and queue it; a task with the same id (the
        same idempotency key) is returned instead, and queued again if it is
        still PENDING (completing a create that failed half-way).

        With `wake_from` (the caller's replica id) an entry on WAKE wakes
        every replica's scheduling pass, in the same round trip.

        Returns:
            (the stored task, created).

        Raises:
            redis.exceptions.RedisError: Redis failed.
            DatasetReset: Redis came back empty (fencing tokens may repeat).
        """
        refuse_if_reset()
        tid = task.task_id
        score = task.create_time.ToMilliseconds()
        qk = queue_key(priority_class(task.priority))
        # One round trip: the record, then (in order, so a reader of a queue
        # entry finds its record) the queue, active-set and index entries.
        # For a repeated key those entries are undone below unless the first
        # task is still PENDING (rare: a client's retry).
        res = await self.batch(
            [
                (
                    self._create,
                    [task_key(tid), events_key(tid)],
                    [task.SerializeToString(), T.TaskState.Name(task.state)],
                ),
                ("ZADD", qk, "NX", due_ms, tid),
                ("ZADD", ACTIVE, "NX", score, tid),
                ("ZADD", INDEX, "NX", score, tid),
                *(
                    [("XADD", WAKE, "MAXLEN", "~", WAKE_MAXLEN, "*", "from", wake_from)]
                    if wake_from
                    else []
                ),
            ],
        )
        for r in res:
            _raise(r)
        created, pb, cancel = res[0]
        if int(created):
            return task, True
        stored = decode(pb, cancel)
        own_qk = queue_key(priority_class(stored.priority))
        pending = stored.state == T.TASK_STATE_PENDING
        if not pending or own_qk != qk:
            async with self.redis.pipeline(transaction=False) as p:
                p.zrem(qk, tid)
                if pending:  # queued in its own class (completing a create that failed)
                    p.zadd(own_qk, {tid: due_ms}, nx=True)
                elif stored.state in TERMINAL:
                    p.zrem(ACTIVE, tid)
                await p.execute()
        return stored, False

    async def get(self, task_id: str) -> task_pb2.Task | None:
        """The task, or None when there is none (or it expired)."""
        (row,) = await self.batch([("HMGET", task_key(task_id), "pb", "cancel")])
        pb, cancel = _raise(row)
        return decode(pb, cancel) if pb is not None else None

    async def get_many(self, task_ids: Sequence[str]) -> list[task_pb2.Task | None]:
        """Tasks by id in one round trip; None for missing ones."""
        if not task_ids:
            return []
        # the pass's reads go at once (one caller, on the start's path)
        calls: list[Call] = [("HMGET", task_key(tid), "pb", "cancel") for tid in task_ids]
        rows = await send(self.redis, calls)
        return [
            decode(pb, c) if pb is not None else None for pb, c in (_raise(r) for r in rows)
        ]

    async def events_after(
        self, task_id: str, *, after_revision: int, block_ms: int = 0, count: int = 100
    ) -> list[tuple[int, task_pb2.Task]]:
        """State changes after `after_revision`, oldest first, as (revision, task).

        Blocks up to `block_ms` for the next one when there is none (0 = do not block).
        """
        key = events_key(task_id)
        if block_ms <= 0:
            rows = await self.redis.xrange(key, min=f"({after_revision}-0", count=count)
        else:
            got = await self.redis.xread({key: f"{after_revision}-0"}, block=block_ms, count=count)
            rows = got[0][1] if got else []
        return _events(rows)

    async def read_with_events(
        self, task_id: str, *, after_revision: int, count: int = 100
    ) -> tuple[task_pb2.Task | None, list[tuple[int, task_pb2.Task]]]:
        """The task and its state changes after `after_revision` (as
        events_after), in one round trip; (None, []) when there is no task."""
        async with self.redis.pipeline(transaction=False) as p:
            p.hmget(task_key(task_id), ["pb", "cancel"])
            p.xrange(events_key(task_id), min=f"({after_revision}-0", count=count)
            (pb, cancel), rows = await p.execute()
        if pb is None:
            return None, []
        return decode(pb, cancel), _events(rows)

    async def page(
        self, *, before: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Index entries newest first, strictly before `before` (score, id)."""
        if before is None:
            rows = await self.redis.zrevrangebyscore(
                INDEX, "+inf", "-inf", start=0, num=count, withscores=True
            )
        else:
            score, tid = before
            rows = await self.redis.zrevrangebyscore(
                INDEX, score, "-inf", start=0, num=count + 1000, withscores=True
            )
            # equal scores are ordered by member descending in a reverse range
            rows = [(m, s) for m, s in rows if s < score or _s(m) < tid][:count]
        return [(_s(m), float(s)) for m, s in rows]

    async def drop_from_index(self, task_ids: Sequence[str]) -> None:
        """Forget index entries whose task expired."""
        if task_ids:
            await self.redis.zrem(INDEX, *task_ids)

    # ---- leases and commits -----------------------------------------------------
    async def claim(self, task_id: str, *, owner: str, ttl_ms: int) -> Claimed | None:
        """Take the task's lease and read it (one round trip); None when the
        task is gone or another replica holds it.

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
        """
        refuse_if_reset()
        lk = lease_keys(task_id)
        res = await self._claim(keys=[lk.record, lk.fence, task_key(task_id)], args=[owner, ttl_ms])
        if int(res[0]) <= 0:
            return None
        return Claimed(Lease(lk, owner, int(res[0])), decode(res[1], res[3]))

    async def commit(
        self,
        lease: Lease,
        task: task_pb2.Task,
        state: task_pb2.TaskState.ValueType,
        *,
        slot_agent: str = "",
        slot_member: str = "",
    ) -> bool:
        """Move the task to `state` (fenced, compare-and-set on its revision).

        `task` is updated in place (state, revision) and written whole. A
        terminal state releases the lease in the same script, and the task's
        queue, active-set and capacity-slot entries (`slot_member` on
        `slot_agent`; the member defaults to the task id) right after.

        Returns:
            Whether a cancel was requested (for the driver).

        Raises:
            ValueError: a transition task.proto does not allow.
            LeaseLost: the lease is gone; nothing was written.
            StaleRevision: the task changed since it was read.
            redis.exceptions.RedisError: Redis failed.
        """
        if state not in TRANSITIONS.get(task.state, frozenset()):
            raise ValueError(
                f"task {task.task_id}: {T.TaskState.Name(task.state)} -> "
                f"{T.TaskState.Name(state)} is not allowed"
            )
        terminal = state in TERMINAL
        prev_state, prev_rev = task.state, task.revision
        task.state = state
        task.revision = prev_rev + 1
        cancel = task.cancel_requested
        task.cancel_requested = False  # lives in the hash field, not in pb
        tid = task.task_id
        lk = lease.keys
        pb = task.SerializeToString()
        script: Call = (
            self._commit,
            [lk.record, task_key(tid), events_key(tid), lk.fence],
            [
                lease.owner,
                lease.token,
                prev_rev,
                T.TaskState.Name(state),
                pb,
                self.retention_ms if terminal else 0,
                "1" if terminal else "0",
            ],
        )
        calls = [script]
        if terminal and slot_agent:
            # The attempt is over whether or not the commit is refused (a
            # refused one means another replica drives the task now, on a
            # slot of its own), so the slot goes in the same round trip.
            calls.append(("ZREM", slots_key(slot_agent), slot_member or tid))
        try:
            res = await self.batch(calls)
            _rev, flag = _raise(res[0])
        except ResponseError as e:
            task.state, task.revision = prev_state, prev_rev
            task.cancel_requested = cancel
            if is_fenced(e):
                raise LeaseLost(str(e)) from e
            if str(e).startswith("STALE"):
                raise StaleRevision(str(e)) from e
            raise
        except BaseException:
            task.state, task.revision = prev_state, prev_rev
            task.cancel_requested = cancel
            raise
        task.cancel_requested = _s(flag) == "1"
        self._notify(tid, task.revision, pb)
        if terminal:
            self._ended.append((priority_class(task.priority), tid))
            if self._cleanup is None:
                self._cleanup = asyncio.create_task(self._cleanup_later())
        return task.cancel_requested

    # ---- deferred cleanup -----------------------------------------------------
    async def _cleanup_later(self) -> None:
        await asyncio.sleep(CLEANUP_S)
        self._cleanup = None
        with contextlib.suppress(RedisError):  # the recovery pass removes them later
            await self.flush()

    async def flush(self) -> None:
        """Remove the active-set and queue entries of the tasks that ended
        since the last flush (one pipeline for all of them).

        Raises:
            redis.exceptions.RedisError: Redis failed (the entries are left to
                the recovery pass, which removes entries of terminal tasks).
        """
        ended, self._ended = self._ended, []
        if not ended:
            return
        calls: list[Call] = [("ZREM", ACTIVE, *[tid for _, tid in ended]), *_zrems(ended)]
        for r in await send(self.redis, calls):
            _raise(r)

    async def close(self) -> None:
        """Stop the deferred cleanup and run it now."""
        if self._cleanup is not None:
            self._cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup
            self._cleanup = None
        with contextlib.suppress(RedisError):
            await self.flush()
        await self.batch.aclose()

    # ---- local change notifications --------------------------------------------
    def _notify(self, task_id: str, revision: int, pb: bytes) -> None:
        for q in self._watchers.get(task_id, ()):
            q.put_nowait((revision, pb))

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[asyncio.Queue[tuple[int, bytes]]]:
        """A queue that receives (revision, pb) of every change of the task
        that this process writes, from now until the block exits. Changes
        written by other replicas do not arrive here (read the stream)."""
        q: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._watchers.setdefault(task_id, []).append(q)
        try:
            yield q
        finally:
            qs = self._watchers.get(task_id, [])
            if q in qs:
                qs.remove(q)
            if not qs:
                self._watchers.pop(task_id, None)

    async def cancel_unleased(self, task: task_pb2.Task, cancelled: task_pb2.Task | None) -> int:
        """Flag a cancel and, when nobody drives the task, write `cancelled`
        (the task in state CANCELLED, revision + 1) in the same script.

        Returns:
            -1 no task, 0 a driver holds the lease (it will cancel), -2 the
            task changed since it was read, else the new revision (or the
            current one when `cancelled` is None: flag only).
        """
        tid = task.task_id
        lk = lease_keys(tid)
        res = int(
            await self._cancel(
                keys=[lk.record, task_key(tid), events_key(tid), lk.fence],
                args=[
                    task.revision,
                    cancelled.SerializeToString() if cancelled is not None else "",
                    self.retention_ms,
                ],
            )
        )
        if res > 0 and cancelled is not None:
            self._notify(tid, res, cancelled.SerializeToString())
            async with self.redis.pipeline(transaction=False) as p:
                p.zrem(ACTIVE, tid)
                p.zrem(queue_key(priority_class(task.priority)), tid)
                await p.execute()
        return res

    async def release(self, lease: Lease) -> None:
        """Give the task's lease up."""
        await self.leases.release(lease.keys, owner=lease.owner, token=lease.token)

    # ---- queues ------------------------------------------------------------------
    async def due(self, *, now_ms: int, count: int) -> tuple[list[list[str]], int | None]:
        """Up to `count` due task ids per priority class, oldest first, and
        when the next queued task that is not yet due becomes due (Unix ms;
        None when there is none, or when every class that has one has more
        than `count` due tasks ahead of it: the pass reads that class again
        as a backlog before it could start the later task), in one round trip
        of one command per class (the head of each queue, one past `count`).
        """
        calls: list[Call] = [
            ("ZRANGEBYSCORE", queue_key(cls), "-inf", "+inf", "WITHSCORES", "LIMIT", 0, count + 1)
            for cls in range(CLASSES)
        ]
        due: list[list[str]] = []
        later: list[int] = []
        for r in await send(self.redis, calls):
            r = _raise(r)
            # [(member, score)] when redis-py pairs the reply, else [member, score, ...]
            paired = bool(r) and isinstance(r[0], (list, tuple))
            pairs = r if paired else zip(r[::2], r[1::2], strict=True)
            ids: list[str] = []
            for m, sc in pairs:
                score = int(float(sc))
                if score > now_ms:
                    later.append(score)
                    break
                if len(ids) < count:
                    ids.append(_s(m))
            due.append(ids)
        return due, min(later) if later else None

    async def signal_wake(self, origin: str) -> None:
        """Wake the scheduling passes of every replica (an entry on WAKE)."""
        await self.redis.xadd(WAKE, {"from": origin}, maxlen=WAKE_MAXLEN, approximate=True)

    async def wait_wake(self, last_id: str, *, block_ms: int) -> str | None:
        """Block up to `block_ms` for WAKE entries after `last_id` ("$": from now).

        Returns:
            The id of the newest entry read, or None when none came.
        """
        got = await self.redis.xread({WAKE: last_id}, block=block_ms, count=WAKE_MAXLEN)
        if not got or not got[0][1]:
            return None
        return _s(got[0][1][-1][0])

    async def dequeue(self, items: Sequence[tuple[int, str]]) -> None:
        """Remove (class, task id) entries from their queues (one ZREM per class)."""
        if items:
            for r in await send(self.redis, _zrems(items)):
                _raise(r)

    async def requeue(self, items: Sequence[tuple[int, str, int]]) -> None:
        """Put (class, task id, due ms) entries back unless already queued."""
        if not items:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for cls, tid, due in items:
                p.zadd(queue_key(cls), {tid: due}, nx=True)
            await p.execute()

    async def depths(self) -> list[int]:
        """Queued tasks per priority class."""
        async with self.redis.pipeline(transaction=False) as p:
            for cls in range(CLASSES):
                p.zcard(queue_key(cls))
            return [int(n) for n in await p.execute()]

    async def active(self, *, count: int) -> list[str]:
        """Up to `count` non-terminal task ids, oldest first."""
        return [_s(m) for m in await self.redis.zrange(ACTIVE, 0, count - 1)]

    async def lease_states(self, task_ids: Sequence[str]) -> list[tuple[bool, str]]:
        """(leased, state name or "" when the task is gone) per task id."""
        async with self.redis.pipeline(transaction=False) as p:
            for tid in task_ids:
                p.exists(lease_keys(tid).record)
                p.hget(task_key(tid), "state")
            raw = await p.execute()
        return [(bool(raw[2 * i]), _s(raw[2 * i + 1])) for i in range(len(task_ids))]

    async def forget_active(self, task_ids: Sequence[str]) -> None:
        """Drop ids of tasks that ended or expired from the active set."""
        if task_ids:
            await self.redis.zrem(ACTIVE, *task_ids)

    # ---- capacity slots ---------------------------------------------------------
    async def slot_counts(self, agent_ids: Sequence[str]) -> list[int]:
        """Live capacity slots held on each agent (one round trip)."""
        if not agent_ids:
            return []
        res = await send(self.redis, [(self._slot_count, [slots_key(a)], []) for a in agent_ids])
        return [int(_raise(n)) for n in res]

    async def acquire_slot(
        self, agent_id: str, task_id: str, *, capacity: int, ttl_ms: int
    ) -> bool:
        """Take (or keep) a capacity slot on the agent; False when it is full."""
        return bool(
            int(
                await self._slot_acquire(
                    keys=[slots_key(agent_id)], args=[task_id, capacity, ttl_ms]
                )
            )
        )

    async def acquire_slots(
        self, items: Sequence[tuple[str, str, int]], *, ttl_ms: int
    ) -> list[bool]:
        """acquire_slot for many (agent id, task id, capacity) in one pipeline,
        run by Redis in the given order (so earlier items win a contended slot)."""
        res = await send(
            self.redis,
            [(self._slot_acquire, [slots_key(a)], [t, cap, ttl_ms]) for a, t, cap in items],
        )
        return [bool(int(_raise(r))) for r in res]

    async def claim_start_many(
        self,
        items: Sequence[tuple[task_pb2.Task, task_pb2.Task, task_pb2.Task]],
        *,
        owner: str,
        ttl_ms: int,
        dequeue: Sequence[tuple[int, str]] = (),
    ) -> list[tuple[Claimed, bool] | None]:
        """Take the leases of PENDING tasks and start them, in one round trip.

        Per (as read, as SCHEDULED, as RUNNING) item: take the task's lease
        and, when the task is still at the revision it was read at and no
        cancel was requested, commit SCHEDULED and RUNNING (two revisions,
        two stream entries) in the same script; the queue entries in
        `dequeue` are removed in the same pipeline, after the scripts.

        Returns:
            Per item: None when the task is gone or another replica holds
            its lease; else (claimed, started): started with the RUNNING
            task as `claimed.task`, or not started with the task as stored
            (it changed, or a cancel was requested), the lease held either way.

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
            redis.exceptions.RedisError: Redis failed.
        """
        refuse_if_reset()
        calls: list[Call] = []
        pbs: list[tuple[bytes, bytes]] = []
        for read, scheduled, running in items:
            tid = read.task_id
            lk = lease_keys(tid)
            spb, rpb = scheduled.SerializeToString(), running.SerializeToString()
            pbs.append((spb, rpb))
            calls.append(
                (
                    self._claim_start,
                    [lk.record, lk.fence, task_key(tid), events_key(tid)],
                    [owner, ttl_ms, read.revision, spb, rpb],
                )
            )
        calls += _zrems(dequeue)
        res = await send(self.redis, calls)
        out: list[tuple[Claimed, bool] | None] = []
        for (_read, _scheduled, running), (spb, rpb), r in zip(
            items, pbs, res[: len(items)], strict=True
        ):
            r = _raise(r)
            tid = running.task_id
            if int(r[0]) <= 0:
                out.append(None)
                continue
            lease = Lease(lease_keys(tid), owner, int(r[0]))
            if int(r[4]):
                self._notify(tid, running.revision - 1, spb)
                self._notify(tid, running.revision, rpb)
                out.append((Claimed(lease, running), True))
            else:
                out.append((Claimed(lease, decode(r[1], r[3])), False))
        for r in res[len(items) :]:
            _raise(r)
        return out

    async def renew_slots(self, slots: Sequence[tuple[str, str]], *, ttl_ms: int) -> None:
        """Extend (agent id, task id) slots held by this replica."""
        await call_many(self._slot_renew, [([slots_key(a)], [t, ttl_ms]) for a, t in slots])

    async def release_slot(self, agent_id: str, task_id: str) -> None:
        """Free the task's slot on the agent."""
        (r,) = await self.batch([("ZREM", slots_key(agent_id), task_id)])
        _raise(r)

    async def cancel_flags(self, task_ids: Sequence[str]) -> list[bool]:
        """Whether a cancel was requested, per task id."""
        if not task_ids:
            return []
        rows = await send(self.redis, [("HGET", task_key(tid), "cancel") for tid in task_ids])
        return [_s(_raise(v)) == "1" for v in rows]


__all__ = [
    "ACTIVE",
    "CLASS_NAMES",
    "INDEX",
    "PREFIX",
    "TERMINAL",
    "TRANSITIONS",
    "WAKE",
    "Claimed",
    "LeaseLost",
    "StaleRevision",
    "TaskStore",
    "TurnBatch",
    "decode",
    "events_key",
    "lease_keys",
    "new_task_id",
    "queue_key",
    "slots_key",
    "task_key",
]
