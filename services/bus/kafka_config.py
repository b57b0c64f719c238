"""librdkafka pass-through settings and topic-creation configs of the gateway.

`--kafka-producer-config` and `--kafka-consumer-config` take
`key=value[,key=value...]` pairs handed to librdkafka as they are, so an
operator can tune what the named flags do not cover. Each key must be on an
allow list: keys that would break a guarantee of the gateway are refused
with the reason (acks=all and idempotence behind every publish OK, commits
only after acks, the gateway choosing partitions for its hash chains), and
so are keys owned by another flag (bootstrap, security, timeouts). Values
are checked by librdkafka itself when the clients are made at startup.

Reference: librdkafka CONFIGURATION.md (the keys and their meaning), the
Kafka topic configs (min.insync.replicas, retention.ms, cleanup.policy).
"""

from __future__ import annotations

#: Producer keys an operator may set through --kafka-producer-config.
PRODUCER_ALLOWED = frozenset({
    "batch.size", "batch.num.messages", "linger.ms", "queue.buffering.max.ms",
    "queue.buffering.max.messages", "queue.buffering.max.kbytes", "compression.type",
    "compression.codec", "compression.level", "message.max.bytes", "request.timeout.ms",
    "retry.backoff.ms", "retry.backoff.max.ms", "reconnect.backoff.ms",
    "reconnect.backoff.max.ms", "socket.send.buffer.bytes", "socket.receive.buffer.bytes",
    "socket.nagle.disable", "socket.keepalive.enable", "socket.connection.setup.timeout.ms",
    "connections.max.idle.ms", "topic.metadata.refresh.interval.ms", "metadata.max.age.ms",
    "statistics.interval.ms", "client.id", "client.rack", "broker.address.family",
})

#: Consumer keys an operator may set through --kafka-consumer-config.
CONSUMER_ALLOWED = frozenset({
    "fetch.min.bytes", "fetch.max.bytes", "fetch.wait.max.ms", "fetch.error.backoff.ms",
    "max.partition.fetch.bytes", "fetch.message.max.bytes", "queued.min.messages",
    "queued.max.messages.kbytes", "receive.message.max.bytes", "max.poll.interval.ms",
    "heartbeat.interval.ms", "partition.assignment.strategy", "group.protocol",
    "check.crcs", "isolation.level", "reconnect.backoff.ms", "reconnect.backoff.max.ms",
    "socket.send.buffer.bytes", "socket.receive.buffer.bytes", "socket.nagle.disable",
    "socket.keepalive.enable", "socket.connection.setup.timeout.ms",
    "connections.max.idle.ms", "topic.metadata.refresh.interval.ms", "metadata.max.age.ms",
    "statistics.interval.ms", "client.id", "client.rack", "broker.address.family",
})

#: Keys refused on both clients, with why: they would break a guarantee or
#: belong to another flag.
REFUSED: dict[str, str] = {
    "acks": "publishes are acknowledged by all in-sync replicas (acks=all) before OK",
    "request.required.acks": "publishes are acknowledged by all in-sync replicas "
                             "(acks=all) before OK",
    "enable.idempotence": "the producer is idempotent, so retries never duplicate or reorder",
    "enable.gapless.guarantee": "set by the gateway's idempotent producer",
    "max.in.flight.requests.per.connection": "bounded by idempotence (order per key)",
    "max.in.flight": "bounded by idempotence (order per key)",
    "retries": "idempotent delivery retries until --delivery-timeout-ms",
    "message.send.max.retries": "idempotent delivery retries until --delivery-timeout-ms",
    "message.timeout.ms": "set by --delivery-timeout-ms (the UNKNOWN_OUTCOME deadline)",
    "delivery.timeout.ms": "set by --delivery-timeout-ms (the UNKNOWN_OUTCOME deadline)",
    "transactional.id": "the gateway does not write in transactions",
    "partitioner": "the gateway picks partitions itself (one hash chain per partition)",
    "delivery.report.only.error": "every publish waits for its delivery report",
    "enable.auto.commit": "offsets are committed only after the client acks",
    "enable.auto.offset.store": "offsets are committed only after the client acks",
    "auto.commit.interval.ms": "offsets are committed only after the client acks",
    "group.id": "the subscription's consumer_group",
    "group.instance.id": "one per consumer; a shared one would fence subscriptions",
    "auto.offset.reset": "set by SubscriptionOpen.start_position",
    "enable.partition.eof": "the gateway's consumers rely on it being off",
    "session.timeout.ms": "set by --session-timeout-ms",
    "bootstrap.servers": "set by --kafka-bootstrap",
    "metadata.broker.list": "set by --kafka-bootstrap",
}

#: Prefixes refused on both clients: the security flags set them.
REFUSED_PREFIXES = ("security.", "sasl.", "ssl.")

#: Values of --kafka-compression-type (librdkafka compression.type).
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")

#: Values of --kafka-topic-cleanup-policy ("" = the broker's default).
CLEANUP_POLICIES = ("", "delete", "compact", "compact,delete")


def parse_pairs(raw: str, *, flag: str, allowed: frozenset[str]) -> dict[str, str]:
    """`key=value[,key=value...]` -> {key: value}, keys checked.

    Raises:
        ValueError: a pair without "=", a refused key (with the reason) or a
            key not on `allowed`; the message names `flag` and the key.
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{flag}: {part!r} is not key=value")
        if key in REFUSED:
            raise ValueError(f"{flag}: {key} may not be set: {REFUSED[key]}")
        if key.startswith(REFUSED_PREFIXES):
            raise ValueError(f"{flag}: {key} may not be set: use the Kafka security flags")
        if key not in allowed:
            raise ValueError(f"{flag}: {key} is not an allowed key; allowed: "
                             + ", ".join(sorted(allowed)))
        out[key] = value.strip()
    return out
