"""The write path: validate, place, chain, write, and map the outcome.

Every message is checked before anything is written (a bad message never
reaches Kafka), its partition chosen, its provenance link made, and the
record enqueued. Chaining and enqueueing happen without an await in between,
so the chain order is the write order.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import (
    AgentMeshError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.bus import metrics, wire
from services.bus.backend import (
    Backend,
    BackendUnavailable,
    DeliveryError,
    TopicExists,
    WriteResult,
)
from services.bus.chain import ChainWriter
from services.bus.partitioner import Partitioner
from services.bus.settings import BusSettings
from services.bus.topics import dlq_topic, topic_error

_PRIORITIES = set(common_pb2.Priority.values())


@dataclass(slots=True)
class Written:
    """A confirmed write."""

    id: str
    position: bus_pb2.RecordPosition
    provenance: common_pb2.Provenance


class Publisher:
    """Writes envelopes through a backend.

    Args:
        backend: storage.
        settings: limits and topic defaults.
    """

    def __init__(self, backend: Backend, settings: BusSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.chain = ChainWriter(settings.instance_id)
        self.partitioner = Partitioner()
        self._creating: dict[str, asyncio.Future[int]] = {}
        # Ids are a random per-process prefix plus a counter: unique without
        # a urandom call per message.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        self._valid_topics: set[str] = set()

    # ---- validation -----------------------------------------------------
    def validate(self, env: bus_pb2.Envelope, *, prefix: str = "message") -> None:
        """Check an envelope before writing it.

        Raises:
            InvalidArgument: with one field violation per problem.
            ResourceExhausted: the serialized envelope is over max_payload_bytes.
        """
        bad: list[tuple[str, str]] = []
        if env.topic not in self._valid_topics:
            err = topic_error(env.topic)
            if err:
                bad.append((f"{prefix}.topic", err))
            elif len(self._valid_topics) < 10_000:
                self._valid_topics.add(env.topic)
        if env.priority not in _PRIORITIES:
            bad.append((f"{prefix}.priority", f"unknown priority {env.priority}"))
        if not env.HasField("payload") or env.payload.WhichOneof("kind") is None:
            bad.append((f"{prefix}.payload", "a payload (struct_value or bytes_value) is required"))
        for name in env.headers:
            if name.lower().startswith(wire.RESERVED_PREFIX):
                bad.append((f"{prefix}.headers[{name}]", "header names starting with 'am-' "
                            "are reserved for the gateway"))
            elif not name:
                bad.append((f"{prefix}.headers", "header names must not be empty"))
        if env.reply_to:
            err = topic_error(env.reply_to)
            if err:
                bad.append((f"{prefix}.reply_to", err))
        if bad:
            raise InvalidArgument(f"invalid {prefix}: " + "; ".join(f"{f}: {d}" for f, d in bad),
                                  field_violations=bad)
        size = env.ByteSize()
        if size > self.settings.max_payload_bytes:
            raise ResourceExhausted(
                f"{prefix} is {size} bytes serialized; the limit is "
                f"{self.settings.max_payload_bytes}",
                quota_subject=f"{prefix}.payload",
                quota_description=f"max {self.settings.max_payload_bytes} bytes per message",
            )

    # ---- topics ---------------------------------------------------------
    async def partitions_for(self, topic: str, *, create: bool = True) -> int:
        """Partition count of `topic`, creating it when allowed.

        Raises:
            Unavailable: the backend is down.
            InvalidArgument: unknown topic with auto-create off.
        """
        n = self.backend.cached_partitions(topic)
        if n:
            return n
        try:
            n = await self.backend.partitions(topic)
            if n:
                return n
            if not (create and self.settings.auto_create_topics):
                raise InvalidArgument(
                    f"topic {topic} does not exist", field_violations={"topic": "unknown topic"}
                )
            pending = self._creating.get(topic)
            if pending is None:
                pending = asyncio.ensure_future(self._create(topic))
                self._creating[topic] = pending
                pending.add_done_callback(lambda _: self._creating.pop(topic, None))
            return await asyncio.shield(pending)
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason="KAFKA_DOWN") from exc

    async def _create(self, topic: str) -> int:
        try:
            await self.backend.create_topic(topic, self.settings.default_partitions)
        except TopicExists:
            pass
        return await self.backend.partitions(topic) or self.settings.default_partitions

    # ---- writes ---------------------------------------------------------
    def _fill(self, env: bus_pb2.Envelope, now_ms: int) -> None:
        if not env.id:
            env.id = f"{self._id_prefix}{next(self._ids):x}"
        # Direct field sets: FromMilliseconds validates in Python on every call.
        env.publish_time.seconds, ms = divmod(now_ms, 1000)
        env.publish_time.nanos = ms * 1_000_000
        if env.priority == common_pb2.PRIORITY_UNSPECIFIED:
            env.priority = common_pb2.PRIORITY_NORMAL

    def _record(self, env: bus_pb2.Envelope, partitions: int, now_ms: int) -> wire.OutRecord:
        key = env.key.encode() if env.key else b""
        partition = self.partitioner.partition(key, partitions)
        value, h = self.chain.link(env, partition, now_ms=now_ms)
        env.provenance.hash = h
        return wire.OutRecord(
            env.topic, partition, key or None, value, wire.envelope_headers(env, hash_hex=h), now_ms
        )

    async def submit(self, envs: Sequence[bus_pb2.Envelope]) -> Pending:
        """Validate, place, chain and enqueue envelopes in order; await the
        returned Pending for the outcomes. Submitting batches one after the
        other keeps their order; waiting for them may overlap.

        Invalid envelopes get their error and are not written; the others are.
        """
        results: list[Written | AgentMeshError | None] = [None] * len(envs)
        todo: list[int] = []
        for i, env in enumerate(envs):
            try:
                self.validate(env, prefix="message")
                todo.append(i)
            except AgentMeshError as exc:
                results[i] = exc
        parts: dict[str, int] = {}
        for i in todo:
            topic = envs[i].topic
            if topic not in parts:
                try:
                    parts[topic] = await self.partitions_for(topic)
                except AgentMeshError as exc:
                    parts[topic] = 0
                    results[i] = exc
            if not parts[topic] and results[i] is None:
                results[i] = Unavailable(f"topic {topic} is unavailable", reason="KAFKA_DOWN")
        todo = [i for i in todo if results[i] is None]
        pending = Pending(self, envs, results, todo, [], None)
        if not todo:
            return pending
        now_ms = int(time.time() * 1000)
        for i in todo:
            self._fill(envs[i], now_ms)
            pending.records.append(self._record(envs[i], parts[envs[i].topic], now_ms))
        try:
            pending.fut = self.backend.write(pending.records)
        except BackendUnavailable as exc:
            for i, r in zip(todo, pending.records, strict=True):
                self.chain.reset(r.topic, r.partition)
                results[i] = Unavailable(str(exc), reason="KAFKA_DOWN")
            pending.todo = []
        return pending

    async def publish_many(
        self, envs: Sequence[bus_pb2.Envelope], *, timeout_s: float | None
    ) -> list[Written | AgentMeshError]:
        """Write envelopes in order; one result per envelope, in order.

        A record not confirmed within `timeout_s` gets UNAVAILABLE with reason
        UNKNOWN_OUTCOME, never OK.
        """
        pending = await self.submit(envs)
        return await pending.wait(timeout_s)

    @staticmethod
    def _count(
        envs: Sequence[bus_pb2.Envelope], results: list[Written | AgentMeshError | None]
    ) -> list[Written | AgentMeshError]:
        out: list[Written | AgentMeshError] = []
        sent: Counter[str] = Counter()
        for env, r in zip(envs, results, strict=True):
            assert r is not None
            if isinstance(r, Written):
                sent[env.topic] += 1
            else:
                metrics.PUBLISH_ERRORS.labels(_reason(r)).inc()
            out.append(r)
        for topic, n in sent.items():  # one label lookup per topic per batch
            metrics.SENT.labels(metrics.topic_label(topic), "publish").inc(n)
        return out

    async def publish(self, env: bus_pb2.Envelope, *, timeout_s: float | None) -> Written:
        """Write one envelope.

        Raises:
            AgentMeshError: INVALID_ARGUMENT, RESOURCE_EXHAUSTED or UNAVAILABLE.
        """
        (r,) = await self.publish_many([env], timeout_s=timeout_s)
        if isinstance(r, AgentMeshError):
            raise r
        return r

    # ---- dead letters ---------------------------------------------------
    async def dead_letter(self, rec: wire.StoredRecord, reason: str, count: int) -> None:
        """Write `rec` to "<topic>.dlq" with the reason and delivery count.

        The value and headers are kept as they are (so the envelope decodes
        unchanged); dead-letter topics are therefore not hash-chained.

        Raises:
            DeliveryError / Unavailable: the write failed.
        """
        topic = dlq_topic(rec.topic)
        n = await self.partitions_for(topic)
        keep = [(k, v) for k, v in rec.headers if not k.startswith("am-dlq-")
                and k != wire.H_DELIVERY_COUNT]
        headers = [
            *keep,
            (wire.H_DLQ_REASON, reason.encode()),
            (wire.H_DELIVERY_COUNT, str(count).encode()),
            (wire.H_DLQ_TOPIC, rec.topic.encode()),
            (wire.H_DLQ_PARTITION, str(rec.partition).encode()),
            (wire.H_DLQ_OFFSET, str(rec.offset).encode()),
        ]
        partition = self.partitioner.partition(rec.key or b"", n)
        out = wire.OutRecord(topic, partition, rec.key, rec.value or b"", headers,
                             int(time.time() * 1000))
        (res,) = await asyncio.wait_for(
            self.backend.write([out]), self.settings.delivery_timeout_ms / 1000 + 5
        )
        if isinstance(res, DeliveryError):
            raise res


@dataclass(slots=True)
class Pending:
    """Submitted envelopes waiting for their delivery reports."""

    publisher: Publisher
    envs: Sequence[bus_pb2.Envelope]
    results: list[Written | AgentMeshError | None]
    todo: list[int]
    records: list[wire.OutRecord]
    fut: asyncio.Future[list[WriteResult]] | None

    async def wait(self, timeout_s: float | None) -> list[Written | AgentMeshError]:
        """The outcome of every envelope, in order.

        A record not confirmed within `timeout_s` gets UNAVAILABLE with
        reason UNKNOWN_OUTCOME.
        """
        chain = self.publisher.chain
        if self.todo and self.fut is not None:
            start = time.perf_counter()
            try:
                outcomes = await asyncio.wait_for(asyncio.shield(self.fut), timeout_s)
            except TimeoutError:
                for i, r in zip(self.todo, self.records, strict=True):
                    chain.reset(r.topic, r.partition)
                    self.results[i] = _unknown("the write was not confirmed before the deadline")
            else:
                metrics.LATENCY.labels("publish").observe((time.perf_counter() - start) * 1000)
                for i, r, out in zip(self.todo, self.records, outcomes, strict=True):
                    if isinstance(out, DeliveryError):
                        chain.reset(r.topic, r.partition)
                        self.results[i] = _delivery_error(out)
                    else:
                        env = self.envs[i]
                        self.results[i] = Written(
                            env.id,
                            bus_pb2.RecordPosition(
                                topic=r.topic, partition=r.partition, offset=out
                            ),
                            env.provenance,
                        )
        return Publisher._count(self.envs, self.results)


def _unknown(message: str) -> Unavailable:
    return Unavailable(
        message + "; it may or may not have been written: retry with the same message id",
        reason="UNKNOWN_OUTCOME",
    )


def _delivery_error(err: DeliveryError) -> AgentMeshError:
    if err.reason == "MESSAGE_TOO_LARGE":
        return ResourceExhausted(f"the broker refused the message as too large: {err}")
    if err.unknown_outcome:
        return _unknown(f"the write timed out in flight ({err})")
    return Unavailable(f"the write failed: {err}", reason=err.reason or "KAFKA_DOWN")


def _reason(err: AgentMeshError) -> str:
    if isinstance(err, Unavailable):
        return err.reason or "UNAVAILABLE"
    return err.code.name if isinstance(err.code, grpc.StatusCode) else "ERROR"
