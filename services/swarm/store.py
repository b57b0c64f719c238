"""Redis persistence of swarms: records, indexes, leases with fencing tokens
(the runtime's fenced lease, agentmesh.runtime.lease), engine snapshots, the
per-iteration stats stream and partition results.

Key schema (names below follow the prefix ``am:swarm:{swarms}:``; ``<id>`` is the
swarm id; ``{swarms}`` is the store's Redis Cluster hash tag: the commit script
changes a swarm's own keys and the shared indexes (``idx:active``, which the
takeover scan reads, and ``idx:expiry``) together, so all of them share one
slot, on Redis Cluster as on a single Redis or Sentinel):

=================================  ======  ==============================================
key                                type    content
=================================  ======  ==============================================
``swarm:<id>``                     HASH    ``pb`` serialized ``Swarm``; ``state`` state
                                           name; ``stop`` "1" once StopSwarm asked;
                                           ``updated_ms``
``idx:created``                    ZSET    member id, score create time (ms)
``idx:active``                     SET     ids of PENDING and RUNNING swarms
``lease:<id>``                     HASH    lease record ``owner``, ``token``, with a PX TTL
``fence:<id>``                     STRING  last fencing token handed out (INCR)
``snap:<id>``                      STRING  engine snapshot (see ``snapshots.py``)
``stats:<id>``                     STREAM  field ``pb`` = serialized ``WatchSwarmResponse``
                                           (stats + state), capped at ~10,000 entries
``parts:<id>``                     HASH    partition index → JSON ``{"agent": id,
                                           "values": {field: number}}``; HSETNX, so a
                                           partition is counted once
``idx:expiry``                     ZSET    finished swarms with a retention, score =
                                           expiry (Unix ms, Redis clock)
=================================  ======  ==============================================

Retention (Temporal's namespace retention period): the commit that records a
terminal state also PEXPIREs the swarm's own keys (record, stats, snapshot,
fence, ledger) in the same Lua script and records the expiry in
``idx:expiry``. ``idx:created`` is shared, so its members cannot expire:
readers already skip ids whose record is gone (ListSwarms' ``get_many``), and
``prune_expired``, run by every replica's scan loop, drops due ids from it. A
sweep rather than pruning in ListSwarms because the index would otherwise
grow whenever nobody lists; removing twice is harmless, so it needs no leader.

The lease is the runtime's fenced lease (``agentmesh.runtime.lease``; its
record and fence counter are ``lease:<id>`` and ``fence:<id>``). Every write a
driver makes while it runs a swarm goes through a Lua script that starts with
the runtime's fence check (the lease record still holds the driver's owner and
fencing token), so a replica that lost its lease (paused, partitioned) cannot
overwrite the work of the replica that took over (fencing, Kleppmann 2016,
"How to do distributed locking").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from agentmesh.provenance import stamp_swarm
from agentmesh.runtime.dataset_epoch import refuse_if_reset
from agentmesh.runtime.lease import (
    CLOCK_PRELUDE,
    FENCE_CHECK,
    LEASE_LUA,
    FencedLeases,
    LeaseKeys,
    call_fenced,
)
from agentmesh.runtime.lease import Lease as FencedLease

# Re-exported: the driver and the manager catch the runtime's LeaseLost from here.
from agentmesh.runtime.lease import LeaseLost as LeaseLost
from agentmesh.swarm.v1 import swarm_pb2

#: Key prefix of the swarm store; `{swarms}` is its Redis Cluster hash tag (one
#: slot: the commit script changes a swarm's keys and the shared indexes together).
PREFIX = "am:swarm:{swarms}:"
LEASE_PREFIX = PREFIX + "lease:"
CREATED_INDEX = PREFIX + "idx:created"
ACTIVE_INDEX = PREFIX + "idx:active"
EXPIRY_INDEX = PREFIX + "idx:expiry"
#: Approximate number of iterations the stats stream keeps per swarm.
STATS_RETAINED = 10_000

TERMINAL_STATES = frozenset(
    {
        swarm_pb2.SWARM_STATE_COMPLETED,
        swarm_pb2.SWARM_STATE_FAILED,
        swarm_pb2.SWARM_STATE_STOPPED,
    }
)


def swarm_key(swarm_id: str) -> str:
    """HASH with the swarm record."""
    return f"{PREFIX}swarm:{swarm_id}"


def lease_key(swarm_id: str) -> str:
    """The lease record (runtime fenced lease) while a replica drives the swarm."""
    return f"{LEASE_PREFIX}{swarm_id}"


def fence_key(swarm_id: str) -> str:
    """Counter of fencing tokens."""
    return f"{PREFIX}fence:{swarm_id}"


def lease_keys(swarm_id: str) -> LeaseKeys:
    """The swarm's lease: record and fence counter (names predate the runtime
    lease and are kept, so tokens keep increasing across an upgrade)."""
    return LeaseKeys(lease_key(swarm_id), fence_key(swarm_id))


def snapshot_key(swarm_id: str) -> str:
    """STRING with the latest engine snapshot."""
    return f"{PREFIX}snap:{swarm_id}"


def stats_key(swarm_id: str) -> str:
    """STREAM of per-iteration WatchSwarmResponse messages."""
    return f"{PREFIX}stats:{swarm_id}"


def parts_key(swarm_id: str) -> str:
    """HASH of counted partition results."""
    return f"{PREFIX}parts:{swarm_id}"


# Per-iteration commit. KEYS: lease, swarm, stats, snap, active, fence, parts, expiry.
# ARGV: owner, token (the fence check's convention), stats pb, stats maxlen,
# swarm pb ('' = keep), state name, now ms, snapshot bytes ('' = keep), terminal
# ('1' = remove from active), swarm id, retention ms (0 = keep forever; applied
# on the terminal commit). Returns {1, stop}, or the FENCED error reply when
# the lease is lost (nothing written).
_COMMIT = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + FENCE_CHECK
    + """
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'pb', ARGV[3])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'pb', ARGV[5], 'state', ARGV[6], 'updated_ms', ARGV[7])
end
-- KEEPTTL: a write after the terminal commit must not make the snapshot immortal
if ARGV[8] ~= '' then redis.call('SET', KEYS[4], ARGV[8], 'KEEPTTL') end
if ARGV[9] == '1' then
  redis.call('SREM', KEYS[5], ARGV[10])
  local keep = tonumber(ARGV[11])
  if keep > 0 then
    for _, k in ipairs({KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7]}) do
      redis.call('PEXPIRE', k, keep)
    end
    redis.call('ZADD', KEYS[8], now_ms + keep, ARGV[10])
  end
