"""The Kafka backend, on confluent-kafka (librdkafka).

Producer: one per gateway, idempotent with acks=all (runtime.deps
kafka_producer_config), message.timeout.ms = the delivery timeout. A poll
thread serves delivery reports and resolves one asyncio future per batch, so
a batch of N records costs one cross-thread wake-up instead of N.

Consumers: one per subscription, in its own thread, with
enable.auto.commit=false and enable.auto.offset.store=false: offsets are only
committed explicitly, by the subscription, up to its contiguous acked prefix.
Rebalance callbacks become Assigned/Revoked events on the asyncio loop, in
order with the fetched records.

librdkafka reference: CONFIGURATION.md (message.timeout.ms, enable.idempotence,
enable.auto.offset.store, session.timeout.ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.runtime.deps import kafka_client_config, kafka_producer_config
from agentmesh.server.bus import metrics
from agentmesh.server.bus.backend import (
    Assigned,
    Backend,
    BackendUnavailable,
    DeliveryError,
    Records,
    Revoked,
    Source,
    SourceEvent,
    Tail,
    TopicExists,
    TopicPartition,
    TopicRejected,
    WriteResult,
)
from agentmesh.server.bus.topics import TopicSpec, cluster_replication
from agentmesh.server.bus.wire import OutRecord, StoredRecord

log = logging.getLogger("agentmesh.bus.kafka")

#: librdkafka errors after which the record may or may not be on the broker.
_UNKNOWN_OUTCOME_CODES = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
}


#: Broker refusals of a CreateTopics request -> the Topic field at fault.
_REJECTED_FIELD = {
    KafkaError.INVALID_REPLICATION_FACTOR: "replication_factor",
    KafkaError.INVALID_PARTITIONS: "partitions",
    KafkaError.INVALID_CONFIG: "config",
    KafkaError.POLICY_VIOLATION: "config",
}


def _fetch(c: Consumer, max_n: int, timeout_s: float) -> list[Message]:
    """Up to `max_n` messages: wait up to `timeout_s` for the first, then take
    only what is already there (consume() alone would wait out the timeout
    for a full batch, adding up to `timeout_s` of latency)."""
    first = c.poll(timeout_s)
    if first is None:
        return []
    return [first, *c.consume(max_n - 1, 0)] if max_n > 1 else [first]


def _to_stored(m: Message) -> StoredRecord:
    # Positional arguments, and headers() as returned (a new list per call):
    # this runs once per consumed record on the consumer thread, holding the GIL.
    ts_type, ts = m.timestamp()
    return StoredRecord(
        m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), m.value(),
        m.headers() or [], ts if ts_type else 0,  # type: ignore[arg-type]
    )


class _Batch:
    """One write's records: collects their delivery reports, resolves one
    asyncio future when the last one is in (one cross-thread wake-up per batch).

    Reports arrive on the producer's poll thread, local failures on the loop;
    the count is an itertools.count, whose next() is atomic under the GIL, so
    no lock is taken per report.
    """

    __slots__ = ("backend", "count", "fut", "last", "loop", "results")

    def __init__(self, backend: KafkaBackend, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.backend = backend
        self.loop = loop
        self.fut: asyncio.Future[list[WriteResult]] = loop.create_future()
        self.results: list[WriteResult] = [0] * n
        self.count = itertools.count()
        self.last = n - 1

    def done(self, i: int, result: WriteResult) -> None:
        self.results[i] = result
        if next(self.count) == self.last:
            self.loop.call_soon_threadsafe(_resolve, self.fut, self.results)

    def on_delivery(self, i: int, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery report for record i (bound per record with partial)."""
        if err is None:
            self.results[i] = msg.offset() or 0
            if next(self.count) == self.last:
                self.backend.down_since = None
                self.loop.call_soon_threadsafe(_resolve, self.fut, self.results)
            return
        code = err.code()
        unknown = code in _UNKNOWN_OUTCOME_CODES or err.retriable()
        if code == KafkaError.MSG_SIZE_TOO_LARGE:
            reason = ErrorReason.ERROR_REASON_MESSAGE_TOO_LARGE
        elif unknown:
            reason = ErrorReason.ERROR_REASON_UNKNOWN_OUTCOME
        else:
            reason = ErrorReason.ERROR_REASON_KAFKA_ERROR
        self.done(i, DeliveryError(str(err), unknown_outcome=unknown, reason=reason))


