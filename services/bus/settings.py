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
    kafka_bootstrap: str = ""
    kafka_security: dict[str, str] = field(default_factory=dict)

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
        }

#: The settings class of this daemon (scripts/gen_settings_schema.py, tests/deploy).
SETTINGS = BusSettings
