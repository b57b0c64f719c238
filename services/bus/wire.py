"""The Kafka wire format: Envelope <-> record (key, value, headers).

value = serialized Envelope (provenance.hash empty), key = Envelope.key,
timestamp = publish_time, headers = the application headers as-is plus the
gateway's "am-*" headers (see the BusService comment in bus.proto and the
README). Records from ordinary producers (no "am-envelope" header) are wrapped
into an Envelope on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2

ENVELOPE_TYPE = "agentmesh.bus.v1.Envelope"
RESERVED_PREFIX = "am-"
H_ENVELOPE = "am-envelope"
H_ID = "am-id"
H_PRIORITY = "am-priority"
H_CORRELATION = "am-correlation-id"
H_REPLY_TO = "am-reply-to"
H_HASH = "am-hash"
H_DLQ_REASON = "am-dlq-reason"
H_DELIVERY_COUNT = "am-delivery-count"
H_DLQ_TOPIC = "am-dlq-source-topic"
H_DLQ_PARTITION = "am-dlq-source-partition"
H_DLQ_OFFSET = "am-dlq-source-offset"

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class OutRecord:
    """A record to write.

    Attributes:
        topic / partition: destination.
        key: record key, None for keyless.
        value: record value bytes.
        headers: Kafka headers in order.
        timestamp_ms: CreateTime, ms since the epoch.
    """

    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int


@dataclass(slots=True)
class StoredRecord:
    """A record read back from a partition.

    Attributes:
        topic / partition / offset: its position.
        key / value / headers / timestamp_ms: as written.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        """The last value of header `name`, decoded as UTF-8, or None."""
        for k, v in reversed(self.headers):
            if k == name:
                return v.decode("utf-8", "replace") if v is not None else ""
        return None


_ENVELOPE_TYPE_B = ENVELOPE_TYPE.encode()
_PRIORITY_B = {v: common_pb2.Priority.Name(v).encode() for v in common_pb2.Priority.values()}


def envelope_headers(env: bus_pb2.Envelope, *, hash_hex: str) -> Headers:
    """Kafka headers for an envelope whose provenance is filled.

    Only what a reader needs without decoding the value travels as a header
    (the chain id, sequence and previous hash are inside the value, which
    the hash covers); that keeps the per-record cost down.
    """
    h: Headers = [(k, v.encode()) for k, v in env.headers.items()] if env.headers else []
    h.append((H_ENVELOPE, _ENVELOPE_TYPE_B))
    h.append((H_ID, env.id.encode()))
    h.append((H_PRIORITY, _PRIORITY_B[env.priority]))
    if env.correlation_id:
        h.append((H_CORRELATION, env.correlation_id.encode()))
    if env.reply_to:
        h.append((H_REPLY_TO, env.reply_to.encode()))
    h.append((H_HASH, hash_hex.encode()))
    return h


def is_envelope(rec: StoredRecord) -> bool:
    """True when the record was written by a gateway (its value is an Envelope)."""
    return rec.header(H_ENVELOPE) == ENVELOPE_TYPE


def priority_of(rec: StoredRecord) -> int:
    """The record's priority from its header, NORMAL when absent or unknown."""
    name = rec.header(H_PRIORITY)
    if name:
        try:
            return int(common_pb2.Priority.Value(name))
        except ValueError:
            pass
    return common_pb2.PRIORITY_NORMAL


def to_envelope(rec: StoredRecord) -> bus_pb2.Envelope:
    """Decode a record into an Envelope, wrapping records of ordinary producers.

    Raises:
        google.protobuf.message.DecodeError: an "am-envelope" record whose value
            is not an Envelope.
    """
    if is_envelope(rec):
        env = bus_pb2.Envelope.FromString(rec.value or b"")
        env.provenance.hash = rec.header(H_HASH) or ""
        return env
    env = bus_pb2.Envelope(
        id=f"{rec.topic}/{rec.partition}/{rec.offset}",
        topic=rec.topic,
        key=(rec.key or b"").decode("utf-8", "replace"),
        priority=priority_of(rec),  # type: ignore[arg-type]
    )
    env.payload.bytes_value = rec.value or b""
    env.payload.content_type = rec.header("content-type") or "application/octet-stream"
    for k, v in rec.headers:
        if v is not None:
            env.headers[k] = v.decode("utf-8", "replace")
    corr = rec.header(H_CORRELATION)
    if corr:
        env.correlation_id = corr
    reply_to = rec.header(H_REPLY_TO)
    if reply_to:
        env.reply_to = reply_to
    if rec.timestamp_ms > 0:
        env.publish_time.FromMilliseconds(rec.timestamp_ms)
    return env
