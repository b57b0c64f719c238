"""Gateway state that must outlive a subscription, a rebalance or a gateway
process: delivery counts per record position (so `max_deliveries` is exact)
and chain heads (so VerifyChain can tell a truncated tail).

Delivery counts, per consumer group and partition. Delivery within a
partition is not in offset order (the backlog serves priority classes by
weighted round-robin with per-key order only, and a record can wait in the
backlog while later ones leave), so the marks are exact per offset:

- `contiguous`: every offset below it was delivered at least once, holds no
  record (compaction, control records), or lay below the position this
  group's owner of the partition started fetching from (committed, so never
  delivered to the group again). It advances while deliveries are in offset
  order.
- `counts`: offset -> attempts of every record delivered at or above
  `contiguous` (out of order: attempt 1 recorded explicitly until the gap
  below it fills) and of every record delivered more than once.

So a record's deliveries so far are `counts.get(offset)`, else 1 when
`offset < contiguous`, else 0. A subscription writes one mark per partition
of each MessageBatch before the batch leaves: its `contiguous`, the attempts
of the batch's out-of-order first deliveries and redeliveries, and the
out-of-order entries the gap's filling made redundant (dropped when their
count is still 1). In the usual in-order case that is one small write of
`contiguous` per partition per batch, not one per message. A new owner of the
partition (after a rebalance or a restart) reads the marks once when the
partition is assigned.

Chain heads, per partition and chain id: (sequence, offset, hash) of the last
link whose write was confirmed. They are written after the delivery reports
(coalesced, one write per partition per loop turn), so a head is never ahead
of the log; a head that the log no longer reaches is a truncated tail.

Two stores: `MemoryState` (this process; survives a rebalance between this
process's subscriptions, not a restart) and `RedisState` (`--state-store
redis`, every gateway process of a deployment shares it). Redis keys, with a
hash tag so each key has one Cluster slot:

    am:bus:dc:{<group>|<topic>|<partition>}   hash: "c" -> contiguous,
                                               "<offset>" -> attempts
    am:bus:head:{<topic>|<partition>}          hash: chain id -> "seq offset hash"

Each key expires `state_ttl_s` after its last write. Marks only move forward
(`contiguous` and each count never decrease; an entry is dropped only while
it is 1 and below `contiguous`, where it says nothing more). A field "m"
(highest offset delivered, the layout before exact per-offset marks) is read
as `contiguous` = m + 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from agentmesh.runtime.redis_errors import RedisDownLog

log = logging.getLogger("agentmesh.bus.state")

TopicPartition = tuple[str, int]

#: Values of --state-store.
STATE_STORES = ("memory", "redis")


@dataclass(slots=True)
class Prior:
    """Earlier deliveries of a group's partition (see the module docstring).

    Attributes:
        contiguous: every offset below it was delivered at least once; 0 when none.
        counts: offset -> attempts of the records delivered at or above
            `contiguous` and of those delivered more than once.
        delivered: the highest offset delivered so far (-1 when none): a
            record above it was never delivered (a cheap first test).
    """

    contiguous: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    delivered: int = -1

    @classmethod
    def of(cls, contiguous: int, counts: dict[int, int]) -> Prior:
        """A Prior with `delivered` computed from `contiguous` and `counts`."""
        top = max(counts) if counts else -1
        return cls(contiguous, counts, max(contiguous - 1, top))

    def attempts(self, offset: int) -> int:
        """Deliveries of the record at `offset` so far."""
        n = self.counts.get(offset)
        if n is not None:
            return n
        return 1 if offset < self.contiguous else 0


@dataclass(frozen=True, slots=True)
class Head:
    """The last confirmed link of a chain: its sequence, offset and hex hash."""

    sequence: int
    offset: int
    hash: str


#: Delivery marks of one batch: (topic, partition) -> (contiguous, {offset:
#: attempts} of out-of-order first deliveries and redeliveries, offsets whose
#: out-of-order entry `contiguous` now covers).
Marks = dict[TopicPartition, tuple[int, dict[int, int], list[int]]]


class MemoryState:
    """Delivery counts and chain heads in this process."""

    #: `load` and `record` complete at once (no await needed before sending).
    synchronous = True

    def __init__(self) -> None:
        self._prior: dict[tuple[str, TopicPartition], Prior] = {}
        self._heads: dict[TopicPartition, dict[str, Head]] = {}

    def load_now(self, group: str, tp: TopicPartition) -> Prior:
        """The group's marks of `tp` (a copy: the caller may keep it)."""
        p = self._prior.get((group, tp))
        return Prior(p.contiguous, dict(p.counts), p.delivered) if p else Prior()

    async def load(self, group: str, tp: TopicPartition) -> Prior:
        """As `load_now`."""
        return self.load_now(group, tp)

    def record(self, group: str, marks: Marks) -> Awaitable[None] | None:
        """Store one batch's marks; returns None (done)."""
        for tp, (contiguous, counts, covered) in marks.items():
            p = self._prior.get((group, tp))
            if p is None:
                p = self._prior[(group, tp)] = Prior()
            if contiguous > p.contiguous:
                p.contiguous = contiguous
                if contiguous - 1 > p.delivered:
                    p.delivered = contiguous - 1
            have = p.counts
            for off, n in counts.items():
                if n > have.get(off, 0):
                    have[off] = n
                    if off > p.delivered:
                        p.delivered = off
            for off in covered:
                if off < p.contiguous and have.get(off) == 1:
                    del have[off]
        return None

    def note_head(self, tp: TopicPartition, chain_id: str, head: Head) -> None:
        """Remember the last confirmed link of `chain_id` in `tp`."""
        self._heads.setdefault(tp, {})[chain_id] = head

    async def heads(self, tp: TopicPartition) -> dict[str, Head]:
        """Chain id -> head of every chain of `tp` this store knows."""
        return dict(self._heads.get(tp, {}))

    async def close(self) -> None:
        """Nothing to release."""
        return


