"""Bus gateway settings: the daemon's own flags on top of ServerConfig.

Each field is a flag `--<name>` and `AGENTMESH_BUS_<NAME>` / `AGENTMESH_<NAME>`
(agentmesh.runtime.settings), including the librdkafka tuning the gateway's
producer and consumers run with.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from agentmesh.runtime.config import ServerConfig
from agentmesh.runtime.deps import kafka_security_config
from agentmesh.runtime.settings import Settings, setting
from agentmesh.server.bus.hot_path import MODES as HOT_PATH_MODES
from agentmesh.server.bus.kafka_config import (
    CLEANUP_POLICIES,
    COMPRESSION_TYPES,
    CONSUMER_ALLOWED,
    PRODUCER_ALLOWED,
    parse_pairs,
)
from agentmesh.server.bus.state import STATE_STORES
from agentmesh.server.bus.topics import TopicSpec

#: Values of --backend; empty picks kafka when --kafka-bootstrap is set.
BACKENDS = ("", "memory", "kafka")


@dataclass(frozen=True)
class BusSettings(Settings):
    """Bus settings: the flags, then what `from_config` derives from them.

    Attributes:
        backend: "memory" or "kafka" once resolved; "" (the flag's default)
            picks kafka when Kafka bootstrap servers are set.
        max_payload_bytes: cap on a serialized Envelope, bytes.
        default_partitions: partitions of auto-created topics.
        auto_create_topics: create unknown topics on first publish.
        delivery_timeout_ms: librdkafka message.timeout.ms.
        read_ahead: backlog a subscription keeps beyond max_unacked, messages.
        topic_refresh_ms: wildcard re-resolution interval, ms.
        session_timeout_ms: consumer group session timeout, ms.
        instance_id: writer id used in chain ids; "" means random (from_config).
        workers: gateway processes on the one port (services/bus/workers.py);
            worker i gets instance id `<instance_id>-w<i>` and metrics port
            `metrics_port + i`.
        max_topic_labels: metric label cap for topics.
        kafka_linger_ms: librdkafka linger.ms: how long the producer waits to
            fill a batch. 1 ms keeps publish latency low; raise it for throughput.
        kafka_batch_num_messages: librdkafka batch.num.messages.
        kafka_queue_buffering_max_messages: librdkafka
            queue.buffering.max.messages, the producer's local queue; a full
            queue fails writes with KAFKA_QUEUE_FULL.
        kafka_queue_buffering_max_kbytes: librdkafka queue.buffering.max.kbytes.
        kafka_fetch_wait_max_ms: librdkafka fetch.wait.max.ms of subscription
            consumers: the broker's longest wait for data before answering a fetch.
        kafka_compression_type: librdkafka compression.type of the producer
            (none, gzip, snappy, lz4, zstd).
        kafka_batch_size: librdkafka batch.size, the most bytes per produce batch.
        kafka_producer_config / kafka_consumer_config: librdkafka pass-through
            `key=value,...`, keys checked against kafka_config's allow lists
            (guarantee-breaking keys such as acks are refused).
        kafka_topic_replication_factor: replication factor of topics the
            gateway creates; -1 means 3 on a cluster of three or more
            brokers, else the broker's default (topics.cluster_replication).
        kafka_topic_min_insync_replicas: min.insync.replicas of created
            topics; 0 means 2 when the replication factor is 3 or more, else
            the broker's default.
        kafka_topic_retention_ms: retention.ms of created topics; 0 means the
            broker's default, -1 keeps records forever.
        kafka_topic_cleanup_policy: cleanup.policy of created topics; "" means
            the broker's default.
        state_store: "memory" or "redis": where delivery counts (exact
            max_deliveries) and chain heads (VerifyChain's truncation check)
            live (services/bus/state.py).
        state_ttl_s: expiry of a state key after its last write, seconds.
        hot_path: which per-record loops Subscribe and PublishStream run
            (services/bus/hot_path.py).
        kafka_bootstrap: bootstrap servers (from ServerConfig); empty on the memory backend.
        kafka_security: librdkafka security settings (SASL, TLS) for every Kafka client.
    """

    backend: str = setting(
        "",
        help="memory or kafka; empty picks kafka when --kafka-bootstrap is set, else memory",
        choices=BACKENDS,
    )
    max_payload_bytes: int = setting(
        1_048_576, help="largest serialized envelope accepted", unit="bytes", minimum=1
    )
    default_partitions: int = setting(3, help="partitions of auto-created topics", minimum=1)
    auto_create_topics: bool = setting(True, help="create unknown topics on first publish")
    delivery_timeout_ms: int = setting(
        10_000,
        help="Kafka delivery timeout; past it a write is UNKNOWN_OUTCOME",
        unit="ms",
        minimum=1,
    )
    read_ahead: int = setting(
        1000,
        help="messages a subscription fetches beyond its unacked window",
        unit="messages",
        minimum=1,
    )
    topic_refresh_ms: int = setting(
        2000, help="how often wildcard subscriptions re-list topics", unit="ms", minimum=1
    )
    session_timeout_ms: int = setting(
        6000, help="Kafka consumer group session timeout", unit="ms", minimum=1
    )
    instance_id: str = setting("", help="writer id in provenance chain ids; empty means random")
    workers: int = setting(
        1,
        help="gateway processes serving one port (SO_REUSEPORT), each with its own producer, "
        "consumers and chains; more than 1 needs the Kafka backend",
        minimum=1,
        maximum=64,
    )
    max_topic_labels: int = setting(
        50, help="distinct topic label values in metrics before 'other'", minimum=0
    )
    kafka_linger_ms: int = setting(
        1, help="librdkafka linger.ms of the producer", unit="ms", minimum=0, maximum=900_000
    )
    kafka_batch_num_messages: int = setting(
        10_000,
        help="librdkafka batch.num.messages of the producer",
        unit="messages",
        minimum=1,
        maximum=1_000_000,
    )
    kafka_queue_buffering_max_messages: int = setting(
        1_000_000,
        help="librdkafka queue.buffering.max.messages (producer queue; full = KAFKA_QUEUE_FULL)",
        unit="messages",
        minimum=1,
        maximum=2_147_483_647,
    )
    kafka_queue_buffering_max_kbytes: int = setting(
        1_048_576,
        help="librdkafka queue.buffering.max.kbytes of the producer",
        unit="KiB",
        minimum=1,
        maximum=2_147_483_647,
    )
    kafka_fetch_wait_max_ms: int = setting(
        100,
        help="librdkafka fetch.wait.max.ms of subscription consumers",
        unit="ms",
        minimum=0,
        maximum=300_000,
    )
    kafka_compression_type: str = setting(
        "none", help="librdkafka compression.type of the producer", choices=COMPRESSION_TYPES
    )
    kafka_batch_size: int = setting(
        1_000_000,
        help="librdkafka batch.size: most bytes per produce batch",
        unit="bytes",
        minimum=1,
        maximum=2_147_483_647,
    )
    kafka_producer_config: str = setting(
        "",
        help="librdkafka producer pass-through key=value,...; guarantee-breaking keys "
        "(acks, enable.idempotence, ...) are refused",
    )
    kafka_consumer_config: str = setting(
        "",
        help="librdkafka consumer pass-through key=value,...; keys that break "
        "ack-before-commit (enable.auto.commit, ...) are refused",
    )
    kafka_topic_replication_factor: int = setting(
        -1, help="replication factor of created topics; -1 = 3 on a cluster of 3+ brokers, "
        "else broker default",
        minimum=-1, maximum=32_767,
    )
    kafka_topic_min_insync_replicas: int = setting(
        0, help="min.insync.replicas of created topics; 0 = 2 when the replication factor "
        "is 3 or more, else broker default",
        minimum=0, maximum=32_767,
    )
    kafka_topic_retention_ms: int = setting(
        0, help="retention.ms of created topics; 0 = broker default, -1 = forever",
        unit="ms", minimum=-1,
    )
    kafka_topic_cleanup_policy: str = setting(
        "", help="cleanup.policy of created topics; empty = broker default",
        choices=CLEANUP_POLICIES,
    )
    state_store: str = setting(
        "memory",
        help="where delivery counts and chain heads live: memory (this process) or redis "
        "(AGENTMESH_REDIS_URL; exact max_deliveries across restarts, truncation checks)",
        choices=STATE_STORES,
    )
    state_ttl_s: int = setting(
        7 * 24 * 3600, help="expiry of a state store key after its last write",
        unit="s", minimum=1,
    )
    hot_path: str = setting(
        "auto",
        help="the per-record loops of Subscribe and PublishStream: compiled (Cython, "
        "`make ext`), python, or auto (compiled when built from the current sources, else python)",
        choices=HOT_PATH_MODES,
    )
    kafka_bootstrap: str = ""
    kafka_security: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Range checks, plus the pass-through keys (kafka_config.parse_pairs)."""
        out = super().problems()
        for raw, flag, allowed in (
            (self.kafka_producer_config, "--kafka-producer-config", PRODUCER_ALLOWED),
            (self.kafka_consumer_config, "--kafka-consumer-config", CONSUMER_ALLOWED),
        ):
            try:
                parse_pairs(raw, flag=flag, allowed=allowed)
            except ValueError as exc:
                out.append(str(exc))
        return out

    @classmethod
    def from_config(cls, config: ServerConfig) -> BusSettings:
        """The parsed bus flags of `config`, with the backend resolved.

        Raises:
            TypeError: `config` was not loaded with `settings=BusSettings`.
            ValueError: `--backend kafka` without bootstrap servers.
        """
        flags = config.settings_as(cls)
        backend = flags.backend.strip().lower()
        if not backend:
            backend = "kafka" if config.kafka_bootstrap else "memory"
        if backend == "kafka" and not config.kafka_bootstrap:
            raise ValueError("--backend kafka needs --kafka-bootstrap or AGENTMESH_KAFKA_BOOTSTRAP")
        return replace(
            flags,
            backend=backend,
            kafka_bootstrap=config.kafka_bootstrap if backend == "kafka" else "",
            kafka_security=kafka_security_config(config),
            instance_id=flags.instance_id or uuid.uuid4().hex[:12],
        )

    def kafka_producer_tuning(self) -> dict[str, Any]:
        """The librdkafka producer properties these settings tune."""
        return {
            "linger.ms": self.kafka_linger_ms,
            "batch.num.messages": self.kafka_batch_num_messages,
            "queue.buffering.max.messages": self.kafka_queue_buffering_max_messages,
            "queue.buffering.max.kbytes": self.kafka_queue_buffering_max_kbytes,
            "compression.type": self.kafka_compression_type,
            "batch.size": self.kafka_batch_size,
            **parse_pairs(self.kafka_producer_config, flag="--kafka-producer-config",
                          allowed=PRODUCER_ALLOWED),
        }

    def kafka_consumer_overrides(self) -> dict[str, str]:
        """The --kafka-consumer-config pass-through, checked."""
        return parse_pairs(self.kafka_consumer_config, flag="--kafka-consumer-config",
                           allowed=CONSUMER_ALLOWED)

    def topic_defaults(self) -> TopicSpec:
        """Replication and topic configs of topics the gateway creates."""
        return TopicSpec(
            replication_factor=self.kafka_topic_replication_factor,
            min_insync_replicas=self.kafka_topic_min_insync_replicas,
            retention_ms=self.kafka_topic_retention_ms,
            cleanup_policy=self.kafka_topic_cleanup_policy,
        )

#: The settings class of this daemon (scripts/gen_settings_schema.py, tests/deploy).
SETTINGS = BusSettings
