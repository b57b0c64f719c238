"""Bus gateway metrics (names from the seeds), with bounded label values.

Topic labels are capped: the first `max_topic_labels` distinct topics keep
their name, later ones are counted under "other", so a client publishing to
random topic names cannot blow up the time-series count. `type` is one of a
fixed set (publish, deliver, redeliver, dead_letter, request, reply, scatter).
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

SENT = Counter(
    "message_bus_sent_total",
    "Messages handled by the bus gateway, by topic and type "
    "(publish, deliver, redeliver, dead_letter, request, scatter, redrive).",
    ["topic", "type"],
)
LATENCY = Histogram(
    "message_bus_latency_ms",
    "Milliseconds from a publish being accepted to its delivery report (type=publish), "
    "or from publish_time to delivery to a subscriber (type=deliver).",
    ["type"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000),
)
CONNECTIONS = Gauge(
    "message_bus_connections", "Open streams on the gateway, by kind.", ["kind"]
)
CONSUMER_LAG = Gauge(
    "message_bus_consumer_lag",
    "Records not yet settled (acked or dead-lettered) behind the high watermark, summed "
    "over this gateway's subscriptions of a consumer group.",
    ["group"],
)
HOT_PATH = Gauge(
    "message_bus_hot_path_info",
    "1 for the per-record loops Subscribe runs: compiled (the Cython twin) or python.",
    ["implementation"],
)
_lags: dict[str, dict[str, int]] = {}


def set_lag(group: str, subscription_id: str, lag: int | None) -> None:
    """Record one subscription's lag (None removes it) and publish the group's sum."""
    per = _lags.setdefault(group, {})
    if lag is None:
        per.pop(subscription_id, None)
    else:
        per[subscription_id] = lag
    CONSUMER_LAG.labels(group).set(sum(per.values()))
DEAD_LETTERS = Counter(
    "message_bus_dead_letters_total", "Messages moved to a dead-letter topic.", ["topic"]
)
PUBLISH_ERRORS = Counter(
    "message_bus_publish_errors_total", "Publishes that did not return OK, by reason.", ["reason"]
)
OFFSET_COMMITS = Counter(
    "message_bus_offset_commits_total",
    "OffsetCommit requests sent for subscriptions (coalesced acks; Kafka backend).",
)


class LabelCap:
    """Maps unbounded label values onto at most `limit` values plus "other".

    Args:
        limit: distinct values kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        """The label to use for `value`."""
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return "other"


topic_label = LabelCap(50)
group_label = LabelCap(50)
