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
from agentmesh.server.bus.backlog import Backlog
from agentmesh.server.bus.deliveries import Msg as _Msg
from agentmesh.server.bus.hot_path import HotPath
from agentmesh.server.bus.state import Marks, MemoryState, Prior, State
from agentmesh.server.bus.topics import TopicMatcher

log = logging.getLogger("agentmesh.bus.subscription")

#: dead_letter(record, reason, delivery_count): writes it to "<topic>.dlq".
DeadLetterFn = Callable[[wire.StoredRecord, str, int], Awaitable[None]]


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
    #: earlier deliveries of this partition to the group (state.Prior)
    prior: Prior = field(default_factory=Prior)
    #: records fetched while `prior` is being read, in order; None once read
    stash: list[wire.StoredRecord] | None = None
    #: every offset below it was delivered to the group at least once
    #: (state.Prior.contiguous, carried forward by this subscription's batches)
    contig: int = 0
    #: offsets at or above `contig` delivered at least once (out of order)
    ahead: set[int] = field(default_factory=set)
    #: offset ranges without records at or above `contig`: start -> end (exclusive)
    holes: dict[int, int] = field(default_factory=dict)

    def take_prior(self, prior: Prior) -> None:
        """Start the delivery marks from the group's earlier deliveries."""
        self.prior = prior
        self.contig = c = prior.contiguous
        self.ahead = {off for off in prior.counts if off >= c}

    def skip_to(self, start: int, offset: int) -> None:
        """The next fetched record is at `offset`, not at `start` (the next
        fetch position): no record of [start, offset) is delivered from here
        on, so `contig` may pass them.

        `start` < 0 (the partition's first fetched record): every offset below
        `offset` is committed, settled by this group. Otherwise the offsets
        hold no record (compaction, control records)."""
        if start < 0:
            if offset > self.contig:
                self.contig = offset
                self.ahead = {off for off in self.ahead if off >= offset}
                self.fill()
        elif offset > start >= self.contig:
            self.holes[start] = offset

    def fill(self) -> list[int]:
        """Advance `contig` over the out-of-order deliveries and holes it
        reaches; returns the offsets it took out of `ahead`."""
        ahead = self.ahead
        holes = self.holes
        c = self.contig
        taken = []
        while True:
            if c in ahead:
                ahead.remove(c)
                taken.append(c)
                c += 1
            elif c in holes:
                c = holes.pop(c)
            else:
                break
        self.contig = c
        return taken

    def settle(self, offset: int) -> int | None:
        """Mark `offset` settled; returns the new commit offset when it moved."""
        return self.settle_many([offset])

    def settle_many(self, offsets: list[int]) -> int | None:
        """Mark `offsets` (ascending, each fetched and not yet settled) settled;
        returns the new commit offset when it moved.

        The usual case, a cumulative ack of the oldest deliveries, is the
        front of `pending`: `pending` is strictly ascending and `offsets` a
        subset of it, so equal ends at the same length mean equal runs, and
        the run is dropped without a set operation per offset.
        """
        pending = self.pending
        if not pending or not offsets:
            return None
        k = len(offsets)
        settled = self.settled
        if pending[0] == offsets[0] and k <= len(pending) and pending[k - 1] == offsets[-1]:
            popleft = pending.popleft
            for _ in range(k):
                popleft()
        else:
            settled.update(offsets)
            if pending[0] not in settled:
                return None
        while pending and pending[0] in settled:
            settled.discard(pending.popleft())
        pos = pending[0] if pending else self.next_fetch
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
        state: where delivery counts are kept (services/bus/state.py), so a
            record's deliveries are counted across rebalances and restarts.
        read_ahead: backlog size at which fetching pauses.
        topic_refresh_s: how often wildcard patterns are re-resolved.
        hot_path: the per-record loops, compiled or Python (hot_path.load).
    """

    def __init__(
        self,
        backend: Backend,
        options: SubscriptionOptions,
        *,
        dead_letter: DeadLetterFn,
        state: State | None = None,
        read_ahead: int,
        topic_refresh_s: float,
        hot_path: HotPath,
    ) -> None:
        self.id = uuid.uuid4().hex[:16]
        self._hot = hot_path
        self.backend = backend
        self.opts = options
        self.matcher = TopicMatcher(options.patterns)
        self._dead_letter = dead_letter
        self._state: State = state if state is not None else MemoryState()
        #: the last batch waiting for its delivery marks (asynchronous state)
        self._sending: asyncio.Future[None] | None = None
        self._read_ahead = max(read_ahead, 1)
        self._refresh_s = topic_refresh_s
        #: serialized SubscribeResponses (checked by parsing), or the error that ends the stream
        self.outbox: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._backlog = Backlog()
        # Delivered, not yet acked: by ack id (in delivery order, which is
        # deadline order: every deadline is delivery time + ack_deadline_s),
        # and by offset per partition, for cumulative acks.
        self._outstanding: dict[str, _Msg] = {}
        self._by_tp: dict[TopicPartition, dict[int, _Msg]] = {}
        self._ack_prefix = f"{self.id}."
        self._pos_prefix: dict[TopicPartition, bytes] = {}
        self._parts: dict[TopicPartition, _PartState] = {}
        self._seq_n = 0  # the next record's arrival number (Item.seq)
        self._ack_n = 1  # the next ack id's number
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
            self._arrive(ev.records)
        elif isinstance(ev, Assigned):
            state = self._state
            for tp in ev.partitions:
                st = self._parts[tp] = _PartState()
                self._by_tp[tp] = {}
                if isinstance(state, MemoryState):
                    st.take_prior(state.load_now(self.opts.group, tp))
                else:  # hold its records until the counts are read
                    st.stash = []
                    self._spawn(self._load_prior(tp, st))
        elif isinstance(ev, Revoked):
            gone = set(ev.partitions)
            for tp in gone:
                self._parts.pop(tp, None)
                self._by_tp.pop(tp, None)
            self._backlog.remove_if(lambda tp: tp in gone)  # Item.data is the partition
            for ack_id in [a for a, m in self._outstanding.items() if m.tp in gone]:
                del self._outstanding[ack_id]
        self._pump()

    async def _load_prior(self, tp: TopicPartition, st: _PartState) -> None:
        """Read the group's earlier deliveries of `tp`, then take the records
        fetched meanwhile."""
        prior = await self._state.load(self.opts.group, tp)
        if self._closed or self._parts.get(tp) is not st:
            return  # revoked meanwhile
        st.take_prior(prior)
        stash, st.stash = st.stash or [], None
        if stash:
            self._arrive(stash)
            self._pump()

    def _arrive(self, records: Sequence[wire.StoredRecord]) -> None:
        """Put fetched records in the backlog (the per-record hot path: one
        object per record, the partition looked up once per run of records).

        A record this group was sent before (state.Prior: a rebalance or a
        gateway restart since) keeps its delivery count; one that has had
        max_deliveries already goes to the dead-letter topic."""
        dlq: list[_Msg] = []
        items, self._seq_n = self._hot.arrive_run(
            records, self._parts, self._seq_n, self.opts.max_deliveries, dlq
        )
        for msg in dlq:
            self._spawn(self._to_dlq(msg, msg.last_reason))
        self._backlog.push_many(items)
        if len(self._backlog) >= self._read_ahead and not self._paused and self._source:
            self._paused = True
            self._source.pause()

    # ---- delivery -------------------------------------------------------
    def _pump(self) -> None:
        """Move backlog items into the unacked window, in MessageBatches."""
        pop = self._backlog.pop
        while True:
            room = min(self.opts.max_unacked - len(self._outstanding), MAX_BATCH)
            items: list[_Msg] = []
            append = items.append
            size = 0
            full = False
            while len(items) < room:
                item = pop()
                if item is None:
                    break
                append(item)  # type: ignore[arg-type]  # every item is a _Msg
                size += len(item.env_b)  # type: ignore[attr-defined]
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

    def _deliver(self, items: list[_Msg]) -> None:
        """Send `items` as one MessageBatch, built as bytes, and record them
        as outstanding.

        Envelope values pass through undecoded (wire.delivered_envelope_bytes);
        the whole SubscribeResponse is parsed once, in C, which checks every
        value, and its bytes go out as they are (servicer.add_to_server:
        Subscribe's serializer passes bytes through). When that fails, the
        batch is taken back, each value is checked on its own and the
        undecodable ones go to the dead-letter topic instead.
        """
        deadline = time.monotonic() + self.opts.ack_deadline_s
        buf, marks = self._encode(items, deadline)
        try:
            bus_pb2.SubscribeResponse.FromString(buf)
        except DecodeError:
            self._take_back(items)
            good: list[_Msg] = []
            for msg in items:
                try:
                    wire.to_envelope(msg.rec)
                except Exception as exc:  # an undecodable "am-envelope" record
                    self._spawn(self._to_dlq(msg, f"undecodable envelope: {exc}"))
                    continue
                good.append(msg)
            if not good:
                return
            items = good
            buf, marks = self._encode(items, deadline)
            bus_pb2.SubscribeResponse.FromString(buf)
        write = self._state.record(self.opts.group, marks)
        if write is None and self._sending is None:
            self.outbox.put_nowait(buf)
        else:  # the marks are stored before the batch leaves; batches keep their order
            self._sending = asyncio.ensure_future(self._send_after(self._sending, write, buf))
        self._count_sent(items)

    async def _send_after(
        self, prev: asyncio.Future[None] | None, write: Awaitable[None] | None, resp: bytes,
    ) -> None:
        """Send `resp` once its delivery marks are stored and the batch before it went."""
        if write is not None:
            await write  # RedisState logs its own failures and never raises
        if prev is not None:
            await prev
        if not self._closed:
            self.outbox.put_nowait(resp)

    def _take_back(self, items: list[_Msg]) -> None:
        """Undo `_encode`'s bookkeeping of a batch that is not sent."""
        for msg in items:
            self._outstanding.pop(msg.ack_id, None)
            offsets = self._by_tp.get(msg.tp)
            if offsets is not None:
                offsets.pop(msg.rec.offset, None)
            msg.attempts -= 1

    def _count_sent(self, items: list[_Msg]) -> None:
        """Metrics of a sent batch: counts per topic, latency of a sample."""
        redelivered: Counter[str] = Counter(m.rec.topic for m in items if m.attempts > 1)
        topics: Counter[str] = Counter()
        last: TopicPartition | None = None
        run = 0
        for m in items:  # runs of one partition: one count per run
            if m.tp is not last:
                if last is not None:
                    topics[last[0]] += run
                last, run = m.tp, 0
            run += 1
        if last is not None:
            topics[last[0]] += run
        for topic, n in topics.items():
            n -= redelivered.get(topic, 0)
            if n:
                metrics.SENT.labels(metrics.topic_label(topic), "deliver").inc(n)
        for topic, n in redelivered.items():
            metrics.SENT.labels(metrics.topic_label(topic), "redeliver").inc(n)
        latency = metrics.LATENCY.labels("deliver")
        wall_ms = time.time() * 1000
        for m in items[:LATENCY_SAMPLES]:
            if m.attempts == 1 and m.rec.timestamp_ms > 0:
                latency.observe(max(0.0, wall_ms - m.rec.timestamp_ms))

    def _encode(self, items: list[_Msg], deadline: float) -> tuple[bytes, Marks]:
        """A serialized SubscribeResponse{batch} of `items`, each with a new
        ack id, its attempt counted and recorded as outstanding until `deadline`;
        and the batch's delivery marks for the state store (per partition:
        `contiguous`, the attempts of out-of-order first deliveries and of
        redeliveries; state.py's module docstring).

        The hot loop (hot_path's encode_run) only tests whether each offset
        is the partition's next one (`contig`, which then advances); any
        other delivery (out of order, or a redelivery) is sorted out after
        the loop."""
        last: dict[TopicPartition, int] = {}
        #: partitions of the batch: their state and contig before the batch
        touched: dict[TopicPartition, tuple[_PartState | None, int]] = {}
        odd: list[_Msg] = []  # not at contig: out of order, or redelivered
        redone: list[_Msg] = []
        body, self._ack_n = self._hot.encode_run(
            items, deadline, self._ack_prefix, self._ack_n, self._pos_prefix,
            self._outstanding, self._by_tp, self._parts, last, touched, odd, redone,
        )
        varint = wire.varint
        counts: dict[TopicPartition, dict[int, int]] = {}
        for msg in odd:
            tp = msg.tp
            off = msg.rec.offset
            if last.get(tp, -1) < off:
                last[tp] = off
            if msg.attempts > 1:
                continue  # in `redone`
            part = touched[tp][0]
            if part is not None and off >= part.contig:
                part.ahead.add(off)
                counts.setdefault(tp, {})[off] = 1
        marks: Marks = {}
        for tp, (part, c0) in touched.items():
            if part is None:
                continue  # revoked meanwhile: not this subscription's to mark
            cov: list[int] = []
            if part.ahead or part.holes:
                cov = part.fill()
                # A redelivery at contig in the hot loop may have passed entries.
                if part.ahead and part.contig > c0 and min(part.ahead) < part.contig:
                    c = part.contig
                    cov += [o for o in part.ahead if o < c]
                    part.ahead = {o for o in part.ahead if o >= c}
            c = part.contig
            mine = counts.get(tp)
            if mine:
                if cov:  # filled within this batch: no entry needed
                    for o in cov:
                        mine.pop(o, None)
                for o in [o for o in mine if o < c]:
                    del mine[o]
            marks[tp] = (c, mine if mine is not None else {}, cov)
        out = [body]
        for (topic, partition), off in last.items():
            p = wire.position_bytes(topic, partition, off)
            out.append(b"\x12" + varint(len(p)) + p)  # MessageBatch.last_positions
        for msg in redone:
            mark = marks.get(msg.tp)
            if mark is not None:
                mark[1][msg.rec.offset] = msg.attempts
        batch = b"".join(out)
        return b"\x12" + varint(len(batch)) + batch, marks  # SubscribeResponse.batch

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
        done: dict[TopicPartition, list[int]] = {}
        for ack_id in ack_ids:
            msg = outstanding.pop(ack_id, None)
            if msg is not None:
                off = msg.rec.offset
                offsets = by_tp.get(msg.tp)
                if offsets is not None:
                    offsets.pop(off, None)
                run = done.get(msg.tp)
                if run is None:
                    done[msg.tp] = [off]
                else:
                    run.append(off)
        ack_up_to = self._hot.ack_up_to
        for tp, upto in up_to:
            offsets = by_tp.get(tp)
            if not offsets:
                continue
            acked = ack_up_to(offsets, outstanding, upto)
            if acked:
                done.setdefault(tp, []).extend(acked)
        for tp, offs in done.items():
            self._settle(tp, sorted(offs), moved)
        if moved and self._source is not None:
            self._source.commit(moved)
        self._pump()

    def _forget(self, msg: _Msg) -> None:
        """Drop an outstanding delivery from the per-partition index."""
        offsets = self._by_tp.get(msg.tp)
        if offsets is not None:
            offsets.pop(msg.rec.offset, None)

    def _settle(
        self, tp: TopicPartition, offsets: list[int],
        moved: dict[TopicPartition, int] | None = None,
    ) -> None:
        st = self._parts.get(tp)
        if st is None:
            return  # revoked meanwhile: the new owner redelivers it
        pos = st.settle_many(offsets)
        if pos is None:
            return
        if moved is not None:
            moved[tp] = pos
        elif self._source is not None:
            self._source.commit({tp: pos})

    def nack(self, ack_ids: list[str], *, reason: str, delay_s: float) -> None:
        """Reject delivered messages: redeliver later, or dead-letter at max_deliveries."""
        for ack_id in ack_ids:
            msg = self._outstanding.pop(ack_id, None)
            if msg is not None:
                self._forget(msg)
                self._retry(msg, reason or "nacked", delay_s)
        self._pump()

    def _retry(self, msg: _Msg, reason: str, delay_s: float) -> None:
        msg.last_reason = reason
        if msg.attempts >= self.opts.max_deliveries:
            self._spawn(self._to_dlq(msg, reason))
            return
        if delay_s > 0:
            handle = asyncio.get_running_loop().call_later(delay_s, self._requeue, msg)
            self._timers.add(handle)
        else:
            self._requeue(msg)

    def _requeue(self, msg: _Msg) -> None:
        if self._closed or msg.tp not in self._parts:
            return
        self._backlog.push(msg)  # same seq: back in front of later messages of its key
        self._pump()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _to_dlq(self, msg: _Msg, reason: str) -> None:
        try:
            await self._dead_letter(msg.rec, reason, msg.attempts)
        except Exception as exc:  # keep it: retry the whole delivery later
            log.warning("dead-letter write failed", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
            self._requeue(msg)
            return
        metrics.DEAD_LETTERS.labels(metrics.topic_label(msg.rec.topic)).inc()
        metrics.SENT.labels(metrics.topic_label(msg.rec.topic), "dead_letter").inc()
        self._settle(msg.tp, [msg.rec.offset])
        self._pump()

    async def _deadline_loop(self) -> None:
        tick = min(1.0, max(0.05, self.opts.ack_deadline_s / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            expired = []
            for a, m in self._outstanding.items():
                if m.deadline > now:
                    break  # delivery order is deadline order
                expired.append(a)
            for ack_id in expired:
                m = self._outstanding.pop(ack_id)
                self._forget(m)
                self._retry(m, "ack deadline exceeded", 0.0)
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
