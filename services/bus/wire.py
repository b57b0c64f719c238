"""The Kafka wire format: Envelope <-> record (key, value, headers).

value = serialized Envelope (provenance.hash empty), key = Envelope.key,
timestamp = publish_time, headers = the application headers as-is plus the
gateway's "am-*" headers (see the BusService comment in bus.proto and the
README). Records from ordinary producers (no "am-envelope" header) are wrapped
into an Envelope on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping
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
H_SENDER = "am-sender-id"
H_RECIPIENT = "am-recipient-id"
H_MESSAGE_TYPE = "am-message-type"
H_HASH = "am-hash"
H_DLQ_REASON = "am-dlq-reason"
H_DELIVERY_COUNT = "am-delivery-count"
H_DLQ_TOPIC = "am-dlq-source-topic"
H_DLQ_PARTITION = "am-dlq-source-partition"
H_DLQ_OFFSET = "am-dlq-source-offset"
#: A chained dead letter's original provenance (serialized Provenance, hex)
#: and the original link's hash: its own provenance is its link in the
#: "<topic>.dlq" partition's chain.
H_DLQ_PROVENANCE = "am-dlq-source-provenance"
H_DLQ_HASH = "am-dlq-source-hash"

Headers = list[tuple[str, bytes]]


#: A record to write, as a plain tuple (no per-record object on the hot path):
#: (topic, partition, key or None, value, headers, timestamp_ms CreateTime).
OutRecord = tuple[str, int, bytes | None, bytes, Headers, int]


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
_PRIORITY_B: dict[int, bytes] = {
    int(v): common_pb2.Priority.Name(v).encode() for v in common_pb2.Priority.values()
}
_MESSAGE_TYPE_B: dict[int, bytes] = {
    int(v): bus_pb2.MessageType.Name(v).encode() for v in bus_pb2.MessageType.values()
}

# ---- protobuf wire encoding for the write path ------------------------------
# The gateway appends the fields it fills (id, priority, provenance,
# publish_time) to the client's serialized Envelope as encoded bytes instead of
# setting them on the message and re-serializing it: field sets and
# serialization of upb messages cost far more from Python than concatenating
# a few bytes. A field appended after the others is valid protobuf (readers
# take the last value of a singular field); the encoding is checked against
# the protobuf runtime in tests/unit/bus. Reference: protobuf.dev/programming-guides/encoding.
#: varint(n) for n < 128, for callers that inline the common case.
SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int (protobuf wire format)."""
    if n < 0x80:
        return SMALL_VARINTS[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def len_field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: tag byte(s), varint length, data."""
    return tag + varint(len(data)) + data


def timestamp_bytes(ms: int) -> bytes:
    """A google.protobuf.Timestamp message body for `ms` since the epoch."""
    seconds, rest = divmod(ms, 1000)
    out = b"\x08" + varint(seconds) if seconds else b""
    return out + b"\x10" + varint(rest * 1_000_000) if rest else out


#: Envelope field tags (bus.proto): 1 id, 5 priority, 9 provenance, 11 publish_time.
TAG_ENV_ID = b"\x0a"
TAG_ENV_PRIORITY = b"\x28"
TAG_ENV_PROVENANCE = b"\x4a"
TAG_ENV_PUBLISH_TIME = b"\x5a"
#: Provenance field tags (common.proto): 1 chain_id, 2 sequence, 3 previous_hash, 5 create_time.
TAG_PROV_CHAIN_ID = b"\x0a"
TAG_PROV_SEQUENCE = b"\x10"
TAG_PROV_PREVIOUS_HASH = b"\x1a"
TAG_PROV_CREATE_TIME = b"\x2a"


def envelope_headers_for(
    app_headers: Mapping[str, str],
    id_b: bytes,
    priority: int,
    correlation_id: str,
    reply_to: str,
    hash_hex: bytes,
    sender_id: str = "",
    recipient_id: str = "",
    message_type: int = 0,
) -> Headers:
    """Kafka headers of an envelope record: the application headers as-is,
    then the gateway's.

    Only what a reader needs without decoding the value travels as a header
    (the chain id, sequence and previous hash are inside the value, which
    the hash covers); that keeps the per-record cost down.

    Args:
        app_headers: Envelope.headers.
        id_b: the envelope id, UTF-8.
        priority: the resolved Priority value (not UNSPECIFIED).
        correlation_id / reply_to: as in the envelope ("" when unset).
        hash_hex: the link's hash, hex ASCII.
        sender_id / recipient_id / message_type: as in the envelope ("" or 0
            when unset: no header).
    """
    h: Headers = [(k, v.encode()) for k, v in app_headers.items()] if app_headers else []
    h.append((H_ENVELOPE, _ENVELOPE_TYPE_B))
    h.append((H_ID, id_b))
    h.append((H_PRIORITY, _PRIORITY_B[priority]))
    if correlation_id:
        h.append((H_CORRELATION, correlation_id.encode()))
    if reply_to:
        h.append((H_REPLY_TO, reply_to.encode()))
    if sender_id:
        h.append((H_SENDER, sender_id.encode()))
    if recipient_id:
        h.append((H_RECIPIENT, recipient_id.encode()))
    if message_type:
        h.append((H_MESSAGE_TYPE, _MESSAGE_TYPE_B[message_type]))
    h.append((H_HASH, hash_hex))
    return h


#: Backlog class (agentmesh.runtime.priority.priority_class) by "am-priority" header value.
_CLASS_BY_PRIORITY_B = {b"PRIORITY_CRITICAL": 0, b"PRIORITY_HIGH": 1, b"PRIORITY_LOW": 3}


#: Appended to a stored Envelope value, then its 64-character "am-hash": the
#: field provenance { hash } (what delivered_envelope_bytes appends, inlined by
#: the subscription's per-record loop).
PROV_HASH64_PREFIX = TAG_ENV_PROVENANCE + b"\x42\x22\x40"
CLASS_BY_PRIORITY_B = _CLASS_BY_PRIORITY_B


def delivery_meta(headers: Headers) -> tuple[bool, int, bytes | None]:
    """What delivery needs from a record's headers, in one pass: whether the
    value is an Envelope, the backlog class of its priority (0 CRITICAL .. 3
    LOW; NORMAL when absent or unknown) and its "am-hash" (None when absent).
    The last value of a repeated header wins, as in `StoredRecord.header`
    (dict() keeps the last; it runs in C, once per delivered record)."""
    if not headers:
        return False, 2, None
    h = dict(headers)
    prio = h.get(H_PRIORITY)
    return (h.get(H_ENVELOPE) == _ENVELOPE_TYPE_B,
            _CLASS_BY_PRIORITY_B.get(prio, 2) if prio else 2, h.get(H_HASH))


def delivered_envelope_bytes(rec: StoredRecord, is_env: bool, hash_b: bytes | None) -> bytes:
    """The serialized Envelope a subscriber receives for `rec`, what
    `to_envelope(rec).SerializeToString()` would give a parser, without
    decoding the stored value: an envelope record's value passes through, with
    `provenance { hash }` appended (a repeated embedded message field merges
    into the earlier one; protobuf.dev/programming-guides/encoding, "Last
    One Wins" and merging). Records of ordinary producers are wrapped.

    The bytes are not checked here; the subscription parses each batch once.
    """
    if not is_env:
        return to_envelope(rec).SerializeToString()
    value = rec.value or b""
    if not hash_b:
        return value
    prov = b"\x22" + varint(len(hash_b)) + hash_b  # Provenance.hash = 4
    return value + TAG_ENV_PROVENANCE + varint(len(prov)) + prov


def position_bytes(topic: str, partition: int, offset: int) -> bytes:
    """A serialized RecordPosition."""
    out = len_field(b"\x0a", topic.encode())
    if partition:
        out += b"\x10" + varint(partition)
    if offset:
        out += b"\x18" + varint(offset)
    return out


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
    env.sender_id = rec.header(H_SENDER) or ""
    env.recipient_id = rec.header(H_RECIPIENT) or ""
    mt = rec.header(H_MESSAGE_TYPE)
    if mt:
        try:
            env.message_type = bus_pb2.MessageType.Value(mt)
        except ValueError:
            pass  # an ordinary producer's unknown type: EVENT, as when absent
    if rec.timestamp_ms > 0:
        env.publish_time.FromMilliseconds(rec.timestamp_ms)
    return env
