"""Redis persistence of sagas: event log, snapshots, leases (the runtime's fenced
lease, agentmesh.runtime.lease), indexes, definitions.

Keys (prefix `am:saga:{sagas}:`; `<x>` is a placeholder, and `{sagas}` is the
store's Redis Cluster hash tag: every key below is in one slot):
  saga:<id>          HASH  seq, last_hash, state, name, create_ms, idem,
                           fence (the lease's fencing-token counter),
                           cancel (0/1), cancel_reason, snapshot (JSON), snap_seq
  lease:<id>         HASH  the lease record (agentmesh.runtime.lease): owner,
                           token; PX TTL = lease TTL; deleted when the saga ends
  log:<id>           STREAM one entry per event, id "<sequence>-0", field pb
                           (serialized agentmesh.saga.v1.SagaEvent)
  active             ZSET  unfinished sagas, score = lease expiry (Unix ms; 0 = free)
  idx:all            ZSET  every saga id, score 0 (ids sort by creation time)
  idx:name:<name>    ZSET  ids by definition name
  idx:state:<STATE>  ZSET  ids by SagaState name
  idem:<key>         STRING "<saga_id>\\n<request fingerprint>"
  def:<name>         HASH  latest -> N, v<N> -> serialized SagaDefinition
  defs               ZSET  definition names, score 0 (lexicographic listing)
  expiry             ZSET  finished sagas with a retention, member
                           "<id>\\n<final state>\\n<name>", score = expiry (Unix ms)

Retention (Temporal's namespace retention period): the append that records a
saga's final state also PEXPIREs its `saga:<id>`, `log:<id>` and `idem:<key>`
(all in the same Lua script, so a saga is never final without its expiry) and
records the expiry time in `expiry`. The index ZSETs are shared, so nothing
can expire their members; instead every reader already skips ids whose hash is
gone (ListSagas, recovery), and `prune_expired` (run by every replica's
recovery loop) removes due members from the indexes. A sweep rather than
pruning inside ListSagas: the indexes would otherwise grow whenever nobody
lists, and a lister never sees an expired saga anyway because its hash is gone.
Running sagas have no TTL.

Every write that matters is one Lua script, so it is atomic: creating a saga
(log + hash + indexes + idempotency key), appending events (starts with the
runtime lease's fence check of owner and fencing token, so a replica that lost
its lease cannot write), taking, renewing and releasing a lease (the runtime's
fenced lease, wrapped with the `active` bookkeeping). The scripts also name keys they
build from the prefix (index keys). That is why the whole store is one Redis
Cluster slot (`{sagas}`): each script changes a saga's own keys and the shared
indexes (`active`, which recovery scans by lease expiry, `idx:*`, `expiry`,
`idem:`) together, so no crash leaves a saga that recovery or ListSagas cannot
see. Sharding by saga id would need the task store's design (indexes written
after the record and repaired by recovery). One slot is one master's worth of
throughput, far above what the coordinator drives (perf/cluster).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agentmesh.runtime.dataset_epoch import refuse_if_reset
from agentmesh.runtime.lease import (
    CLOCK_PRELUDE,
    FENCE_CHECK,
    LEASE_LUA,
    LeaseKeys,
    LeaseLost,
    call_fenced,
    call_many,
)
from agentmesh.runtime.lease import Lease as FencedLease
from agentmesh.runtime.script_batch import ScriptBatch
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.definition import flatten_steps
from agentmesh.server.saga.state import SagaRecord

#: Key prefix of the saga store; `{sagas}` is its Redis Cluster hash tag (one slot).
PREFIX = "am:saga:{sagas}:"
LEASE_PREFIX = PREFIX + "lease:"

_CREATE = """
if ARGV[7] == '1' then
  local cur = redis.call('GET', KEYS[1])
  if cur then return cur end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('saga exists') end
redis.call('HSET', KEYS[2], 'seq', 1, 'last_hash', ARGV[4], 'state', 'SAGA_STATE_PENDING',
  'name', ARGV[5], 'create_ms', ARGV[6], 'idem', ARGV[8], 'fence', 0,
  'cancel', 0, 'cancel_reason', '', 'snap_seq', 0)
