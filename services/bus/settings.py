"""Bus gateway settings: the daemon-specific options on top of ServerConfig."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from agentmesh.runtime.config import ExtraOption, ServerConfig
from agentmesh.runtime.deps import kafka_security_config

#: Daemon-specific flags; each is also `AGENTMESH_BUS_<NAME>` / `AGENTMESH_<NAME>`.
EXTRA_OPTIONS = (
    ExtraOption(
        "backend",
        "",
        "memory or kafka; empty picks kafka when --kafka-bootstrap is set, else memory",
    ),
    ExtraOption("max_payload_bytes", "1048576", "largest serialized envelope accepted, bytes"),
    ExtraOption("default_partitions", "3", "partitions of auto-created topics"),
    ExtraOption("auto_create_topics", "true", "create unknown topics on first publish"),
    ExtraOption(
        "delivery_timeout_ms", "10000", "Kafka delivery timeout; past it a write is UNKNOWN_OUTCOME"
    ),
    ExtraOption("read_ahead", "1000", "messages a subscription fetches beyond its unacked window"),
    ExtraOption("topic_refresh_ms", "2000", "how often wildcard subscriptions re-list topics"),
    ExtraOption("session_timeout_ms", "6000", "Kafka consumer group session timeout"),
    ExtraOption("instance_id", "", "writer id in provenance chain ids; empty means random"),
    ExtraOption("max_topic_labels", "50", "distinct topic label values in metrics before 'other'"),
)


@dataclass(frozen=True)
class BusSettings:
    """Resolved bus settings.

    Attributes:
        backend: "memory" or "kafka".
        kafka_bootstrap: bootstrap servers; empty on the memory backend.
        kafka_security: librdkafka security settings (SASL, TLS) for every Kafka client.
        max_payload_bytes: cap on a serialized Envelope, bytes.
        default_partitions: partitions of auto-created topics.
        auto_create_topics: create unknown topics on first publish.
        delivery_timeout_ms: librdkafka message.timeout.ms.
        read_ahead: backlog a subscription keeps beyond max_unacked, messages.
        topic_refresh_ms: wildcard re-resolution interval, ms.
        session_timeout_ms: consumer group session timeout, ms.
        instance_id: writer id used in chain ids.
        max_topic_labels: metric label cap for topics.
    """

    backend: str
    kafka_bootstrap: str = ""
    kafka_security: dict[str, str] = field(default_factory=dict)
    max_payload_bytes: int = 1_048_576
    default_partitions: int = 3
    auto_create_topics: bool = True
    delivery_timeout_ms: int = 10_000
    read_ahead: int = 1000
    topic_refresh_ms: int = 2000
    session_timeout_ms: int = 6000
    instance_id: str = ""
    max_topic_labels: int = 50

    @classmethod
    def from_config(cls, config: ServerConfig) -> BusSettings:
        """Read the extra options of `config`.

        Raises:
            ValueError: unknown backend, kafka without bootstrap servers, or a
                non-numeric number.
        """
        x = config.extra
        backend = (x.get("backend") or "").strip().lower()
        if not backend:
            backend = "kafka" if config.kafka_bootstrap else "memory"
        if backend not in ("memory", "kafka"):
            raise ValueError(f"--backend must be memory or kafka, not {backend!r}")
        if backend == "kafka" and not config.kafka_bootstrap:
            raise ValueError("--backend kafka needs --kafka-bootstrap or AGENTMESH_KAFKA_BOOTSTRAP")
        return cls(
            backend=backend,
            kafka_bootstrap=config.kafka_bootstrap if backend == "kafka" else "",
            kafka_security=kafka_security_config(config),
            max_payload_bytes=int(x.get("max_payload_bytes", "1048576")),
            default_partitions=int(x.get("default_partitions", "3")),
            auto_create_topics=x.get("auto_create_topics", "true").lower() in ("1", "true", "yes"),
            delivery_timeout_ms=int(x.get("delivery_timeout_ms", "10000")),
            read_ahead=int(x.get("read_ahead", "1000")),
            topic_refresh_ms=int(x.get("topic_refresh_ms", "2000")),
            session_timeout_ms=int(x.get("session_timeout_ms", "6000")),
            instance_id=x.get("instance_id") or uuid.uuid4().hex[:12],
            max_topic_labels=int(x.get("max_topic_labels", "50")),
        )