end
local stop = redis.call('HGET', KEYS[2], 'stop')
if stop == '1' then return {1, 1} end
return {1, 0}
"""
)

# KEYS: expiry, created. ARGV: max ids. Drops swarms whose retention has
# passed (their own keys are gone by Redis TTL) from the created index.
_PRUNE = (
    CLOCK_PRELUDE
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
"""
)

# KEYS: swarm. Sets the stop flag only on an existing record, so a StopSwarm that
# races the record's expiry leaves no stray key behind. Returns 1 or 0.
_REQUEST_STOP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'stop', '1')
return 1
"""

# Count a batch of partitions. KEYS: lease, parts; ARGV: owner, token, then
# (index, json) pairs. Returns one 1 (counted now) or 0 (already counted) per
# pair, or the FENCED error reply when the lease is lost (nothing written).
_COUNT_PARTITIONS = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + FENCE_CHECK
    + """
local out = {}
for i = 3, #ARGV, 2 do
  out[#out + 1] = redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
return out
"""
)


class Lease(FencedLease):
    """A held lease on one swarm: the runtime's fenced lease on ``lease_keys(swarm_id)``.

    Attributes:
        keys: ``lease_keys(swarm_id)``.
        owner: the holding replica's id.
        token: fencing token; only ever increases per swarm.
    """

    @property
    def swarm_id(self) -> str:
        """The swarm."""
        return self.keys.record[len(LEASE_PREFIX) :]


@dataclass(frozen=True)
class CommitResult:
    """Outcome of a fenced commit.

    Attributes:
        stop_requested: StopSwarm has asked this swarm to stop.
    """

    stop_requested: bool


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


class SwarmStore:
    """Swarm persistence over one Redis client.

    Args:
        redis: asyncio client (bytes replies).
        retention_ms: how long a finished swarm's keys are kept, ms; 0 = forever.
    """

    def __init__(self, redis: aioredis.Redis, *, retention_ms: int = 0) -> None:
        # redis-py's stubs type replies as bytes | str; this client returns bytes.
        self.redis: Any = redis
        self.retention_ms = retention_ms
        self._prune = redis.register_script(_PRUNE)
        self._request_stop = redis.register_script(_REQUEST_STOP)
        self.leases = FencedLeases(redis)
        self._commit = redis.register_script(_COMMIT)
        self._count = redis.register_script(_COUNT_PARTITIONS)

    # ---- records ----------------------------------------------------------
    async def create(self, swarm: swarm_pb2.Swarm) -> bool:
        """Store a new swarm and index it; False when the id is taken.

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
        """
        refuse_if_reset()
        key = swarm_key(swarm.swarm_id)
        stamp_swarm(swarm)
        created = await self.redis.hsetnx(key, "pb", swarm.SerializeToString())
        if not created:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "state": swarm_pb2.SwarmState.Name(swarm.state),
                    "updated_ms": now_ms(),
                },
            )
            pipe.zadd(CREATED_INDEX, {swarm.swarm_id: swarm.create_time.ToMilliseconds()})
            pipe.sadd(ACTIVE_INDEX, swarm.swarm_id)
            await pipe.execute()
        return True

    async def get(self, swarm_id: str) -> swarm_pb2.Swarm | None:
        """The stored swarm, or None."""
        raw = await self.redis.hget(swarm_key(swarm_id), "pb")
        if raw is None:
            return None
        swarm = swarm_pb2.Swarm()
        swarm.ParseFromString(raw)
        return swarm

    async def get_many(self, swarm_ids: list[str]) -> list[swarm_pb2.Swarm]:
        """Stored swarms in the order of `swarm_ids`, skipping missing ones."""
        if not swarm_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in swarm_ids:
                pipe.hget(swarm_key(sid), "pb")
            raws = await pipe.execute()
        out = []
        for raw in raws:
            if raw is not None:
                s = swarm_pb2.Swarm()
                s.ParseFromString(raw)
                out.append(s)
        return out

    async def page_ids(
        self, *, before: tuple[int, str] | None, count: int
    ) -> list[tuple[str, int]]:
        """Ids newest first, strictly after the keyset position `before`.

        Args:
            before: (create ms, id) of the last item of the previous page.
            count: how many to return at most.

        Returns:
            (id, create ms) pairs ordered by (create ms desc, id desc).
        """
        out: list[tuple[str, int]] = []
        max_score: str = "+inf" if before is None else str(before[0])
        offset = 0
        batch = max(count * 2, 64)
        while len(out) < count:
            rows = await self.redis.zrevrangebyscore(
                CREATED_INDEX, max_score, "-inf", start=offset, num=batch, withscores=True
            )
            if not rows:
                break
            offset += len(rows)
            for member, score in rows:
                sid = member.decode()
                ms = int(score)
                if before is not None and (ms, sid) >= before:
                    continue
                out.append((sid, ms))
                if len(out) == count:
                    break
        return out

    async def request_stop(self, swarm_id: str) -> None:
        """Flag the swarm so its driver stops after the current iteration."""
        await self._request_stop(keys=[swarm_key(swarm_id)])

    async def prune_expired(self, *, limit: int = 500) -> int:
        """Drop up to `limit` swarms whose retention has passed from ``idx:created``.

        Returns:
            How many were dropped (== limit: there may be more).
        """
        return int(await self._prune(keys=[EXPIRY_INDEX, CREATED_INDEX], args=[limit]))

    async def active_ids(self) -> list[str]:
        """Ids of swarms that are PENDING or RUNNING."""
        return sorted(m.decode() for m in await self.redis.smembers(ACTIVE_INDEX))

    # ---- leases (the runtime's fenced lease) ---------------------------------
    async def acquire(self, swarm_id: str, *, owner: str, ttl_ms: int) -> Lease | None:
        """Take the swarm's lease if nobody holds it; None otherwise.

        Raises:
            DatasetReset: Redis came back empty (fencing tokens may repeat).
        """
        refuse_if_reset()
        grant = await self.leases.acquire(lease_keys(swarm_id), owner=owner, ttl_ms=ttl_ms)
        return Lease(grant.lease.keys, owner, grant.lease.token) if grant.lease else None

    async def renew(self, lease: Lease, *, ttl_ms: int) -> bool:
        """Extend the lease; False when it is lost."""
        return (await self.leases.renew(lease, ttl_ms=ttl_ms)).held

    async def release(self, lease: Lease) -> None:
        """Give the lease up if still held."""
        await self.leases.release(lease.keys, owner=lease.owner, token=lease.token)

    # ---- fenced writes ----------------------------------------------------
    async def commit(
        self,
        lease: Lease,
        *,
        stats: swarm_pb2.WatchSwarmResponse | None = None,
        swarm: swarm_pb2.Swarm | None = None,
        snapshot: bytes = b"",
    ) -> CommitResult:
        """Write stats, the swarm record and a snapshot, if the lease still holds.

        Raises:
            LeaseLost: when the lease is no longer this driver's; nothing was written.
        """
        sid = lease.swarm_id
        terminal = swarm is not None and swarm.state in TERMINAL_STATES
        if swarm is not None:
            # Every record write carries the hash of what it writes (swarm.proto).
            stamp_swarm(swarm)
        _ok, stop = await call_fenced(
            self._commit,
            keys=[
                lease_key(sid),
                swarm_key(sid),
                stats_key(sid),
                snapshot_key(sid),
                ACTIVE_INDEX,
                fence_key(sid),
                parts_key(sid),
                EXPIRY_INDEX,
            ],
            args=[
                lease.owner,
                lease.token,
                stats.SerializeToString() if stats is not None else b"",
                STATS_RETAINED,
                swarm.SerializeToString() if swarm is not None else b"",
                swarm_pb2.SwarmState.Name(swarm.state) if swarm is not None else "",
                now_ms(),
                snapshot,
                "1" if terminal else "0",
                sid,
                self.retention_ms,
            ],
        )
        return CommitResult(stop_requested=bool(stop))

    async def load_snapshot(self, swarm_id: str) -> bytes | None:
        """The latest engine snapshot, or None."""
        raw = await self.redis.get(snapshot_key(swarm_id))
        return bytes(raw) if raw is not None else None

    async def count_partitions(self, lease: Lease, results: list[tuple[int, bytes]]) -> list[bool]:
        """Count partition results once each, in one round trip.

        Args:
            lease: the driver's lease (the write is fenced on it).
            results: (partition index, JSON record) pairs.

        Returns:
            One flag per pair: True if this call counted it, False if the
            partition was already counted (by anyone, ever).

        Raises:
            LeaseLost: when the lease is no longer this driver's.
        """
        if not results:
            return []
        args: list[bytes | str | int] = [lease.owner, lease.token]
        for index, record in results:
            args += [index, record]
        res = await call_fenced(
            self._count, keys=[lease_key(lease.swarm_id), parts_key(lease.swarm_id)], args=args
        )
        return [int(x) == 1 for x in res]

    async def partition_results(self, swarm_id: str) -> dict[int, bytes]:
        """Every counted partition: index → stored JSON record."""
        raw = await self.redis.hgetall(parts_key(swarm_id))
        return {int(k): bytes(v) for k, v in raw.items()}

    # ---- stats stream -----------------------------------------------------
    async def read_stats(
        self, swarm_id: str, *, after_id: str, block_ms: int, count: int = 500
    ) -> list[tuple[str, swarm_pb2.WatchSwarmResponse]]:
        """Stats entries after stream id `after_id` ("0" from the start, "$" new only).

        Blocks up to `block_ms` when there are none (0 = do not block).
        """
        kwargs: dict[str, int] = {"count": count}
        if block_ms:
            kwargs["block"] = block_ms
        res = await self.redis.xread({stats_key(swarm_id): after_id}, **kwargs)
        out: list[tuple[str, swarm_pb2.WatchSwarmResponse]] = []
        for _stream, entries in res or []:
            for entry_id, fields in entries:
                msg = swarm_pb2.WatchSwarmResponse()
                msg.ParseFromString(fields[b"pb"])
                out.append((entry_id.decode(), msg))
        return out

    async def last_stats(self, swarm_id: str) -> tuple[str, swarm_pb2.WatchSwarmResponse | None]:
        """The newest stats entry as (stream id, message), or ("0-0", None)."""
        res = await self.redis.xrevrange(stats_key(swarm_id), count=1)
        if not res:
            return "0-0", None
        msg = swarm_pb2.WatchSwarmResponse()
        msg.ParseFromString(res[0][1][b"pb"])
        return res[0][0].decode(), msg