redis.call('XADD', KEYS[3], '1-0', 'pb', ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('ZADD', KEYS[5], 0, ARGV[1])
redis.call('ZADD', KEYS[6], 0, ARGV[1])
redis.call('ZADD', KEYS[7], 0, ARGV[1])
if ARGV[7] == '1' then redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. ARGV[2]) end
return ''
"""

# Create, lease and initial state in one call (StartSaga on a replica with
# room to drive the saga). KEYS: idem, hash, stream, active, idx:all,
# idx:name:{name}, idx:state:{state}, lease. ARGV: saga_id, fingerprint,
# name, create_ms, use_idem ('1'/'0'), idem key, owner, ttl_ms, seq of the
# last event, its hash, the state after it, events (SAGA_STARTED first, then
# the events the new lease holder logs first: LEASE_ACQUIRED with fencing
# token 1 and the first STEP_STARTEDs). The saga's fence counter is created
# here at 0, so the lease granted below is token 1: the token the events were
# sealed with. Returns '' (created, leased), the idempotency record
# "<saga id>\n<fingerprint>" of an earlier saga, or an error reply.
_START = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + """
if ARGV[5] == '1' then
  local cur = redis.call('GET', KEYS[1])
  if cur then return cur end
end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[8]) == 1 then
  return redis.error_reply('saga exists')
end
redis.call('HSET', KEYS[2], 'seq', ARGV[9], 'last_hash', ARGV[10], 'state', ARGV[11],
  'name', ARGV[3], 'create_ms', ARGV[4], 'idem', ARGV[6], 'fence', 0,
  'cancel', 0, 'cancel_reason', '', 'snap_seq', 0)
local g = lease_acquire(KEYS[8], KEYS[2], 'fence', ARGV[7], ARGV[8], false)
if g[1] ~= 1 then return redis.error_reply('lease token ' .. g[1] .. ', not 1') end
for i = 12, #ARGV do
  redis.call('XADD', KEYS[3], (i - 11) .. '-0', 'pb', ARGV[i])
end
redis.call('ZADD', KEYS[4], g[2], ARGV[1])
redis.call('ZADD', KEYS[5], 0, ARGV[1])
redis.call('ZADD', KEYS[6], 0, ARGV[1])
redis.call('ZADD', KEYS[7], 0, ARGV[1])
if ARGV[5] == '1' then redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. ARGV[2]) end
return ''
"""
)

_FINAL = """
local final = {SAGA_STATE_COMPLETED=1, SAGA_STATE_COMPENSATED=1, SAGA_STATE_FAILED=1,
               SAGA_STATE_CANCELLED=1}
"""

# The lease scripts wrap the runtime's fenced lease (agentmesh.runtime.lease)
# with the saga's bookkeeping: only unfinished sagas can be leased, and the
# `active` ZSET follows the lease expiry so recovery finds free sagas.
_LEASE = CLOCK_PRELUDE + LEASE_LUA + _FINAL

# KEYS: lease, hash, active. ARGV: owner, ttl_ms, saga_id. Returns the fencing
# token (0 = held by someone, -1 = no such saga, -2 = finished).
_ACQUIRE = (
    _LEASE
    + """
local st = redis.call('HGET', KEYS[2], 'state')
if not st then redis.call('ZREM', KEYS[3], ARGV[3]) return -1 end
if final[st] then redis.call('ZREM', KEYS[3], ARGV[3]) return -2 end
local g = lease_acquire(KEYS[1], KEYS[2], 'fence', ARGV[1], ARGV[2], false)
if g[1] > 0 then redis.call('ZADD', KEYS[3], g[2], ARGV[3]) end
return g[1]
"""
)

# KEYS: lease, hash, active. ARGV: owner, fence, ttl_ms, saga_id. Returns {held, cancel}.
_RENEW = (
    _LEASE
    + """
