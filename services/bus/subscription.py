"""One Subscribe stream: backlog, flow control, acks, offset commits,
redelivery and dead-lettering, on top of a backend Source.

Offsets: for each owned partition the subscription remembers, in offset
order, every fetched offset not yet settled (acked or dead-lettered). The
committed next-offset is the first unsettled one, or one past the last
fetched when all are settled: the contiguous acked prefix. So a crash loses
no acked message and an unacked one is never committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from agentmesh.bus.v1 import bus_pb2
from agentmesh.server.bus import metrics, wire
from agentmesh.server.bus.backend import (
    Assigned,
    Backend,
    BackendUnavailable,
    Records,
    Revoked,
    Source,
    SourceEvent,
    TopicPartition,
)
from agentmesh.server.bus.backlog import Backlog, Item
from agentmesh.server.bus.topics import TopicMatcher

log = logging.getLogger("agentmesh.bus.subscription")

#: dead_letter(record, reason, delivery_count): writes it to "<topic>.dlq".
DeadLetterFn = Callable[[wire.StoredRecord, str, int], Awaitable[None]]


@dataclass(slots=True)
class _Msg:
    rec: wire.StoredRecord
    tp: TopicPartition
    is_env: bool = False
    hash_b: bytes | None = None
    attempts: int = 0
    last_reason: str = ""


@dataclass(slots=True)
class _Delivery:
    item: Item
    deadline: float


#: Most deliveries per MessageBatch (one gRPC message).
MAX_BATCH = 2000
#: A batch stops growing once its stored values reach this many bytes (it
#: always holds at least one message), so a response stays far below gRPC's
#: default 4 MiB receive limit with --max-payload-bytes at its 1 MiB default.
MAX_BATCH_BYTES = 1 << 20
#: Most latency observations per batch: the histogram is a sample of the
#: batch's first deliveries, so a large batch costs no more than this.
LATENCY_SAMPLES = 64


@dataclass(slots=True)
class _PartState:
    next_fetch: int = -1
    pending: deque[int] = field(default_factory=deque)
    settled: set[int] = field(default_factory=set)
    committed: int = -1

    def settle(self, offset: int) -> int | None:
        """Mark `offset` settled; returns the new commit offset when it moved."""
        self.settled.add(offset)
        moved = False
        while self.pending and self.pending[0] in self.settled:
            self.settled.discard(self.pending.popleft())
            moved = True
        if not moved:
            return None
        pos = self.pending[0] if self.pending else self.next_fetch
        if pos > self.committed:
            self.committed = pos
            return pos
        return None


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """Resolved SubscriptionOpen settings."""

    patterns: tuple[str, ...]
    group: str
    max_unacked: int
    ack_deadline_s: float
    max_deliveries: int
    earliest: bool


class Subscription:
    """A running subscription; read batches from `outbox`.

    Args:
        backend: storage.
        options: the subscription settings.
        dead_letter: writes a record to its dead-letter topic.
        read_ahead: backlog size at which fetching pauses.
        topic_refresh_s: how often wildcard patterns are re-resolved.
    """

    def __init__(
        self,
        backend: Backend,
        options: SubscriptionOptions,
        *,
        dead_letter: DeadLetterFn,
        read_ahead: int,
        topic_refresh_s: float,
    ) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.backend = backend
        self.opts = options
        self.matcher = TopicMatcher(options.patterns)
        self._dead_letter = dead_letter
        self._read_ahead = max(read_ahead, 1)
        self._refresh_s = topic_refresh_s
        self.outbox: asyncio.Queue[bus_pb2.SubscribeResponse | BaseException] = (
            asyncio.Queue()
        )
        self._backlog = Backlog()
        # Delivered, not yet acked: by ack id (in delivery order, which is
        # deadline order: every deadline is delivery time + ack_deadline_s),
        # and ack id by offset per partition, for cumulative acks.
        self._outstanding: dict[str, _Delivery] = {}
        self._by_tp: dict[TopicPartition, dict[int, str]] = {}
        self._ack_prefix = f"{self.id}."
        self._pos_prefix: dict[TopicPartition, bytes] = {}
        self._parts: dict[TopicPartition, _PartState] = {}
        self._seq = itertools.count()
        self._ack_ids = itertools.count(1)
        self._source: Source | None = None
        self._paused = False
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._topics: list[str] = []
        self._closed = False
        self._glabel = metrics.group_label(options.group)

    # ---- lifecycle ------------------------------------------------------
    async def start(self) -> list[str]:
        """Resolve topics, join the group; returns the topics matched now.

        Raises:
            BackendUnavailable: the backend cannot list topics.
        """
        topics = self.matcher.select(await self.backend.list_topics())
        self._source = self.backend.open_source(
            group=self.opts.group, earliest=self.opts.earliest, events=self._on_event
        )
        self._topics = topics
        if topics:
            self._source.set_topics(topics)
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name=f"sub-refresh-{self.id}"))
        self._tasks.append(asyncio.create_task(self._deadline_loop(), name=f"sub-ackdl-{self.id}"))
        return topics

    async def close(self) -> None:
        """Commit the acked prefix and leave the group; unacked messages stay uncommitted."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for h in self._timers:
            h.cancel()
        final = {tp: st.committed for tp, st in self._parts.items() if st.committed >= 0}
        if self._source is not None:
            await self._source.close(final)
        metrics.set_lag(self._glabel, self.id, None)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                topics = self.matcher.select(await self.backend.list_topics())
            except BackendUnavailable:
                continue
            if topics != self._topics and self._source is not None:
                self._topics = topics
                self._source.set_topics(topics)

    # ---- source events --------------------------------------------------
    def _on_event(self, ev: SourceEvent) -> None:
        if self._closed:
            return
        if isinstance(ev, Records):
            items: list[Item] = []
            seq = self._seq
            meta = wire.delivery_meta
            parts = self._parts
            for rec in ev.records:
                tp = (rec.topic, rec.partition)
                st = parts.get(tp)
                if st is None or rec.offset < st.next_fetch:
                    continue  # revoked partition, or a refetch of what we hold
                st.next_fetch = rec.offset + 1
                st.pending.append(rec.offset)
                is_env, cls, hash_b = meta(rec.headers)
                key = (tp, rec.key) if rec.key else (tp, None, rec.offset)
                items.append(Item(next(seq), key, cls, _Msg(rec, tp, is_env, hash_b)))
            self._backlog.push_many(items)
            if len(self._backlog) >= self._read_ahead and not self._paused and self._source:
                self._paused = True
                self._source.pause()
        elif isinstance(ev, Assigned):
            for tp in ev.partitions:
                self._parts[tp] = _PartState()
                self._by_tp[tp] = {}
        elif isinstance(ev, Revoked):
            gone = set(ev.partitions)
            for tp in gone:
                self._parts.pop(tp, None)
                self._by_tp.pop(tp, None)
            self._backlog.remove_if(lambda m: m.tp in gone)
            for ack_id in [a for a, d in self._outstanding.items() if d.item.data.tp in gone]:
                del self._outstanding[ack_id]
        self._pump()

    # ---- delivery -------------------------------------------------------
    def _pump(self) -> None:
        """Move backlog items into the unacked window, in MessageBatches."""
        while True:
            room = min(self.opts.max_unacked - len(self._outstanding), MAX_BATCH)
            items: list[Item] = []
            pop = self._backlog.pop
            size = 0
            full = False
            while len(items) < room:
                item = pop()
                if item is None:
                    break
                items.append(item)
                size += len(item.data.rec.value or b"")
                if size >= MAX_BATCH_BYTES:
                    full = True
                    break
            if items:
                self._deliver(items)
            if not items or (len(items) < room and not full):
                break
        if self._paused and len(self._backlog) < self._read_ahead // 2 and self._source:
            self._paused = False
            self._source.resume()

    def _deliver(self, items: list[Item]) -> None:
        """Send `items` as one MessageBatch, built as bytes.

        Envelope values pass through undecoded (wire.delivered_envelope_bytes);
        the whole SubscribeResponse is parsed once, in C, which also checks
        every value. When that fails, each value is checked on its own and the
        undecodable ones go to the dead-letter topic instead.
        """
        buf, ack_ids = self._encode(items)
        try:
            resp = bus_pb2.SubscribeResponse.FromString(buf)
        except DecodeError:
            good: list[Item] = []
            for item in items:
                msg: _Msg = item.data
                try:
                    wire.to_envelope(msg.rec)
                except Exception as exc:  # an undecodable "am-envelope" record
                    self._spawn(self._to_dlq(item, f"undecodable envelope: {exc}"))
                    continue
                good.append(item)
            if not good:
                return
            items = good
            buf, ack_ids = self._encode(items)
            resp = bus_pb2.SubscribeResponse.FromString(buf)
        deadline = time.monotonic() + self.opts.ack_deadline_s
        outstanding = self._outstanding
        by_tp = self._by_tp
        sent: Counter[tuple[str, str]] = Counter()
        latency = metrics.LATENCY.labels("deliver")
        wall_ms = time.time() * 1000
        samples = 0
        for item, ack_id in zip(items, ack_ids, strict=True):
            msg = item.data
            msg.attempts += 1
            outstanding[ack_id] = _Delivery(item, deadline)
            offsets = by_tp.get(msg.tp)
            if offsets is not None:
                offsets[msg.rec.offset] = ack_id
            first = msg.attempts == 1
            sent[(msg.rec.topic, "deliver" if first else "redeliver")] += 1
            if first and samples < LATENCY_SAMPLES and msg.rec.timestamp_ms > 0:
                samples += 1
                latency.observe(max(0.0, wall_ms - msg.rec.timestamp_ms))
        self.outbox.put_nowait(resp)
        for (topic, kind), n in sent.items():
            metrics.SENT.labels(metrics.topic_label(topic), kind).inc(n)

    def _encode(self, items: list[Item]) -> tuple[bytes, list[str]]:
        """A serialized SubscribeResponse{batch} of `items` and their new ack ids."""
        varint = wire.varint
        small = wire.SMALL_VARINTS
        envelope_bytes = wire.delivered_envelope_bytes
        prefixes = self._pos_prefix
        ack_prefix = self._ack_prefix
        next_ack = self._ack_ids.__next__
        last: dict[TopicPartition, int] = {}
        ack_ids: list[str] = []
        out: list[bytes] = []
        for item in items:
            msg: _Msg = item.data
            rec = msg.rec
            tp = msg.tp
            pre = prefixes.get(tp)
            if pre is None:
                pre = prefixes[tp] = wire.position_bytes(rec.topic, rec.partition, 0)
            off = rec.offset
            pos = pre + b"\x18" + varint(off) if off else pre
            if last.get(tp, -1) < off:
                last[tp] = off
            ack_id = f"{ack_prefix}{next_ack()}"
            ack_ids.append(ack_id)
            ack_b = ack_id.encode()
            env = envelope_bytes(rec, msg.is_env, msg.hash_b)
            n_env = len(env)
            n_pos = len(pos)
            attempt = msg.attempts + 1
            rm = b"".join((
                b"\x0a", small[len(ack_b)], ack_b,  # ack ids are < 128 bytes
                b"\x12", small[n_env] if n_env < 128 else varint(n_env), env,
                b"\x1a", small[n_pos] if n_pos < 128 else varint(n_pos), pos,
                b"\x20", small[attempt] if attempt < 128 else varint(attempt),
            ))
            n_rm = len(rm)
            out.append(b"\x0a" + (small[n_rm] if n_rm < 128 else varint(n_rm)) + rm)
        for (topic, partition), off in last.items():
            p = wire.position_bytes(topic, partition, off)
            out.append(b"\x12" + varint(len(p)) + p)  # MessageBatch.last_positions
        batch = b"".join(out)
        return b"\x12" + varint(len(batch)) + batch, ack_ids  # SubscribeResponse.batch

    def ack(
        self, ack_ids: Sequence[str], up_to: Sequence[tuple[TopicPartition, int]] = ()
    ) -> None:
        """Settle delivered messages: by ack id, and cumulatively per partition
        (`up_to`: every outstanding delivery of that partition at or below the
        offset). Unknown or stale ids and partitions are ignored. Commit
        positions that moved are handed to the source once per call."""
        moved: dict[TopicPartition, int] = {}
        outstanding = self._outstanding
        by_tp = self._by_tp
        for ack_id in ack_ids:
            d = outstanding.pop(ack_id, None)
            if d is not None:
                msg = d.item.data
                offsets = by_tp.get(msg.tp)
                if offsets is not None:
                    offsets.pop(msg.rec.offset, None)
                self._settle(msg, moved)
        for tp, upto in up_to:
            offsets = by_tp.get(tp)
            if not offsets:
                continue
            done = [o for o in offsets if o <= upto]
            for o in done:
                d = outstanding.pop(offsets.pop(o), None)
                if d is not None:
                    self._settle(d.item.data, moved)
        if moved and self._source is not None:
            self._source.commit(moved)
        self._pump()

    def _forget(self, d: _Delivery) -> None:
        """Drop an outstanding delivery from the per-partition index."""
        msg: _Msg = d.item.data
        offsets = self._by_tp.get(msg.tp)
        if offsets is not None:
            offsets.pop(msg.rec.offset, None)

    def _settle(self, msg: _Msg, moved: dict[TopicPartition, int] | None = None) -> None:
        st = self._parts.get(msg.tp)
        if st is None:
            return  # revoked meanwhile: the new owner redelivers it
        pos = st.settle(msg.rec.offset)
        if pos is None:
            return
        if moved is not None:
            moved[msg.tp] = pos
        elif self._source is not None:
            self._source.commit({msg.tp: pos})

    def nack(self, ack_ids: list[str], *, reason: str, delay_s: float) -> None:
        """Reject delivered messages: redeliver later, or dead-letter at max_deliveries."""
        for ack_id in ack_ids:
            d = self._outstanding.pop(ack_id, None)
            if d is not None:
                self._forget(d)
                self._retry(d.item, reason or "nacked", delay_s)
        self._pump()

    def _retry(self, item: Item, reason: str, delay_s: float) -> None:
        msg: _Msg = item.data
        msg.last_reason = reason
        if msg.attempts >= self.opts.max_deliveries:
            self._spawn(self._to_dlq(item, reason))
            return
        if delay_s > 0:
            handle = asyncio.get_running_loop().call_later(delay_s, self._requeue, item)
            self._timers.add(handle)
        else:
            self._requeue(item)

    def _requeue(self, item: Item) -> None:
        if self._closed or item.data.tp not in self._parts:
            return
        self._backlog.push(item)  # same seq: back in front of later messages of its key
        self._pump()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _to_dlq(self, item: Item, reason: str) -> None:
        msg: _Msg = item.data
        try:
            await self._dead_letter(msg.rec, reason, msg.attempts)
        except Exception as exc:  # keep it: retry the whole delivery later
            log.warning("dead-letter write failed", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
            self._requeue(item)
            return
        metrics.DEAD_LETTERS.labels(metrics.topic_label(msg.rec.topic)).inc()
        metrics.SENT.labels(metrics.topic_label(msg.rec.topic), "dead_letter").inc()
        self._settle(msg)
        self._pump()

    async def _deadline_loop(self) -> None:
        tick = min(1.0, max(0.05, self.opts.ack_deadline_s / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = []
            for a, d in self._outstanding.items():
                if d.deadline > now:
                    break  # delivery order is deadline order
                expired.append(a)
            for ack_id in expired:
                d = self._outstanding.pop(ack_id)
                self._forget(d)
                self._retry(d.item, "ack deadline exceeded", 0.0)
            if expired:
                self._pump()
            self._report_lag()
            if self._timers:  # forget delayed redeliveries that already fired
                t = asyncio.get_running_loop().time()
                self._timers = {h for h in self._timers if h.when() > t}

    def _report_lag(self) -> None:
        """Consumer lag: records between the committed offset and the high watermark."""
        if self._source is None:
            return
        lag = 0
        for tp, st in self._parts.items():
            high = self._source.high_watermark(tp)
            if high is None:
                continue
            pos = st.pending[0] if st.pending else st.next_fetch
            lag += max(0, high - pos) if pos >= 0 else 0
        metrics.set_lag(self._glabel, self.id, lag)

    def fail(self, exc: BaseException) -> None:
        """Hand an error to the stream."""
        with contextlib.suppress(Exception):
            self.outbox.put_nowait(exc)
