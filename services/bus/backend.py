"""The storage interface both backends implement (Kafka and the in-memory log).

The gateway's semantics (hash chain, priorities, acks, DLQ) live above this
interface, so both backends behave the same; a backend only stores records,
tracks consumer groups' committed offsets and balances partitions in a group.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.server.bus.topics import TopicSpec
from agentmesh.server.bus.wire import OutRecord, StoredRecord

TopicPartition = tuple[str, int]


class DeliveryError(Exception):
    """A record was not confirmed.

    Attributes:
        unknown_outcome: True when it may still have been written (timed out
            in flight); False when it certainly was not.
        reason: the ErrorInfo reason, e.g. UNKNOWN_OUTCOME, KAFKA_ERROR,
            MESSAGE_TOO_LARGE.
    """

    def __init__(
        self, message: str, *, unknown_outcome: bool, reason: ErrorReason.ValueType
    ) -> None:
        super().__init__(message)
        self.unknown_outcome = unknown_outcome
        self.reason = reason


class BackendUnavailable(Exception):
    """The backend cannot be reached (Kafka down)."""


class TopicRejected(Exception):
    """The backend refused a topic's settings.

    Attributes:
        field: the Topic field at fault ("replication_factor", ...).
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class TopicExists(Exception):
    """CreateTopic on an existing topic."""


@dataclass(slots=True)
class Assigned:
    """Partitions now owned by a source, each with its start offset."""

    partitions: list[TopicPartition]


@dataclass(slots=True)
class Revoked:
    """Partitions a source no longer owns."""

    partitions: list[TopicPartition]


@dataclass(slots=True)
class Records:
    """Records fetched by a source, in offset order per partition."""

    records: list[StoredRecord]


SourceEvent = Assigned | Revoked | Records
#: Result of one record of a batch: its offset, or why it failed.
WriteResult = int | DeliveryError


class Source(ABC):
    """One group member's stream of records, events pushed to `events` in order."""

    @abstractmethod
    def set_topics(self, topics: Sequence[str]) -> None:
        """Subscribe to exactly these topics (the group then rebalances)."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit next-offsets for owned partitions, without waiting."""

    @abstractmethod
    def high_watermark(self, tp: TopicPartition) -> int | None:
        """The partition's next offset to be written as last seen, without I/O."""

    @abstractmethod
    def pause(self) -> None:
        """Stop fetching (the backlog is full); membership stays alive."""

    @abstractmethod
    def resume(self) -> None:
        """Fetch again."""

    @abstractmethod
    async def close(self, final: dict[TopicPartition, int]) -> None:
        """Commit `final` synchronously where still owned, then leave the group."""


class Tail(ABC):
    """Reads every new record of a topic from the moment `start` returns."""

    @abstractmethod
    async def start(self) -> None:
        """Position at the current end of every partition."""

    @abstractmethod
    async def close(self) -> None:
        """Stop reading."""


class Backend(ABC):
    """Record storage."""

    name: str = ""

    async def start(self) -> None:
        """Connect; the default does nothing."""
        return

    async def close(self) -> None:
        """Flush and disconnect; the default does nothing."""
        return

    @abstractmethod
    async def list_topics(self) -> dict[str, int]:
        """Topic name -> partition count.

        Raises:
            BackendUnavailable: the backend cannot be reached.
        """

    @abstractmethod
    def cached_partitions(self, topic: str) -> int | None:
        """Partition count from cache, without I/O; None when unknown."""

    @abstractmethod
    async def partitions(self, topic: str) -> int | None:
        """Partition count of `topic`, None when it does not exist."""

    @abstractmethod
    async def create_topic(
        self, topic: str, partitions: int, spec: TopicSpec | None = None
    ) -> TopicSpec:
        """Create a topic; `spec` gives replication and topic configs
        (the memory backend has no replicas and keeps everything).

        Returns:
            the settings the topic was created with: `spec` (or the
            backend's defaults) with what the backend filled in, such as
            Kafka's replication on a cluster (topics.cluster_replication).

        Raises:
            TopicExists: it already exists.
            TopicRejected: the backend refused the spec (which field, why).
            BackendUnavailable: the backend cannot be reached.
        """

    @abstractmethod
    def write(self, records: Sequence[OutRecord]) -> asyncio.Future[list[WriteResult]]:
        """Enqueue records in order; the future resolves once every one has
        its delivery report. Order per partition is kept.

        Raises:
            BackendUnavailable: known to be down; nothing was enqueued.
        """

    @abstractmethod
    def open_source(
        self,
        *,
        group: str,
        earliest: bool,
        events: Callable[[SourceEvent], None],
    ) -> Source:
        """A new member of consumer group `group`; `events` is called on the loop."""

    @abstractmethod
    async def read(
        self, topic: str, partition: int, start: int, end: int, *, max_records: int
    ) -> list[StoredRecord]:
        """Records with start <= offset < end, at most `max_records`."""

    @abstractmethod
    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low, high): the first retained offset and the next offset to be written."""

    @abstractmethod
    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed next-offsets of `group` per partition of `topic` (missing: none)."""

    @abstractmethod
    async def commit_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit next-offsets for `group` outside any subscription (redrive cursor)."""

    @abstractmethod
    def open_tail(self, topic: str, on_records: Callable[[list[StoredRecord]], None]) -> Tail:
        """A reader of new records of `topic`; `on_records` is called on the loop."""
