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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.agent_ids import agent_id_violation, inbox_owner, inbox_topic
from agentmesh.runtime.context import current_principal
from agentmesh.runtime.errors import (
    AgentMeshError,
    ErrorReason,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from agentmesh.server.bus import metrics, wire
from agentmesh.server.bus.backend import (
    Backend,
    BackendUnavailable,
    DeliveryError,
    TopicExists,
    WriteResult,
)
from agentmesh.server.bus.chain import ChainWriter
from agentmesh.server.bus.partitioner import Partitioner, murmur2
from agentmesh.server.bus.settings import BusSettings
from agentmesh.server.bus.state import Head, MemoryState, State
from agentmesh.server.bus.topics import dlq_topic, topic_error
from agentmesh.server.bus.tracing import end_producer_spans, inject_context, producer_spans

_PRIORITIES = set(common_pb2.Priority.values())
_MESSAGE_TYPES = set(bus_pb2.MessageType.values())
_REQUEST = bus_pb2.MESSAGE_TYPE_REQUEST
_NORMAL_FIELD = wire.TAG_ENV_PRIORITY + wire.varint(common_pb2.PRIORITY_NORMAL)
_ENVELOPE_HEADER = (wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode())
_PRIORITY_HEADERS = {
    v: (wire.H_PRIORITY, common_pb2.Priority.Name(v).encode()) for v in common_pb2.Priority.values()
}


#: The compiled write path's signature (`_intake.publish_run`): (request
#: bytes, publisher, records, ids, hashes, todo, now_ms, create_time field,
#: publish_time field) -> envelopes queued, or -1 for "decode it instead".
PublishRun = Callable[
    [bytes, "Publisher", list[Any], list[bytes], list[bytes], list[int], int, bytes, bytes], int
]


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

    def __init__(
        self, backend: Backend, settings: BusSettings, *, state: State | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.state: State = state if state is not None else MemoryState()
        self.chain = ChainWriter(settings.instance_id)
        self.partitioner = Partitioner()
        self._creating: dict[str, asyncio.Future[int]] = {}
        # Ids are a random per-process prefix plus a counter: unique without
        # a urandom call per message.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        # Topics and agent ids that passed `validate` once (bounded). The
        # compiled write path (_intake) reads these, the id source, the
        # partitioner and the chain writer's states as `_enqueue` does.
        self._valid_topics: set[str] = set()
        self._valid_ids: set[str] = set()

    # ---- validation -----------------------------------------------------
    @staticmethod
    def address(envs: Sequence[bus_pb2.Envelope]) -> None:
        """Direct addressing: a message with `recipient_id` and no topic goes
        to the recipient's inbox topic (`agents.<recipient_id>`)."""
        for env in envs:
            if not env.topic and env.recipient_id:
                env.topic = inbox_topic(env.recipient_id)

    def _agent_id_error(self, agent_id: str) -> str | None:
        if agent_id in self._valid_ids:
            return None
        err = agent_id_violation(agent_id)
        if err is None and len(self._valid_ids) < 10_000:
            self._valid_ids.add(agent_id)
        return err

    def validate(self, env: bus_pb2.Envelope, *, prefix: str = "message") -> None:
        """Check an envelope before writing it.

        Raises:
            InvalidArgument: with one field violation per problem.
            PermissionDenied: auth is on and `sender_id` is not the caller
                (nor is the caller an admin).
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
        if env.reply_to and env.reply_to not in self._valid_topics:
            err = topic_error(env.reply_to)
            if err:
                bad.append((f"{prefix}.reply_to", err))
            elif len(self._valid_topics) < 10_000:
                self._valid_topics.add(env.reply_to)
        mt = env.message_type
        if mt not in _MESSAGE_TYPES:
            bad.append((f"{prefix}.message_type", f"unknown message type {mt}"))
        elif env.reply_to and mt != _REQUEST:
            bad.append((f"{prefix}.reply_to", "only a MESSAGE_TYPE_REQUEST may carry reply_to"))
        sender = env.sender_id
        if sender and (err := self._agent_id_error(sender)):
            bad.append((f"{prefix}.sender_id", err))
        recipient = env.recipient_id
        if recipient:
            if err := self._agent_id_error(recipient):
                bad.append((f"{prefix}.recipient_id", err))
            elif env.topic != inbox_topic(recipient):
                bad.append((f"{prefix}.topic", f"must be empty or {inbox_topic(recipient)} "
                            "(the recipient's inbox) when recipient_id is set"))
        if bad:
            raise InvalidArgument(f"invalid {prefix}: " + "; ".join(f"{f}: {d}" for f, d in bad),
                                  field_violations=bad)
        principal = current_principal() if sender else None
        if principal is not None and not principal.is_admin and principal.identity != sender:
            raise PermissionDenied(
                f"{prefix}.sender_id is {sender!r} but the caller is {principal.identity!r}"
            )
        size = env.ByteSize()
        if size > self.settings.max_payload_bytes:
            raise _too_large(size, self.settings.max_payload_bytes, prefix)

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
            # An inbox is created on first use even with auto-create off.
            if not (create and (self.settings.auto_create_topics or inbox_owner(topic))):
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
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc

    async def _create(self, topic: str) -> int:
        try:
            await self.backend.create_topic(topic, self.settings.default_partitions,
                                            self.settings.topic_defaults())
        except TopicExists:
            pass
        return await self.backend.partitions(topic) or self.settings.default_partitions

    # ---- writes ---------------------------------------------------------
    async def submit(
        self, envs: Sequence[bus_pb2.Envelope], *, now_ms: int | None = None
    ) -> Pending:
        """Validate, place, chain and enqueue envelopes in order; await the
        returned Pending for the outcomes. Submitting batches one after the
        other keeps their order; waiting for them may overlap.

        Invalid envelopes get their error and are not written; the others are.
        The envelopes are not filled in (id, provenance, ... go straight into
        the encoded record); read the outcomes from the Pending. `now_ms` is
        the publish time in ms since the epoch (None: now).
        """
        n = len(envs)
        errors: list[AgentMeshError | None] = [None] * n
        inject_context(envs)  # W3C context in the headers (see bus/tracing.py)
        cached = self.backend.cached_partitions
        parts: dict[str, int] = {}
        topics = {e.topic for e in envs}
        if "" in topics:
            self.address(envs)
            topics = {e.topic for e in envs}
        for topic in topics:
            c = cached(topic)
            if not c:
                break
            parts[topic] = c
        else:
            # Every topic is known: validation runs inside the record loop.
            return self._enqueue(envs, errors, parts, checked=False, now_ms=now_ms)
        # Some topic is new: validate everything first, so a topic is only
        # looked up or created for a valid message.
        for i, env in enumerate(envs):
            try:
                self.validate(env, prefix="message")
            except AgentMeshError as exc:
                errors[i] = exc
        parts = {}
        for i, env in enumerate(envs):
            if errors[i] is not None:
                continue
            topic = env.topic
            if topic not in parts:
                try:
                    parts[topic] = await self.partitions_for(topic)
                except AgentMeshError as exc:
                    parts[topic] = 0
                    errors[i] = exc
            if not parts[topic] and errors[i] is None:
                errors[i] = Unavailable(
                    f"topic {topic} is unavailable", reason=ErrorReason.ERROR_REASON_KAFKA_DOWN
                )
        return self._enqueue(envs, errors, parts, checked=True, now_ms=now_ms)

    def _enqueue(
        self,
        envs: Sequence[bus_pb2.Envelope],
        errors: list[AgentMeshError | None],
        parts: dict[str, int],
        *,
        checked: bool,
        now_ms: int | None = None,
    ) -> Pending:
        """Encode, chain and write the envelopes without an error (no await:
        the chain order is the write order).

        This is the per-message hot path; it avoids per-message objects,
        upb field sets and re-serialization (see wire's encoding note).
        `checked` says the envelopes were validated already; otherwise each
        gets a quick check and the full `validate` only when that fails.
        """
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        ts = wire.timestamp_bytes(now_ms)
        create_field = wire.len_field(wire.TAG_PROV_CREATE_TIME, ts)
        publish_field = wire.len_field(wire.TAG_ENV_PUBLISH_TIME, ts)
        pending = Pending(self, envs, errors)
        records = pending.records
        ids = pending.ids
        hashes = pending.hashes
        todo = pending.todo
        valid = self._valid_topics
        valid_ids = self._valid_ids
        auth_on = self.auth_on()
        max_bytes = self.settings.max_payload_bytes
        id_prefix = self._id_prefix
        next_id = self._ids.__next__
        next_rr = self.partitioner.next_round_robin
        append_link = self.chain.append_link
        for i, env in enumerate(envs):
            if errors[i] is not None:
                continue
            topic = env.topic
            prio = env.priority
            hdrs = env.headers
            reply_to = env.reply_to
            sender = env.sender_id
            recipient = env.recipient_id
            mtype = env.message_type
            if not checked and (
                topic not in valid
                or prio not in _PRIORITIES
                or env.payload.WhichOneof("kind") is None
                or hdrs
                or (reply_to and (reply_to not in valid or mtype != _REQUEST))
                or (mtype and mtype not in _MESSAGE_TYPES)
                or (sender and (auth_on or sender not in valid_ids))
                or recipient
            ):
                try:
                    self.validate(env, prefix="message")
                except AgentMeshError as exc:
                    errors[i] = exc
                    continue
            # The gateway owns provenance and publish_time: drop what a client sent.
            if env.HasField("provenance"):
                env.ClearField("provenance")
            if env.HasField("publish_time"):
                env.ClearField("publish_time")
            head = env.SerializeToString(deterministic=True) if hdrs else env.SerializeToString()
            if not checked and len(head) > max_bytes:
                errors[i] = _too_large(len(head), max_bytes)
                continue
            eid = env.id
            if eid:
                idb = eid.encode()
            else:
                idb = f"{id_prefix}{next_id():x}".encode()
                head += wire.TAG_ENV_ID + wire.varint(len(idb)) + idb
            if not prio:
                prio = common_pb2.PRIORITY_NORMAL
                head += _NORMAL_FIELD
            npart = parts[topic]
            key = env.key
            kb: bytes | None
            if key:
                kb = key_b = key.encode()
                partition = (murmur2(key_b) & 0x7FFFFFFF) % npart if npart > 1 else 0
            else:
                kb = None
                partition = next_rr() % npart if npart > 1 else 0
            value, hash_hex = append_link(topic, partition, head, create_field, publish_field)
            corr = env.correlation_id
            if hdrs or corr or reply_to or sender or recipient or mtype:
                headers = wire.envelope_headers_for(
                    hdrs, idb, prio, corr, reply_to, hash_hex, sender, recipient, mtype
                )
            else:
                headers = [_ENVELOPE_HEADER, (wire.H_ID, idb), _PRIORITY_HEADERS[prio],
                           (wire.H_HASH, hash_hex)]
            records.append((topic, partition, kb, value, headers, now_ms))
            ids.append(idb)
            hashes.append(hash_hex)
            todo.append(i)
        return self._write(pending)

    def submit_encoded(
        self, data: bytes, run: PublishRun, *, now_ms: int | None = None
    ) -> Pending | None:
        """`submit` for a serialized PublishStreamRequest, through the
        compiled write path `run` (hot_path's `publish_run`, from `_intake`).

        It takes a request only when it understands every envelope of it
        and all of them are valid and their topics known (see _intake);
        then the outcome is the one `submit` would give the decoded request.

        Args:
            data: the serialized PublishStreamRequest.
            run: the compiled write path.
            now_ms: the publish time, ms since the epoch (None: now).

        Returns:
            The Pending to await, or None when the request must be decoded
            and submitted (nothing was written or changed then).
        """
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        ts = wire.timestamp_bytes(now_ms)
        pending = Pending(self, (), [])
        n = run(data, self, pending.records, pending.ids, pending.hashes, pending.todo, now_ms,
                wire.len_field(wire.TAG_PROV_CREATE_TIME, ts),
                wire.len_field(wire.TAG_ENV_PUBLISH_TIME, ts))
        if n < 0:
            return None
        pending.errors = [None] * n
        return self._write(pending)

    @staticmethod
    def auth_on() -> bool:
        """Whether the call being served is authenticated (sender ids must
        then match the caller, `validate`)."""
        return current_principal() is not None

    def _write(self, pending: Pending) -> Pending:
        """Hand a Pending's records to the backend (no await since they were
        chained: the chain order is the write order)."""
        if not pending.todo:
            return pending
        try:
            pending.fut = self.backend.write(pending.records)
        except BackendUnavailable as exc:
            for i, r in zip(pending.todo, pending.records, strict=True):
                self.chain.reset(r[0], r[1])
                pending.errors[i] = Unavailable(str(exc),
                                                reason=ErrorReason.ERROR_REASON_KAFKA_DOWN)
            pending.todo = []
        return pending

    async def publish_many(
        self, envs: Sequence[bus_pb2.Envelope], *, timeout_s: float | None
    ) -> list[Written | AgentMeshError]:
        """Write envelopes in order; one result per envelope, in order.

        A record not confirmed within `timeout_s` gets UNAVAILABLE with reason
        UNKNOWN_OUTCOME, never OK.
        """
        spans = producer_spans(envs)
        try:
            pending = await self.submit(envs)
            await pending.settle(timeout_s)
        except BaseException as exc:
            end_producer_spans(spans, [exc] * len(spans))
            raise
        out = pending.written()
        end_producer_spans(spans, out)
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

        A gateway envelope becomes the next link of the dead-letter
        partition's own hash chain (this writer's chain of "<topic>.dlq"),
        so VerifyChain checks dead-letter topics like any other: its
        provenance is replaced by that link and `am-hash` by its hash; the
        original provenance and hash travel in the am-dlq-source-provenance
        (hex of the serialized Provenance) and am-dlq-source-hash headers,
        where ListDeadLetters takes them back. Records of ordinary producers
        and undecodable values are written unchanged and unchained (their
        value is not an Envelope that could hold a link).

        Raises:
            DeliveryError / Unavailable: the write failed.
        """
        topic = dlq_topic(rec.topic)
        n = await self.partitions_for(topic)
        keep = [(k, v) for k, v in rec.headers if not k.startswith("am-dlq-")
                and k != wire.H_DELIVERY_COUNT and k != wire.H_HASH]
        headers = [
            *keep,
            (wire.H_DLQ_REASON, reason.encode()),
            (wire.H_DELIVERY_COUNT, str(count).encode()),
            (wire.H_DLQ_TOPIC, rec.topic.encode()),
            (wire.H_DLQ_PARTITION, str(rec.partition).encode()),
            (wire.H_DLQ_OFFSET, str(rec.offset).encode()),
        ]
        partition = self.partitioner.partition(rec.key or b"", n)
        now_ms = int(time.time() * 1000)
        value = rec.value or b""
        env: bus_pb2.Envelope | None = None
        if wire.is_envelope(rec):
            try:
                env = bus_pb2.Envelope.FromString(value)
            except DecodeError:
                env = None
        if env is not None:
            original = rec.header(wire.H_HASH)
            if env.HasField("provenance"):
                headers.append((wire.H_DLQ_PROVENANCE,
                                env.provenance.SerializeToString().hex().encode()))
                env.ClearField("provenance")
            if original:
                headers.append((wire.H_DLQ_HASH, original.encode()))
            create_field = wire.len_field(wire.TAG_PROV_CREATE_TIME,
                                          wire.timestamp_bytes(now_ms))
            # No await between the link and the write: the chain order is the
            # write order (as in _enqueue).
            value, hash_hex = self.chain.append_link(
                topic, partition, env.SerializeToString(deterministic=True), create_field, b"")
            headers.append((wire.H_HASH, hash_hex))
        elif original_hash := rec.header(wire.H_HASH):
            headers.append((wire.H_HASH, original_hash.encode()))  # unchanged, unchained
        out: wire.OutRecord = (topic, partition, rec.key, value, headers, now_ms)
        try:
            fut = self.backend.write([out])
        except BaseException:
            if env is not None:
                self.chain.reset(topic, partition)
            raise
        (res,) = await asyncio.wait_for(fut, self.settings.delivery_timeout_ms / 1000 + 5)
        if isinstance(res, DeliveryError):
            if env is not None:
                self.chain.reset(topic, partition)  # the link is missing from the log
            raise res
        if env is not None:
            self.note_head((topic, partition), value, res, hash_hex)

    def note_head(self, tp: tuple[str, int], value: bytes, offset: int, hash_hex: bytes) -> None:
        """Store the chain head of `tp`: the confirmed link `value` (a stored
        Envelope) at `offset`, whose hash is `hash_hex` (state.Head)."""
        prov = bus_pb2.Envelope.FromString(value).provenance
        self.state.note_head(tp, prov.chain_id, Head(prov.sequence, offset, hash_hex.decode()))


class Pending:
    """Submitted envelopes waiting for their delivery reports.

    Columns per written record k (in write order): `records[k]`, `ids[k]`
    (id bytes), `hashes[k]` (hex hash bytes), `todo[k]` (its envelope's index).
    `errors[i]` is the error of envelope i once known.
    """

    __slots__ = ("envs", "errors", "fut", "hashes", "ids", "offsets", "publisher", "records",
                 "todo")

    def __init__(
        self,
        publisher: Publisher,
        envs: Sequence[bus_pb2.Envelope],
        errors: list[AgentMeshError | None],
    ) -> None:
        self.publisher = publisher
        self.envs = envs
        self.errors = errors
        self.records: list[wire.OutRecord] = []
        self.ids: list[bytes] = []
        self.hashes: list[bytes] = []
        self.todo: list[int] = []
        self.offsets: list[WriteResult] = []
        self.fut: asyncio.Future[list[WriteResult]] | None = None

    async def settle(self, timeout_s: float | None) -> None:
        """Wait for the delivery reports, then count the outcomes in metrics.

        A record not confirmed within `timeout_s` gets UNAVAILABLE with
        reason UNKNOWN_OUTCOME (in `errors`), never OK.
        """
        chain = self.publisher.chain
        errors = self.errors
        records = self.records
        sent: Counter[str] = Counter()
        if self.todo and self.fut is not None:
            start = time.perf_counter()
            try:
                outcomes = await asyncio.wait_for(asyncio.shield(self.fut), timeout_s)
            except TimeoutError:
                for i, r in zip(self.todo, records, strict=True):
                    chain.reset(r[0], r[1])
                    errors[i] = _unknown("the write was not confirmed before the deadline")
            else:
                metrics.LATENCY.labels("publish").observe((time.perf_counter() - start) * 1000)
                self.offsets = outcomes
                # Comprehensions over the whole batch (they run in C loops);
                # failed records are the rare exception, handled after.
                failed = [k for k, out in enumerate(outcomes) if type(out) is not int]
                if failed:
                    bad = set(failed)
                    ok = [r for k, r in enumerate(records) if k not in bad]
                    last = {r[:2]: k for k, r in enumerate(records) if k not in bad}
                else:
                    ok = records
                    last = {r[:2]: k for k, r in enumerate(records)}
                sent.update([r[0] for r in ok])
                for k in failed:
                    r = records[k]
                    out = outcomes[k]
                    assert isinstance(out, DeliveryError)
                    chain.reset(r[0], r[1])
                    errors[self.todo[k]] = _delivery_error(out)
                for tp, k in last.items():  # one head per partition per batch
                    off = outcomes[k]
                    assert type(off) is int
                    self.publisher.note_head(tp, records[k][3], off, self.hashes[k])
        for topic, n in sent.items():  # one label lookup per topic per batch
            metrics.SENT.labels(metrics.topic_label(topic), "publish").inc(n)
        for err in errors:
            if err is not None:
                metrics.PUBLISH_ERRORS.labels(_reason(err)).inc()

    def written(self) -> list[Written | AgentMeshError]:
        """After `settle`: one outcome per envelope, in order."""
        out: list[Written | AgentMeshError | None] = list(self.errors)
        for k, i in enumerate(self.todo):
            if out[i] is not None:
                continue
            topic, partition, _, value, _, _ = self.records[k]
            prov = bus_pb2.Envelope.FromString(value).provenance
            prov.hash = self.hashes[k].decode()
            offset = self.offsets[k]
            assert isinstance(offset, int)
            out[i] = Written(
                self.ids[k].decode(),
                bus_pb2.RecordPosition(topic=topic, partition=partition, offset=offset),
                prov,
            )
        return out  # type: ignore[return-value]  # every slot is filled

    def response(self, encode: EncodeReports | None = None) -> bytes:
        """After `settle`: the serialized PublishStreamResponse, one report
        per envelope in order.

        OK reports are encoded as bytes by `encode` (`encode_reports` or
        its compiled twin, hot_path's `encode_reports`) instead of building
        three messages per report, and the response goes out as these bytes
        (servicer.add_to_server). Error reports go through the message API.
        """
        errors = self.errors
        slots: list[bytes] = [b""] * len(errors)
        for i, err in enumerate(errors):  # reports field (1) of PublishStreamResponse
            if err is not None:
                slots[i] = wire.len_field(b"\x0a", _error_report(err).SerializeToString())
        return (encode or encode_reports)(slots, self.records, self.offsets, self.ids,
                                          self.hashes, self.todo, errors)


#: encode_reports' signature (and its compiled twin's, `_intake.encode_reports`).
EncodeReports = Callable[
    [list[bytes], list[Any], list[Any], list[bytes], list[bytes], list[int], list[Any]], bytes
]


def encode_reports(
    slots: list[bytes],
    records: list[wire.OutRecord],
    offsets: list[WriteResult],
    ids: list[bytes],
    hashes: list[bytes],
    todo: list[int],
    errors: list[AgentMeshError | None],
) -> bytes:
    """The serialized PublishStreamResponse of a settled Pending.

    Args:
        slots: per envelope, its encoded error report (a `reports` field)
            when errors[i] is set, else b"" (filled in here for OK ones).
        records / offsets / ids / hashes / todo: the Pending's columns.
        errors: per envelope, its error or None.
    """
    prefixes: dict[tuple[str, int], bytes] = {}
    varint = wire.varint
    small = wire.SMALL_VARINTS  # lengths below 128 without a call
    for k, i in enumerate(todo):
        if errors[i] is not None:
            continue
        topic, partition = records[k][:2]
        tp = (topic, partition)
        pos = prefixes.get(tp)
        if pos is None:
            pos = wire.len_field(b"\x0a", topic.encode())
            if partition:
                pos += b"\x10" + varint(partition)
            prefixes[tp] = pos
        off = offsets[k]
        assert type(off) is int
        if off:
            pos = pos + b"\x18" + varint(off)
        idb = ids[k]
        n_id = len(idb)
        n_pos = len(pos)
        # status (empty: OK), id, position, hash (64 hex characters)
        rep = b"".join((b"\x0a\x00\x12", small[n_id] if n_id < 128 else varint(n_id), idb,
                        b"\x1a", small[n_pos] if n_pos < 128 else varint(n_pos), pos,
                        b"\x22\x40", hashes[k]))
        n_rep = len(rep)
        slots[i] = b"\x0a" + (small[n_rep] if n_rep < 128 else varint(n_rep)) + rep
    return b"".join(slots)


def _error_report(err: AgentMeshError) -> bus_pb2.DeliveryReport:
    reason = err.reason if isinstance(err, Unavailable) else ""
    fields = [f for f, _ in err.field_violations] if isinstance(err, InvalidArgument) else []
    return bus_pb2.DeliveryReport(
        status=bus_pb2.ReportStatus(
            code=err.code.value[0], message=err.message, reason=reason, invalid_fields=fields
        )
    )


def _too_large(size: int, limit: int, prefix: str = "message") -> ResourceExhausted:
    return ResourceExhausted(
        f"{prefix} is {size} bytes serialized; the limit is {limit}",
        quota_subject=f"{prefix}.payload",
        quota_description=f"max {limit} bytes per message",
    )


def _unknown(message: str) -> Unavailable:
    return Unavailable(
        message + "; it may or may not have been written: retry with the same message id",
        reason=ErrorReason.ERROR_REASON_UNKNOWN_OUTCOME,
    )


def _delivery_error(err: DeliveryError) -> AgentMeshError:
    if err.reason == ErrorReason.ERROR_REASON_MESSAGE_TOO_LARGE:
        return ResourceExhausted(f"the broker refused the message as too large: {err}")
    if err.unknown_outcome:
        return _unknown(f"the write timed out in flight ({err})")
    return Unavailable(
        f"the write failed: {err}", reason=err.reason or ErrorReason.ERROR_REASON_KAFKA_DOWN
    )


def _reason(err: AgentMeshError) -> str:
    if isinstance(err, Unavailable):
        return err.reason or "UNAVAILABLE"
    return err.code.name if isinstance(err.code, grpc.StatusCode) else "ERROR"
