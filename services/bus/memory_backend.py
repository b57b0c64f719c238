"""The embedded in-memory backend: Kafka's semantics inside one gateway process.

Partitions are append-only lists with offsets; consumer groups keep committed
offsets and split partitions among their members (partition p of a topic goes
to member p mod n of the members subscribed to it, in join order). Records are
kept until `max_records_per_partition`, then the oldest are dropped (the low
watermark moves). Nothing survives a restart: this is for demos and tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agentmesh.server.bus.backend import (
    Assigned,
    Backend,
    Records,
    Revoked,
    Source,
    SourceEvent,
    Tail,
    TopicExists,
    TopicPartition,
    WriteResult,
)
from agentmesh.server.bus.topics import TopicSpec
from agentmesh.server.bus.wire import OutRecord, StoredRecord


@dataclass(slots=True)
class _Partition:
    records: list[StoredRecord] = field(default_factory=list)
    low: int = 0  # offset of records[0]

    @property
    def high(self) -> int:
        return self.low + len(self.records)


class MemoryBackend(Backend):
    """In-process record storage.

    Args:
        max_records_per_partition: retention per partition, records.
    """

    name = "memory"

    def __init__(self, *, max_records_per_partition: int = 200_000) -> None:
        self._topics: dict[str, list[_Partition]] = {}
        self._committed: dict[tuple[str, str, int], int] = {}
        self._members: dict[str, list[_MemorySource]] = {}
        self._tails: dict[str, list[_MemoryTail]] = {}
        self._retention = max_records_per_partition
        self._data = asyncio.Event()

    # ---- topics ---------------------------------------------------------
    async def list_topics(self) -> dict[str, int]:
        return {t: len(p) for t, p in self._topics.items()}

    def cached_partitions(self, topic: str) -> int | None:
        p = self._topics.get(topic)
        return len(p) if p is not None else None

    async def partitions(self, topic: str) -> int | None:
        return self.cached_partitions(topic)

    async def create_topic(
        self, topic: str, partitions: int, spec: TopicSpec | None = None
    ) -> TopicSpec:
        if topic in self._topics:
            raise TopicExists(topic)
        self._topics[topic] = [_Partition() for _ in range(partitions)]
        return spec or TopicSpec()

    # ---- writes ---------------------------------------------------------
    def write(self, records: Sequence[OutRecord]) -> asyncio.Future[list[WriteResult]]:
        results: list[WriteResult] = []
        touched: dict[str, list[StoredRecord]] = {}
        for topic, partition, key, value, headers, timestamp_ms in records:
            part = self._topics[topic][partition]
            stored = StoredRecord(topic, partition, part.high, key, value, headers, timestamp_ms)
            part.records.append(stored)
            if len(part.records) > self._retention:
                drop = len(part.records) - self._retention
                del part.records[:drop]
                part.low += drop
            results.append(stored.offset)
            touched.setdefault(topic, []).append(stored)
        for topic, recs in touched.items():
            for tail in self._tails.get(topic, ()):
                tail.deliver(recs)
        self._wake()
        fut: asyncio.Future[list[WriteResult]] = asyncio.get_running_loop().create_future()
        fut.set_result(results)
        return fut

    def _wake(self) -> None:
        self._data.set()
        self._data = asyncio.Event()

    async def wait_data(self, timeout_s: float) -> None:
        """Wait until something is written or membership changes, or the timeout."""
        ev = self._data
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except TimeoutError:
            pass

    # ---- reads ----------------------------------------------------------
    def _part(self, topic: str, partition: int) -> _Partition:
        return self._topics[topic][partition]

    def slice(self, topic: str, partition: int, start: int, limit: int) -> list[StoredRecord]:
        """Up to `limit` records from offset `start` (clamped to the low watermark)."""
        part = self._part(topic, partition)
        i = max(0, start - part.low)
        return part.records[i : i + limit]

    async def read(
        self, topic: str, partition: int, start: int, end: int, *, max_records: int
    ) -> list[StoredRecord]:
        part = self._part(topic, partition)
        end = min(end, part.high)
        return [r for r in self.slice(topic, partition, start, max_records) if r.offset < end]

    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        part = self._part(topic, partition)
        return part.low, part.high

    def raw_record(self, topic: str, partition: int, offset: int) -> StoredRecord:
        """The stored record itself (tests use it to tamper with the log)."""
        part = self._part(topic, partition)
        return part.records[offset - part.low]

    # ---- groups ---------------------------------------------------------
    async def committed(self, group: str, topic: str) -> dict[int, int]:
        return {
            p: off for (g, t, p), off in self._committed.items() if g == group and t == topic
        }

    async def commit_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        for p, off in offsets.items():
            self._committed[(group, topic, p)] = off

    def committed_offset(self, group: str, tp: TopicPartition) -> int | None:
        """The group's committed next-offset of a partition, or None."""
        return self._committed.get((group, tp[0], tp[1]))

    def set_committed(self, group: str, tp: TopicPartition, offset: int) -> None:
        """Store a commit (the caller checked ownership)."""
        self._committed[(group, tp[0], tp[1])] = offset

    def open_source(
        self, *, group: str, earliest: bool, events: Callable[[SourceEvent], None]
    ) -> Source:
        src = _MemorySource(self, group, earliest, events)
        self._members.setdefault(group, []).append(src)
        return src

    def leave(self, src: _MemorySource) -> None:
        """Remove a member and rebalance its group."""
        members = self._members.get(src.group, [])
        if src in members:
            members.remove(src)
        self.rebalance(src.group)

    def rebalance(self, group: str) -> None:
        """Recompute every member's partitions: p goes to member p mod n."""
        members = self._members.get(group, [])
        wanted: dict[int, set[TopicPartition]] = {id(m): set() for m in members}
        for topic, parts in self._topics.items():
            subs = [m for m in members if topic in m.topics]
            for p in range(len(parts)):
                if subs:
                    wanted[id(subs[p % len(subs)])].add((topic, p))
        # Revoke everywhere first so no partition has two owners at once.
        for m in members:
            m.apply_revoke(wanted[id(m)])
        for m in members:
            m.apply_assign(wanted[id(m)])
        self._wake()

    # ---- tails ----------------------------------------------------------
    def open_tail(self, topic: str, on_records: Callable[[list[StoredRecord]], None]) -> Tail:
        return _MemoryTail(self, topic, on_records)

    def add_tail(self, tail: _MemoryTail) -> None:
        """Register a started tail."""
        self._tails.setdefault(tail.topic, []).append(tail)

    def remove_tail(self, tail: _MemoryTail) -> None:
        """Unregister a tail."""
        tails = self._tails.get(tail.topic, [])
        if tail in tails:
            tails.remove(tail)