local r = lease_renew(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if r[1] ~= 1 then return {0, 0} end
local h = redis.call('HMGET', KEYS[2], 'cancel', 'state')
if not final[h[2]] then redis.call('ZADD', KEYS[3], r[2], ARGV[4]) end
return {1, tonumber(h[1] or '0')}
"""
)

# KEYS: lease, hash, active. ARGV: owner, fence, saga_id. Returns 1 released, 0 not ours.
_RELEASE = (
    _LEASE
    + """
if lease_release(KEYS[1], ARGV[1], ARGV[2]) ~= 1 then return 0 end
local st = redis.call('HGET', KEYS[2], 'state')
if st and not final[st] then redis.call('ZADD', KEYS[3], 0, ARGV[3]) end
return 1
"""
)

# KEYS: lease, hash, stream, active, expiry. ARGV: owner, fence (the fence
# check's convention), expected_seq, last_hash, new_state, final, snapshot,
# snap_seq, saga_id, state index prefix, retention ms (0 = keep), key prefix,
# events... Returns 1, -2 (sequence conflict) or the FENCED error reply.
_APPEND = (
    _LEASE
    + FENCE_CHECK
    + """
local h = redis.call('HMGET', KEYS[2], 'seq', 'state')
if h[1] ~= ARGV[3] then return -2 end
local seq = tonumber(ARGV[3])
for i = 13, #ARGV do
  seq = seq + 1
  redis.call('XADD', KEYS[3], seq .. '-0', 'pb', ARGV[i])
end
redis.call('HSET', KEYS[2], 'seq', seq, 'last_hash', ARGV[4], 'state', ARGV[5])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'snapshot', ARGV[7], 'snap_seq', ARGV[8]) end
if h[2] ~= ARGV[5] then
  redis.call('ZREM', ARGV[10] .. h[2], ARGV[9])
  redis.call('ZADD', ARGV[10] .. ARGV[5], 0, ARGV[9])
end
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[9])
  -- a final saga is nobody's to drive
  redis.call('DEL', KEYS[1])
  local keep = tonumber(ARGV[11])
  if keep > 0 then
    local m = redis.call('HMGET', KEYS[2], 'name', 'idem')
    redis.call('PEXPIRE', KEYS[2], keep)
    redis.call('PEXPIRE', KEYS[3], keep)
    if m[2] and m[2] ~= '' then
      -- the idempotency key only if it still names this saga
      local ik = ARGV[12] .. 'idem:' .. m[2]
      local cur = redis.call('GET', ik)
      if cur and string.sub(cur, 1, #ARGV[9] + 1) == ARGV[9] .. '\\n' then
        redis.call('PEXPIRE', ik, keep)
      end
    end
    redis.call('ZADD', KEYS[5], now_ms + keep, ARGV[9] .. '\\n' .. ARGV[5] .. '\\n' .. (m[1] or ''))
  end
end
return 1
"""
)

# KEYS: expiry. ARGV: key prefix, max members. Removes due sagas from the
# indexes (their own keys have expired by Redis TTL). Returns how many.
_PRUNE = (
    CLOCK_PRELUDE
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local id, st, name = string.match(m, '^([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  if id then
    redis.call('ZREM', ARGV[1] .. 'idx:all', id)
    redis.call('ZREM', ARGV[1] .. 'idx:name:' .. name, id)
    redis.call('ZREM', ARGV[1] .. 'idx:state:' .. st, id)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #due
"""
)

# KEYS: hash. ARGV: reason. Returns "" (recorded), "missing" or the final state name.
_CANCEL = (
    _FINAL
    + """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
if final[st] then return st end
if redis.call('HGET', KEYS[1], 'cancel') ~= '1' then
  redis.call('HSET', KEYS[1], 'cancel', 1, 'cancel_reason', ARGV[1])
end
return ''
"""
)


class Fenced(Exception):
    """The lease was lost (another replica took it) or the log moved on."""


class Lease(FencedLease):
    """A held lease on one saga: the runtime's fenced lease on ``lease_keys(saga_id)``.

    Attributes:
        keys: ``lease_keys(saga_id)``.
        owner: this replica's coordinator id.
        token: fencing token; only ever increases per saga.
    """

    @property
    def saga_id(self) -> str:
        """The saga."""
        return self.keys.record[len(LEASE_PREFIX) :]

    @property
    def fence(self) -> int:
        """The fencing token (the saga log's name for it)."""
        return self.token


def lease_keys(saga_id: str) -> LeaseKeys:
    """The saga's lease: its record, and the ``fence`` field of the saga's hash as
    the counter (kept from before the runtime lease, so tokens of running sagas
    keep increasing across an upgrade)."""
    return LeaseKeys(f"{LEASE_PREFIX}{saga_id}", SagaStore.hkey(saga_id), "fence")


def state_name(state: int) -> str:
    """SagaState enum value → name."""
    return saga_pb2.SagaState.Name(state)  # type: ignore[arg-type]