def _resolve(fut: asyncio.Future[list[WriteResult]], results: list[WriteResult]) -> None:
    if not fut.done():
        fut.set_result(results)


#: Seconds a new topic's first write waits for the producer to learn every
#: partition's leader before it is refused with UNAVAILABLE.
PRODUCER_METADATA_S = 10.0

#: Producer tuning when the bus settings give none (their defaults): a 1 ms
#: linger keeps publish latency low; the deep local queue absorbs bursts.
PRODUCER_TUNING: dict[str, Any] = {
    "linger.ms": 1,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "batch.num.messages": 10_000,
}


class KafkaBackend(Backend):
    """Record storage on a Kafka cluster.

    Args:
        bootstrap: bootstrap servers.
        security: librdkafka security settings (deps.kafka_security_config),
            merged into the producer, consumer and admin configurations.
        delivery_timeout_ms: message.timeout.ms; a record not confirmed by
            then fails with an unknown outcome.
        session_timeout_ms: consumer group session timeout, how fast a dead
            gateway's partitions move to another member.
        instance_id: used in internal group ids.
        producer_tuning: librdkafka producer properties (linger.ms,
            batch.num.messages, queue.buffering.max.*) over PRODUCER_TUNING;
            the bus settings (`--kafka-linger-ms`, ...) set them.
        fetch_wait_max_ms: fetch.wait.max.ms of subscription consumers.
        consumer_overrides: librdkafka consumer properties over the
            subscription consumers' own (`--kafka-consumer-config`, keys
            checked by kafka_config).
        topic_defaults: replication and configs of created topics when
            create_topic is given none. Replication left open (-1 / 0) is
            filled in by topics.cluster_replication from the most brokers
            seen in metadata: 3 and min.insync.replicas 2 on a cluster of
            three or more.

    Attributes:
        brokers_seen: the most brokers one metadata response has listed since
            start (a dead broker drops out of metadata; this count does not,
            so topics created while one is down still ask for the full
            replication and fail UNAVAILABLE instead of being under-replicated).
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        delivery_timeout_ms: int = 10_000,
        session_timeout_ms: int = 6000,
        instance_id: str = "",
        security: Mapping[str, str] | None = None,
        producer_tuning: Mapping[str, Any] | None = None,
        fetch_wait_max_ms: int = 100,
        consumer_overrides: Mapping[str, Any] | None = None,
        topic_defaults: TopicSpec | None = None,
    ) -> None:
        self.consumer_overrides = dict(consumer_overrides or {})
        self.topic_defaults = topic_defaults or TopicSpec()
        self.bootstrap = bootstrap
        self.producer_tuning = {**PRODUCER_TUNING, **(producer_tuning or {})}
        self.fetch_wait_max_ms = fetch_wait_max_ms
        # bootstrap.servers plus SASL/TLS: the base of every client config below.
        self.client_config = kafka_client_config(bootstrap, security)
        self.delivery_timeout_ms = delivery_timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.instance_id = instance_id
        self._producer: Producer | None = None
        #: The librdkafka producer configuration in use (set by start()).
        self.producer_config: dict[str, Any] = {}
        # allow.auto.create.topics=false: a metadata lookup of an unknown
        # topic must not make the broker create it with the broker's defaults
        # (auto.create.topics.enable), so the gateway creates it with its own.
        self._admin = AdminClient({**self.client_config, "socket.timeout.ms": 3000,
                                   "allow.auto.create.topics": False})
        self._partitions: dict[str, int] = {}
        self.brokers_seen = 0
        self._poll_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.down_since: float | None = None
        self._watch: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------
    async def start(self) -> None:
        self.producer_config = kafka_producer_config(
            self.bootstrap,
            **{
                **self.client_config,
                "message.timeout.ms": self.delivery_timeout_ms,
                **self.producer_tuning,
            },
        )
        self._producer = Producer({**self.producer_config, "error_cb": self._on_error})
        self._poll_thread = threading.Thread(target=self._poll, name="bus-producer-poll",
                                             daemon=True)
        self._poll_thread.start()
        self._watch = asyncio.create_task(self._watch_down(), name="bus-kafka-watch")

    async def _watch_down(self) -> None:
        # While the cluster looks down, probe it so writes resume once it is back.
        while True:
            await asyncio.sleep(1.0)
            if self.down_since is None:
                continue
            try:
                md = await asyncio.to_thread(self._admin.list_topics, timeout=1)
                if md.brokers:
                    self.down_since = None
            except KafkaException:
                pass

    def _poll(self) -> None:
        assert self._producer is not None
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    def _on_error(self, err: KafkaError) -> None:
        # _TRANSPORT is one broker connection failing: the whole of Kafka on a
        # single broker, but on a cluster (more than one broker seen) the
        # others still take writes; only _ALL_BROKERS_DOWN means down there.
        down = (KafkaError._ALL_BROKERS_DOWN,) if self.brokers_seen > 1 else (
            KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT)
        if err.code() in down:
            if self.down_since is None:
                log.warning("kafka unreachable", extra={"error": str(err)})
                self.down_since = time.monotonic()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 5.0)
        self._stopping.set()
        if self._poll_thread is not None:
            await asyncio.to_thread(self._poll_thread.join, 2.0)

    # ---- topics ---------------------------------------------------------
    async def list_topics(self) -> dict[str, int]:
        try:
            md = await asyncio.to_thread(self._admin.list_topics, timeout=5)
        except KafkaException as exc:
            raise BackendUnavailable(f"cannot list Kafka topics: {exc}") from exc
        self.down_since = None
        self._note_brokers(md)
        out = {
            name: len(t.partitions)
            for name, t in md.topics.items()
            if t.error is None and not name.startswith("__")
        }
        self._partitions.update(out)
        return out

    def _note_brokers(self, md: ClusterMetadata) -> int:
        """Fold a metadata response's broker count into brokers_seen; returns it."""
        self.brokers_seen = max(self.brokers_seen, len(md.brokers))
        return self.brokers_seen

    async def _count_brokers(self, topic: str) -> tuple[int, int]:
        """(brokers in a fresh metadata response, brokers_seen after it).

        Asks for `topic`'s metadata only (not every topic's); the response
        lists the live brokers either way.

        Raises:
            BackendUnavailable: no metadata within 5 s.
        """
        try:
            md = await asyncio.to_thread(self._admin.list_topics, topic=topic, timeout=5)
        except KafkaException as exc:
            raise BackendUnavailable(f"cannot read Kafka metadata: {exc}") from exc
        return len(md.brokers), self._note_brokers(md)

    def cached_partitions(self, topic: str) -> int | None:
        return self._partitions.get(topic)

    async def partitions(self, topic: str) -> int | None:
        n = self._partitions.get(topic)
        if n is not None:
            return n
        try:
            md = await asyncio.to_thread(self._admin.list_topics, topic=topic, timeout=5)
        except KafkaException as exc:
            raise BackendUnavailable(f"cannot read Kafka metadata: {exc}") from exc
        self._note_brokers(md)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return None
        await self._producer_knows(topic, len(t.partitions))
        self._partitions[topic] = len(t.partitions)
        return len(t.partitions)

    async def _producer_knows(self, topic: str, partitions: int) -> None:
        """Wait (up to PRODUCER_METADATA_S) until the producer's own metadata
        has every partition of `topic` with a leader.

        The gateway names each record's partition itself. Written to a topic
        created a moment before, while the producer's metadata still saw the
        topic come and go, the first records of a partition were acknowledged
        with the offset of a later record and only the later one was stored
        (about one new topic in ten here, Kafka 4.1 and librdkafka 2.16):
        librdkafka drops a partition's idempotence sequence when metadata says
        the partition is gone and starts again at 0, so the broker takes the
        next records as duplicates (librdkafka issue 3712). Asking first keeps
        every write on a partition the producer already knows.
        """
        p = self._producer
        if p is None:
            return
        deadline = time.monotonic() + PRODUCER_METADATA_S
        while True:
            try:
                md = await asyncio.to_thread(p.list_topics, topic=topic, timeout=5)
                t = md.topics.get(topic)
                if (t is not None and t.error is None and len(t.partitions) >= partitions
                        and all(pm.leader >= 0 and pm.error is None
                                for pm in t.partitions.values())):
                    return
            except KafkaException:
                pass  # the deadline below decides
            if time.monotonic() >= deadline:
                raise BackendUnavailable(
                    f"topic {topic}: partition leaders not known to the producer after "
                    f"{PRODUCER_METADATA_S:g} s"
                )
            await asyncio.sleep(0.05)

    async def create_topic(
        self, topic: str, partitions: int, spec: TopicSpec | None = None
    ) -> TopicSpec:
        live, seen = await self._count_brokers(topic)
        spec = cluster_replication(spec or self.topic_defaults, seen)
        futs = self._admin.create_topics(
            [NewTopic(topic, num_partitions=partitions,
                      replication_factor=spec.replication_factor,
                      config=spec.topic_config())],
            operation_timeout=10,
            request_timeout=10,
        )
        try:
            await asyncio.wrap_future(futs[topic])
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicExists(topic) from exc
            if (code == KafkaError.INVALID_REPLICATION_FACTOR
                    and 0 < spec.replication_factor <= seen):
                # The cluster has had enough brokers and will again: an outage,
                # not a bad request. Creating the topic with fewer replicas
                # would silently weaken every later write to it.
                raise BackendUnavailable(
                    f"cannot create topic {topic} with replication factor "
                    f"{spec.replication_factor}: {live} of the {seen} brokers seen are up"
                ) from exc
            if code in _REJECTED_FIELD and isinstance(err, KafkaError):
                raise TopicRejected(f"the broker refused topic {topic}: {err.str()}",
                                    field=_REJECTED_FIELD[code]) from exc
            raise BackendUnavailable(f"cannot create topic {topic}: {exc}") from exc
        # The first write waits until the producer itself knows every
        # partition's leader (see _producer_knows); consumers find it by
        # their own metadata refresh.
        await self._producer_knows(topic, partitions)
        self._partitions[topic] = partitions
        log.info("topic created", extra={
            "topic": topic, "partitions": partitions,
            "replication_factor": spec.replication_factor,
            "min_insync_replicas": spec.min_insync_replicas, "brokers_seen": seen})
        return spec

    # ---- writes ---------------------------------------------------------
    def write(self, records: Sequence[OutRecord]) -> asyncio.Future[list[WriteResult]]:
        p = self._producer
        if p is None:
            raise BackendUnavailable("the Kafka producer is not started")
        if self.down_since is not None and time.monotonic() - self.down_since > 1.0:
            # Known down: fail fast with a definite "not written" instead of
            # queueing writes that would end as unknown outcomes.
            raise BackendUnavailable("Kafka is unreachable")
        batch = _Batch(self, asyncio.get_running_loop(), len(records))
        produce = p.produce
        on_delivery = batch.on_delivery
        for i, (topic, partition, key, value, headers, timestamp_ms) in enumerate(records):
            try:
                # Positional, in Producer.produce's parameter order (topic, value,
                # key, partition, callback, on_delivery, timestamp, headers; its
                # type stub holds it to that): with keywords, its argument parser
                # builds a str per keyword name per call, about a quarter of the
                # call's cost.
                produce(topic, value, key, partition, partial(on_delivery, i), None,
                        timestamp_ms, headers)  # type: ignore[arg-type]
            except BufferError:
                # The local queue is full; report it like a delivery failure
                # (definitely not written) rather than blocking the loop.
                batch.loop.call_soon_threadsafe(
                    self._fail_local, batch, i, "the Kafka producer queue is full"
                )
            except KafkaException as exc:
                batch.loop.call_soon_threadsafe(self._fail_local, batch, i, str(exc))
        return batch.fut

    @staticmethod
    def _fail_local(batch: _Batch, i: int, msg: str) -> None:
        full = ErrorReason.ERROR_REASON_KAFKA_QUEUE_FULL
        batch.done(i, DeliveryError(msg, unknown_outcome=False, reason=full))

    # ---- consumers ------------------------------------------------------
    def consumer_config(self, group: str, *, earliest: bool) -> dict[str, Any]:
        """Settings of a subscription consumer."""
        return {
            **self.client_config,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest" if earliest else "latest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(500, self.session_timeout_ms // 3),
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "topic.metadata.refresh.interval.ms": 5000,
            "socket.keepalive.enable": True,
            **self.consumer_overrides,
        }

    def open_source(
        self, *, group: str, earliest: bool, events: Callable[[SourceEvent], None]
    ) -> Source:
        return _KafkaSource(
            self.consumer_config(group, earliest=earliest), asyncio.get_running_loop(), events
        )

    def _utility_consumer(self, group: str) -> Consumer:
        return Consumer(
            {
                **self.client_config,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": 50,
            }
        )

    async def read(
        self, topic: str, partition: int, start: int, end: int, *, max_records: int
    ) -> list[StoredRecord]:
        return await asyncio.to_thread(self._read_sync, topic, partition, start, end, max_records)

    def _read_sync(
        self, topic: str, partition: int, start: int, end: int, max_records: int
    ) -> list[StoredRecord]:
        c = self._utility_consumer(f"_agentmesh.reader.{self.instance_id}")
        try:
            low, high = c.get_watermark_offsets(KTP(topic, partition), timeout=5)
            end = min(end, high)
            start = max(start, low)
            out: list[StoredRecord] = []
            if start >= end:
                return out
            c.assign([KTP(topic, partition, start)])
            deadline = time.monotonic() + 15
            while len(out) < max_records and time.monotonic() < deadline:
                for m in _fetch(c, min(500, max_records - len(out)), 0.2):
                    if m.error():
                        continue
                    rec = _to_stored(m)
                    if rec.offset >= end:
                        return out
                    out.append(rec)
                if out and out[-1].offset >= end - 1:
                    break
            return out
        except KafkaException as exc:
            raise BackendUnavailable(f"cannot read {topic}[{partition}]: {exc}") from exc
        finally:
            c.close()

    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        def run() -> tuple[int, int]:
            c = self._utility_consumer(f"_agentmesh.reader.{self.instance_id}")
            try:
                low, high = c.get_watermark_offsets(KTP(topic, partition), timeout=5)
                return int(low), int(high)
            except KafkaException as exc:
                raise BackendUnavailable(str(exc)) from exc
            finally:
                c.close()

        return await asyncio.to_thread(run)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        n = await self.partitions(topic)
        if not n:
            return {}

        def run() -> dict[int, int]:
            c = self._utility_consumer(group)
            try:
                tps = c.committed([KTP(topic, p) for p in range(n)], timeout=5)
                return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
            except KafkaException as exc:
                raise BackendUnavailable(str(exc)) from exc
            finally:
                c.close()

        return await asyncio.to_thread(run)

    async def commit_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        if not offsets:
            return

        def run() -> None:
            c = self._utility_consumer(group)
            try:
                c.commit(
                    offsets=[KTP(topic, p, off) for p, off in offsets.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:
                raise BackendUnavailable(str(exc)) from exc
            finally:
                c.close()

        await asyncio.to_thread(run)

    def open_tail(self, topic: str, on_records: Callable[[list[StoredRecord]], None]) -> Tail:
        return _KafkaTail(self, topic, on_records)


#: Most records a subscription consumer hands to the loop per fetch: one
#: cross-thread wake-up per batch, and a batch large enough to fill a
#: MessageBatch when reading a backlog.
FETCH_BATCH = 2000

#: Seconds a subscription may stay paused with its partitions still fetching.
#: A short pause (the client is behind by a batch or two) only stops handing
#: records to the loop, and librdkafka's prefetch queue
#: (queued.max.messages.kbytes) keeps what it has; librdkafka's pause() would
#: purge that queue and refetch from the broker after resume. A pause longer
#: than this becomes a real pause() so the queue does not grow without bound
#: and the consumer keeps polling (rebalance callbacks, max.poll.interval.ms).
SOFT_PAUSE_S = 1.0

#: Seconds between offset commits of one subscription. Acks move the commit
#: position one message at a time; committing each move queued one
#: OffsetCommit request per message, and at tens of thousands of acks per
#: second that backlog stalled the consumer until its group session expired.
#: Coalescing keeps one commit in flight per interval, as a Java consumer's
#: auto-commit of stored offsets does; a crash redelivers at most this much
#: of acked work (at-least-once either way).
COMMIT_INTERVAL_S = 0.05


class _KafkaSource(Source):
    """A subscription's consumer thread; commands reach it through a queue.

    Commit positions from `commit()` are coalesced per partition and sent at
    most every `COMMIT_INTERVAL_S`; the ones still pending are committed
    synchronously before their partitions are revoked and when the source closes.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        events: Callable[[SourceEvent], None],
    ) -> None:
        self._conf = conf
        self._loop = loop
        self._events = events
        self._cmds: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._paused = False
        self._resumed = threading.Event()  # set by resume(): wakes a soft-paused thread
        self._closing = threading.Event()
        self._closed = threading.Event()
        self._final: dict[TopicPartition, int] = {}
        self._highs: dict[TopicPartition, int] = {}
        self._thread = threading.Thread(target=self._run, name="bus-consumer", daemon=True)
        self._thread.start()

    def _post(self, ev: SourceEvent) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._events, ev)

    def set_topics(self, topics: Sequence[str]) -> None:
        self._cmds.put(("topics", list(topics)))

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if offsets:
            self._cmds.put(("commit", dict(offsets)))

    def high_watermark(self, tp: TopicPartition) -> int | None:
        # Read from what the consumer thread last stored: calling the consumer
        # from the loop thread can deadlock against a rebalance callback
        # (librdkafka lock held there while it waits for the GIL held here).
        return self._highs.get(tp)

    def _store_highs(self, c: Consumer) -> None:
        highs: dict[TopicPartition, int] = {}
        for p in c.assignment():
            # cached=True answers from the last fetch response: no broker round trip.
            _, high = c.get_watermark_offsets(p, cached=True)
            if high is not None and high >= 0:
                highs[(p.topic, p.partition)] = int(high)
        self._highs = highs

    def pause(self) -> None:
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self._paused = False
        self._resumed.set()

    def _run(self) -> None:
        c = Consumer(self._conf)
        subscribed = False
        next_highs = 0.0
        applied_pause = False
        # Newest commit position per partition not yet sent; positions only
        # grow within one assignment, so the latest command wins.
        pending: dict[TopicPartition, int] = {}
        next_commit = 0.0
        paused_at = 0.0

        def on_assign(consumer: Consumer, parts: list[KTP]) -> None:
            nonlocal applied_pause
            applied_pause = False  # the new assignment starts unpaused
            self._post(Assigned([(p.topic, p.partition) for p in parts]))

        def on_revoke(consumer: Consumer, parts: list[KTP]) -> None:
            # Acked work of the partitions going away is committed while this
            # member still owns them, so the next owner does not redeliver it.
            gone = {(p.topic, p.partition) for p in parts}
            flush = {tp: off for tp, off in pending.items() if tp in gone}
            for tp in flush:
                del pending[tp]
            if flush:
                self._commit(consumer, flush, asynchronous=False)
            self._post(Revoked([(p.topic, p.partition) for p in parts]))

        try:
            while not self._closing.is_set():
                while True:
                    try:
                        cmd, arg = self._cmds.get_nowait()
                    except queue.Empty:
                        break
                    if cmd == "topics":
                        if arg:
                            c.subscribe(arg, on_assign=on_assign, on_revoke=on_revoke,
                                        on_lost=on_revoke)
                            subscribed = True
                        elif subscribed:
                            c.unsubscribe()
                            subscribed = False
                    elif cmd == "commit":
                        pending.update(arg)
                if pending and time.monotonic() >= next_commit:
                    self._commit(c, pending, asynchronous=True)
                    metrics.OFFSET_COMMITS.inc()
                    pending = {}
                    next_commit = time.monotonic() + COMMIT_INTERVAL_S
                if not subscribed:
                    time.sleep(0.05)
                    continue
                if self._paused and not applied_pause:
                    # Soft pause first (see SOFT_PAUSE_S): wait for resume()
                    # without polling, so the prefetched records stay queued.
                    if not paused_at:
                        paused_at = time.monotonic()
                    if time.monotonic() - paused_at < SOFT_PAUSE_S:
                        self._resumed.wait(0.02)
                        continue
                    parts = c.assignment()
                    if parts:
                        c.pause(parts)
                    applied_pause = True
                elif not self._paused:
                    paused_at = 0.0
                    if applied_pause:
                        parts = c.assignment()
                        if parts:
                            c.resume(parts)
                        applied_pause = False
                msgs = _fetch(c, FETCH_BATCH, 0.1 if not applied_pause else 0.02)
                recs = [_to_stored(m) for m in msgs if not m.error()]
                if recs:
                    self._post(Records(recs))
                if time.monotonic() >= next_highs:
                    self._store_highs(c)
                    next_highs = time.monotonic() + 1.0
        except Exception:  # a dead consumer thread must not take the gateway down
            log.exception("consumer thread failed")
        finally:
            while True:
                try:
                    cmd, arg = self._cmds.get_nowait()
                except queue.Empty:
                    break
                if cmd == "commit":
                    pending.update(arg)
            # close()'s final positions are the subscription's last word.
            self._final = {**pending, **self._final}
            if self._final:
                self._commit(c, self._final, asynchronous=False)
            with contextlib.suppress(Exception):
                c.close()
            self._closed.set()

    @staticmethod
    def _commit(c: Consumer, offsets: dict[TopicPartition, int], *, asynchronous: bool) -> None:
        tps = [KTP(t, p, off) for (t, p), off in offsets.items()]
        try:
            if asynchronous:
                c.commit(offsets=tps, asynchronous=True)
            else:
                c.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            # Typically the partitions were revoked meanwhile: their messages
            # will be redelivered to the new owner, which is at-least-once.
            log.info("commit refused", extra={"error": str(exc)})

    async def close(self, final: dict[TopicPartition, int]) -> None:
        self._final = dict(final)
        self._closing.set()
        await asyncio.to_thread(self._closed.wait, 30)


#: Seconds a tail keeps asking for the positions of a topic whose partitions
#: have no leader yet (just created, or a leader election in progress).
TAIL_START_S = 10.0

#: Errors that mean "a partition leader is being elected": worth asking again.
_LEADER_MOVING = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
})


def _leader_moving(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException) and exc.args[0].code() in _LEADER_MOVING


class _KafkaTail(Tail):
    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        on_records: Callable[[list[StoredRecord]], None],
    ) -> None:
        self._backend = backend
        self._topic = topic
        self._on_records = on_records
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="bus-tail", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, TAIL_START_S + 5)
        if self._error is not None or not self._ready.is_set():
            raise BackendUnavailable(f"cannot tail {self._topic}: {self._error}")

    def _run(self) -> None:
        c = self._backend._utility_consumer(f"_agentmesh.tail.{self._backend.instance_id}")
        try:
            c.assign(self._end_positions(c))
            self._ready.set()
            assert self._loop is not None
            while not self._stop.is_set():
                msgs = _fetch(c, 500, 0.1)
                recs = [_to_stored(m) for m in msgs if not m.error()]
                if recs:
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._on_records, recs)
        except Exception as exc:  # reported through start() or the log
            self._error = exc
            log.exception("tail failed", extra={"topic": self._topic})
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                c.close()

    @retry(
        retry=retry_if_exception(_leader_moving),
        stop=stop_after_delay(TAIL_START_S),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        reraise=True,
    )
    def _end_positions(self, c: Consumer) -> list[KTP]:
        """Each partition of the topic at its high watermark (the tail reads
        only what is written after it starts). A topic created a moment ago
        may have no leader yet (NOT_LEADER_FOR_PARTITION,
        LEADER_NOT_AVAILABLE): asked again with backoff for up to
        TAIL_START_S."""
        meta = c.list_topics(self._topic, timeout=10).topics[self._topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        parts = sorted(meta.partitions)
        out = []
        for p in parts:
            _, high = c.get_watermark_offsets(KTP(self._topic, p), timeout=5)
            out.append(KTP(self._topic, p, high if high >= 0 else OFFSET_END))
        return out

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)


__all__ = ["OFFSET_BEGINNING", "KafkaBackend"]