# Marks only move forward: a write that arrives late (another connection of
# the pool) never lowers `contiguous` or an attempt count. An entry is
# dropped only while it is 1 and below `contiguous` (it then says nothing
# more). ARGV: ttl_ms, contiguous, n covered, covered offsets..., then
# offset, attempts pairs.
_RECORD = """
local c = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
if c > cur then redis.call('HSET', KEYS[1], 'c', ARGV[2]) else c = cur end
local nc = tonumber(ARGV[3])
for i = 4 + nc, #ARGV, 2 do
  local n = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > n then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
for i = 4, 3 + nc do
  if tonumber(ARGV[i]) < c and redis.call('HGET', KEYS[1], ARGV[i]) == '1' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# A head only moves forward in its chain.
_HEADS = """
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local seq = tonumber(string.match(cur or '0', '^%d+'))
  local new = tonumber(string.match(ARGV[i + 1], '^%d+'))
  if new > seq then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def _dc_key(group: str, tp: TopicPartition) -> str:
    return f"am:bus:dc:{{{group}|{tp[0]}|{tp[1]}}}"


def _head_key(tp: TopicPartition) -> str:
    return f"am:bus:head:{{{tp[0]}|{tp[1]}}}"


class RedisState:
    """Delivery counts and chain heads in Redis, shared by every gateway process.

    Args:
        client: an asyncio Redis client (runtime.deps.redis_from_config).
        ttl_s: expiry of each key after its last write, seconds.

    A failed Redis call is logged (RedisDownLog) and the gateway goes on:
    a batch is still delivered when its marks could not be written (its
    count may then be one short after a restart), and a head not written
    only weakens the truncation check. Availability of the data path wins.
    """

    synchronous = False

    def __init__(self, client: aioredis.Redis, *, ttl_s: float) -> None:
        self._r = client
        self._ttl_ms = str(int(ttl_s * 1000))
        self._record = client.register_script(_RECORD)
        self._heads_script = client.register_script(_HEADS)
        self._down = RedisDownLog(log, "bus state store unavailable")
        self._dirty: dict[TopicPartition, dict[str, Head]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def load(self, group: str, tp: TopicPartition) -> Prior:
        """The group's marks of `tp`; empty when Redis cannot be read."""
        try:
            raw: dict[Any, Any] = await self._r.hgetall(_dc_key(group, tp))
        except Exception as exc:
            self._down.warn(exc)
            return Prior()
        contiguous = 0
        counts: dict[int, int] = {}
        for k, v in raw.items():
            ks = k.decode() if isinstance(k, bytes) else str(k)
            if ks == "c":
                contiguous = max(contiguous, int(v))
            elif ks == "m":  # the layout before exact per-offset marks
                contiguous = max(contiguous, int(v) + 1)
            else:
                counts[int(ks)] = int(v)
        return Prior.of(contiguous, counts)

    def record(self, group: str, marks: Marks) -> Awaitable[None] | None:
        """Store one batch's marks; await the result before sending the batch."""
        return self._record_all(group, marks)

    async def _record_all(self, group: str, marks: Marks) -> None:
        calls = []
        for tp, (contiguous, counts, covered) in marks.items():
            args: list[Any] = [self._ttl_ms, contiguous, len(covered), *covered]
            for off, n in counts.items():
                args += [off, n]
            calls.append(self._record(keys=[_dc_key(group, tp)], args=args))
        try:
            await asyncio.gather(*calls)
        except Exception as exc:
            self._down.warn(exc)

    def note_head(self, tp: TopicPartition, chain_id: str, head: Head) -> None:
        """Queue the head; queued heads are written once per loop turn."""
        self._dirty.setdefault(tp, {})[chain_id] = head
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._write_heads())

    async def _write_heads(self) -> None:
        await asyncio.sleep(0)  # let the batch's other partitions queue theirs
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            calls = []
            for tp, heads in dirty.items():
                args: list[Any] = [self._ttl_ms]
                for cid, h in heads.items():
                    args += [cid, f"{h.sequence} {h.offset} {h.hash}"]
                calls.append(self._heads_script(keys=[_head_key(tp)], args=args))
            try:
                await asyncio.gather(*calls)
            except Exception as exc:
                self._down.warn(exc)

    async def heads(self, tp: TopicPartition) -> dict[str, Head]:
        """Chain id -> head of every chain of `tp` stored in Redis.

        Raises:
            redis.RedisError / OSError: Redis cannot be read (the caller maps it).
        """
        if self._flush is not None and not self._flush.done():
            await asyncio.shield(self._flush)  # this process's latest heads first
        raw: dict[Any, Any] = await self._r.hgetall(_head_key(tp))
        out: dict[str, Head] = {}
        for k, v in raw.items():
            seq, off, h = (v.decode() if isinstance(v, bytes) else str(v)).split(" ")
            out[k.decode() if isinstance(k, bytes) else str(k)] = Head(int(seq), int(off), h)
        return out

    async def close(self) -> None:
        """Write the queued heads (the client's owner closes the client)."""
        if self._flush is not None and not self._flush.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._flush), 2.0)
            except Exception as exc:
                self._down.warn(exc)


State = MemoryState | RedisState