class SagaStore:
    """All Redis access of the saga coordinator.

    Args:
        redis: client (decode_responses=False: log entries are bytes).
        retention_ms: how long a finished saga's keys are kept, ms; 0 = forever.
        group_commit: send the starts and appends of the sagas that come due in
            one event-loop turn as one pipeline, each still its own fenced
            script with its own reply (agentmesh.runtime.script_batch; issue 25).
    """

    def __init__(
        self, redis: aioredis.Redis, *, retention_ms: int = 0, group_commit: bool = True
    ) -> None:
        self.r: Any = redis  # redis-py's stubs type replies as bytes | str | ...
        self.retention_ms = retention_ms
        self._prune = redis.register_script(_PRUNE)
        self._create = redis.register_script(_CREATE)
        self._start: Any = redis.register_script(_START)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._append: Any = redis.register_script(_APPEND)
        if group_commit:
            self._start = ScriptBatch(self._start)
            self._append = ScriptBatch(self._append)
        self._cancel = redis.register_script(_CANCEL)

    # ---- keys -----------------------------------------------------------------
    @staticmethod
    def hkey(saga_id: str) -> str:
        """Key of the saga's hash."""
        return f"{PREFIX}saga:{saga_id}"

    @staticmethod
    def lkey(saga_id: str) -> str:
        """Key of the saga's event stream."""
        return f"{PREFIX}log:{saga_id}"

    # ---- sagas ----------------------------------------------------------------
    async def create(
        self,
        ev: saga_pb2.SagaEvent,
        *,
        name: str,
        idempotency_key: str,
        fingerprint: str,
    ) -> tuple[str, str] | None:
        """Store a new saga with its SAGA_STARTED event.

        Returns:
            None when created; (existing saga id, its fingerprint) when the
            idempotency key was already used.

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
        """
        refuse_if_reset()
        out = await self._create(
            keys=[
                f"{PREFIX}idem:{idempotency_key}",
                self.hkey(ev.saga_id),
                self.lkey(ev.saga_id),
                f"{PREFIX}active",
                f"{PREFIX}idx:all",
                f"{PREFIX}idx:name:{name}",
                f"{PREFIX}idx:state:SAGA_STATE_PENDING",
            ],
            args=[
                ev.saga_id,
                fingerprint,
                ev.SerializeToString(),
                ev.provenance.hash,
                name,
                ev.create_time.ToMilliseconds(),
                "1" if idempotency_key else "0",
                idempotency_key,
            ],
        )
        if not out:
            return None
        saga_id, _, fp = _s(out).partition("\n")
        return saga_id, fp

    async def start(
        self,
        events: Sequence[saga_pb2.SagaEvent],
        *,
        name: str,
        idempotency_key: str,
        fingerprint: str,
        owner: str,
        ttl_ms: int,
        state: int,
    ) -> Lease | tuple[str, str]:
        """Store a new saga and take its lease, in one atomic call.

        Args:
            events: sealed events 1..N: SAGA_STARTED, then what the lease
                holder logs first (LEASE_ACQUIRED with fencing token 1 and
                the first plan's events), sealed for `owner` and token 1.
            name: the definition name (index).
            idempotency_key: "" for none.
            fingerprint: the request's fingerprint, kept with the key.
            owner: this replica's coordinator id.
            ttl_ms: lease length, ms.
            state: the saga's state after the last event (SagaState).

        Returns:
            The lease (fencing token 1) when created; (existing saga id, its
            fingerprint) when the idempotency key was already used (nothing
            written).

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
            ResponseError: the saga id or its lease already exists.
        """
        refuse_if_reset()
        first, last = events[0], events[-1]
        st = state_name(state)
        keys = lease_keys(first.saga_id)
        out = await self._start(
            keys=[
                f"{PREFIX}idem:{idempotency_key}",
                self.hkey(first.saga_id),
                self.lkey(first.saga_id),
                f"{PREFIX}active",
                f"{PREFIX}idx:all",
                f"{PREFIX}idx:name:{name}",
                f"{PREFIX}idx:state:{st}",
                keys.record,
            ],
            args=[
                first.saga_id,
                fingerprint,
                name,
                first.create_time.ToMilliseconds(),
                "1" if idempotency_key else "0",
                idempotency_key,
                owner,
                ttl_ms,
                last.sequence,
                last.provenance.hash,
                st,
                *(e.SerializeToString() for e in events),
            ],
        )
        if out:
            saga_id, _, fp = _s(out).partition("\n")
            return saga_id, fp
        return Lease(keys, owner, 1)

    async def acquire(self, saga_id: str, *, owner: str, ttl_ms: int) -> Lease | None:
        """Take the saga's lease if it is free or expired; None otherwise (also when
        the saga is missing or finished).

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
        """
        refuse_if_reset()
        keys = lease_keys(saga_id)
        token = int(
            await self._acquire(
                keys=[keys.record, keys.fence, f"{PREFIX}active"], args=[owner, ttl_ms, saga_id]
            )
        )
        return Lease(keys, owner, token) if token > 0 else None

    async def renew(self, leases: Sequence[Lease], *, ttl_ms: int) -> list[tuple[bool, bool]]:
        """Renew many leases in one round trip; returns (still held, cancel requested) each."""
        res = await call_many(
            self._renew,
            [
                (
                    [lease.keys.record, lease.keys.fence, f"{PREFIX}active"],
                    [lease.owner, lease.token, ttl_ms, lease.saga_id],
                )
                for lease in leases
            ],
        )
        return [(bool(int(a)), bool(int(b))) for a, b in res]

    async def release(self, lease: Lease) -> None:
        """Give the lease back so another replica can take the saga at once."""
        await self._release(
            keys=[lease.keys.record, lease.keys.fence, f"{PREFIX}active"],
            args=[lease.owner, lease.token, lease.saga_id],
        )

    async def append(
        self,
        lease: Lease,
        events: Sequence[saga_pb2.SagaEvent],
        *,
        expected_seq: int,
        last_hash: str,
        state: int,
        final: bool,
        snapshot: str = "",
        snap_seq: int = 0,
    ) -> None:
        """Append sealed events under the lease (fenced: see agentmesh.runtime.lease).

        Raises:
            Fenced: the lease was taken over or the log has moved on.
        """
        try:
            res = int(
                await call_fenced(
                    self._append,
                    keys=[
                        lease.keys.record,
                        self.hkey(lease.saga_id),
                        self.lkey(lease.saga_id),
                        f"{PREFIX}active",
                        f"{PREFIX}expiry",
                    ],
                    args=[
                        lease.owner,
                        lease.token,
                        expected_seq,
                        last_hash,
                        state_name(state),
                        "1" if final else "0",
                        snapshot,
                        snap_seq,
                        lease.saga_id,
                        f"{PREFIX}idx:state:",
                        self.retention_ms,
                        PREFIX,
                        *(e.SerializeToString() for e in events),
                    ],
                )
            )
        except LeaseLost as e:
            raise Fenced(f"saga {lease.saga_id}: lease lost") from e
        if res != 1:
            raise Fenced(f"saga {lease.saga_id}: log moved on")

    async def request_cancel(self, saga_id: str, *, reason: str) -> str:
        """Record a cancel request; returns "", "missing" or the final state's name."""
        return _s(await self._cancel(keys=[self.hkey(saga_id)], args=[reason]))

    async def cancel_flag(self, saga_id: str) -> tuple[bool, str]:
        """(cancel requested, reason)."""
        c, reason = await self.r.hmget(self.hkey(saga_id), ["cancel", "cancel_reason"])
        return _s(c or b"0") == "1", _s(reason or b"")

    async def events(
        self, saga_id: str, *, after_seq: int = 0, count: int | None = None
    ) -> list[saga_pb2.SagaEvent]:
        """Events with sequence > after_seq, in order."""
        rows = await self.r.xrange(self.lkey(saga_id), min=f"({after_seq}-0", max="+", count=count)
        return [_event(fields) for _, fields in rows]

    async def block_events(
        self, saga_id: str, *, after_seq: int, block_ms: int
    ) -> list[saga_pb2.SagaEvent]:
        """Events after `after_seq`, waiting up to `block_ms` for the first one."""
        res = await self.r.xread({self.lkey(saga_id): f"{after_seq}-0"}, block=block_ms, count=500)
        out: list[saga_pb2.SagaEvent] = []
        for _, rows in res or []:
            out.extend(_event(fields) for _, fields in rows)
        return out

    async def load(self, saga_id: str) -> SagaRecord | None:
        """The saga's state: latest snapshot folded with the events after it."""
        snap = await self.r.hget(self.hkey(saga_id), "snapshot")
        rec: SagaRecord | None = None
        if snap:
            rec = SagaRecord.from_json(snap)
        after = rec.seq if rec else 0
        evs = await self.events(saga_id, after_seq=after)
        if rec is None:
            if not evs:
                return None
            first = evs.pop(0)
            rec = SagaRecord.start(first, [s.name for s in flatten_steps(first.definition)])
        for ev in evs:
            rec.fold(ev)
        return rec

    async def exists(self, saga_id: str) -> bool:
        """True when the saga exists."""
        return bool(await self.r.exists(self.hkey(saga_id)))

    async def expired(self, *, limit: int) -> list[str]:
        """Unfinished sagas whose lease is free or expired (by this host's clock)."""
        now_ms = int(time.time() * 1000)
        ids = await self.r.zrangebyscore(f"{PREFIX}active", "-inf", now_ms, start=0, num=limit)
        return [_s(i) for i in ids]

    async def prune_expired(self, *, limit: int = 500) -> int:
        """Remove up to `limit` sagas whose retention has passed from the indexes.

        Returns:
            How many were removed (== limit: there may be more).
        """
        return int(await self._prune(keys=[f"{PREFIX}expiry"], args=[PREFIX, limit]))

    async def page_ids(self, index: str, *, before: str, count: int) -> list[str]:
        """Ids of an index, newest first, strictly older than `before` ("" = newest)."""
        hi = f"({before}" if before else "+"
        ids = await self.r.zrevrangebylex(f"{PREFIX}{index}", hi, "-", start=0, num=count)
        return [_s(i) for i in ids]

    async def states_of(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """(state name, definition name) per id."""
        async with self.r.pipeline(transaction=False) as p:
            for i in ids:
                p.hmget(self.hkey(i), ["state", "name"])
            res = await p.execute()
        return [(_s(a or b""), _s(b or b"")) for a, b in res]

    # ---- definitions ----------------------------------------------------------
    async def register_definition(
        self, defn: saga_pb2.SagaDefinition
    ) -> tuple[saga_pb2.SagaDefinition, bool]:
        """Store a new version unless identical to the latest; (stored, created)."""
        key = f"{PREFIX}def:{defn.name}"
        body = saga_pb2.SagaDefinition()
        body.CopyFrom(defn)
        body.ClearField("version")
        body.ClearField("create_time")
        for _ in range(20):  # optimistic: WATCH the hash, retry on a concurrent writer
            async with self.r.pipeline(transaction=True) as p:
                await p.watch(key)
                latest = int(await p.hget(key, "latest") or 0)
                if latest:
                    cur = saga_pb2.SagaDefinition()
                    cur.ParseFromString(await p.hget(key, f"v{latest}"))
                    cmp = saga_pb2.SagaDefinition()
                    cmp.CopyFrom(cur)
                    cmp.ClearField("version")
                    cmp.ClearField("create_time")
                    if cmp.SerializeToString(deterministic=True) == body.SerializeToString(
                        deterministic=True
                    ):
                        await p.unwatch()
                        return cur, False
                body.version = latest + 1
                body.create_time.GetCurrentTime()
                p.multi()
                p.hset(
                    key,
                    mapping={"latest": body.version, f"v{body.version}": body.SerializeToString()},
                )
                p.zadd(f"{PREFIX}defs", {defn.name: 0})
                try:
                    await p.execute()
                except aioredis.WatchError:
                    continue
                return body, True
        raise Fenced("definition is being registered concurrently; retry")

    async def get_definition(
        self, name: str, *, version: int = 0
    ) -> saga_pb2.SagaDefinition | None:
        """A stored version (0 = latest), or None."""
        key = f"{PREFIX}def:{name}"
        if not version:
            version = int(await self.r.hget(key, "latest") or 0)
            if not version:
                return None
        raw = await self.r.hget(key, f"v{version}")
        if raw is None:
            return None
        d = saga_pb2.SagaDefinition()
        d.ParseFromString(raw)
        return d

    async def list_definitions(self, *, after: str, count: int) -> list[saga_pb2.SagaDefinition]:
        """Latest versions ordered by name, names strictly after `after`."""
        lo = f"({after}" if after else "-"
        names = await self.r.zrangebylex(f"{PREFIX}defs", lo, "+", start=0, num=count)
        out = []
        for n in names:
            d = await self.get_definition(_s(n))
            if d is not None:
                out.append(d)
        return out


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _event(fields: dict[bytes, bytes]) -> saga_pb2.SagaEvent:
    ev = saga_pb2.SagaEvent()
    ev.ParseFromString(fields[b"pb"])
    return ev


__all__ = ["PREFIX", "Fenced", "Lease", "ResponseError", "SagaStore"]