class _MemorySource(Source):
    _ids = itertools.count()

    def __init__(
        self,
        backend: MemoryBackend,
        group: str,
        earliest: bool,
        events: Callable[[SourceEvent], None],
    ) -> None:
        self.backend = backend
        self.group = group
        self.earliest = earliest
        self.events = events
        self.topics: set[str] = set()
        self.owned: dict[TopicPartition, int] = {}  # partition -> next fetch offset
        self.paused = False
        self.closed = False
        self._task = asyncio.create_task(self._fetch_loop(), name=f"mem-source-{next(self._ids)}")

    def set_topics(self, topics: Sequence[str]) -> None:
        if set(topics) != self.topics:
            self.topics = set(topics)
            self.backend.rebalance(self.group)

    def apply_revoke(self, wanted: set[TopicPartition]) -> None:
        gone = [tp for tp in self.owned if tp not in wanted]
        for tp in gone:
            del self.owned[tp]
        if gone:
            self.events(Revoked(gone))

    def apply_assign(self, wanted: set[TopicPartition]) -> None:
        new = sorted(tp for tp in wanted if tp not in self.owned)
        for tp in new:
            start = self.backend.committed_offset(self.group, tp)
            if start is None:
                low, high = self.backend._part(*tp).low, self.backend._part(*tp).high
                start = low if self.earliest else high
            self.owned[tp] = start
        if new:
            self.events(Assigned(new))

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            if tp in self.owned:  # a revoked member's commit is refused, as in Kafka
                self.backend.set_committed(self.group, tp, off)

    def high_watermark(self, tp: TopicPartition) -> int | None:
        return self.backend._part(*tp).high

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.backend._wake()

    async def _fetch_loop(self) -> None:
        while not self.closed:
            got: list[StoredRecord] = []
            if not self.paused:
                for tp, pos in list(self.owned.items()):
                    recs = self.backend.slice(tp[0], tp[1], pos, 500)
                    if recs:
                        self.owned[tp] = recs[-1].offset + 1
                        got.extend(recs)
            if got:
                self.events(Records(got))
                await asyncio.sleep(0)
            else:
                await self.backend.wait_data(0.5)

    async def close(self, final: dict[TopicPartition, int]) -> None:
        self.commit(final)
        self.closed = True
        self._task.cancel()
        self.backend.leave(self)


class _MemoryTail(Tail):
    def __init__(
        self, backend: MemoryBackend, topic: str, on_records: Callable[[list[StoredRecord]], None]
    ) -> None:
        self.backend = backend
        self.topic = topic
        self.on_records = on_records

    async def start(self) -> None:
        self.backend.add_tail(self)

    def deliver(self, recs: list[StoredRecord]) -> None:
        # Called inside write(): hand over on the next loop turn, like a real fetch.
        asyncio.get_running_loop().call_soon(self.on_records, recs)

    async def close(self) -> None:
        self.backend.remove_tail(self)
