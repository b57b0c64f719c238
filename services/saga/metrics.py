"""Prometheus metrics of the saga coordinator (names from the seeds).

`step_name` and `pipeline` label values are capped at MAX_STEP_LABELS and
MAX_PIPELINE_LABELS distinct names per process; later names are reported as
"_other", so definitions with generated names cannot blow up the time-series
count.

Sagas whose definition is a `pipeline` also feed the seeds' pipeline metrics:
`pipeline_executions_total{pipeline,status}`,
`pipeline_stage_duration_ms{pipeline,stage}` (first attempt to completion of
each stage's step) and `pipeline_throughput{pipeline}` (pipelines finished per
second over the last PIPELINE_WINDOW_S, computed at scrape time).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MAX_STEP_LABELS = 200
MAX_PIPELINE_LABELS = 100
#: Sliding window of pipeline_throughput, seconds.
PIPELINE_WINDOW_S = 60.0
#: Name label of pipelines started inline without a name.
INLINE_PIPELINE = "_inline"

EXECUTIONS = Counter(
    "saga_executions_total",
    "Sagas that reached a final state, by status (completed, compensated, cancelled, failed).",
    ["status"],
)
STEPS = Counter(
    "saga_steps_total",
    "Steps that finished, by step name and status (completed, failed, skipped).",
    ["step_name", "status"],
)
COMPENSATIONS = Counter(
    "saga_compensations_total", "Step compensations (per call site) that succeeded."
)
COMPENSATION_FAILURES = Counter(
    "saga_compensation_failures_total",
    "Step compensations that failed after their retries; each leaves a saga FAILED. "
    "Alert on any increase.",
)
DURATION = Histogram(
    "saga_duration_ms",
    "Time from StartSaga to the final state, milliseconds.",
    ["status"],
    buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000),
)
ACTIVE = Gauge("saga_active", "Sagas this replica is driving now (leases held).")
TAKEOVERS = Counter(
    "saga_lease_acquisitions_total",
    "Leases taken by this replica, by reason (start = first driver, recovery = "
    "the saga was free or its lease had expired).",
    ["reason"],
)

PIPELINE_EXECUTIONS = Counter(
    "pipeline_executions_total",
    "Sagas started from a pipeline definition that reached a final state, by "
    "pipeline (definition name) and status.",
    ["pipeline", "status"],
)
PIPELINE_STAGE_MS = Histogram(
    "pipeline_stage_duration_ms",
    "Time from a pipeline stage's first attempt to its completion, milliseconds.",
    ["pipeline", "stage"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000),
)


class _BoundedLabels:
    """Label values, at most `limit` distinct ones; later ones read "_other"."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < self._limit:
                self._seen.add(name)
                return name
        return "_other"


#: A bounded `step_name` label value.
step_label = _BoundedLabels(MAX_STEP_LABELS)
_pipeline_label = _BoundedLabels(MAX_PIPELINE_LABELS)


def pipeline_label(definition_name: str) -> str:
    """A bounded `pipeline` label value ("_inline" for an unnamed definition)."""
    return _pipeline_label(definition_name or INLINE_PIPELINE)


class _PipelineThroughput(Collector):
    """`pipeline_throughput{pipeline}`: pipelines finished per second over the
    last PIPELINE_WINDOW_S, computed when scraped so it falls to 0 when they stop."""

    def __init__(self) -> None:
        self._ends: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def finished(self, pipeline: str, *, now_s: float | None = None) -> None:
        """Count one finished pipeline execution (monotonic seconds)."""
        t = time.monotonic() if now_s is None else now_s
        with self._lock:
            self._ends.setdefault(pipeline, collections.deque()).append(t)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauge family, one sample per pipeline seen (expired ends dropped)."""
        fam = GaugeMetricFamily(
            "pipeline_throughput",
            f"Pipelines finished per second over the last {PIPELINE_WINDOW_S:g} s.",
            labels=["pipeline"],
        )
        cutoff = time.monotonic() - PIPELINE_WINDOW_S
        with self._lock:
            for name, ends in self._ends.items():
                while ends and ends[0] < cutoff:
                    ends.popleft()
                fam.add_metric([name], len(ends) / PIPELINE_WINDOW_S)
        yield fam


PIPELINE_THROUGHPUT = _PipelineThroughput()
REGISTRY.register(PIPELINE_THROUGHPUT)


# ---- TaskService (services/saga/tasks) -----------------------------------------------
_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)

TASK_SCHEDULED = Counter(
    "task_scheduled_total",
    "Tasks accepted by ScheduleTask (not counting idempotent repeats), by task type "
    "and priority.",
    ["type", "priority"],
)
TASK_COMPLETED = Counter(
    "task_completed_total",
    "Tasks that reached a terminal state, by task type and status (completed, failed, "
    "timeout, cancelled).",
    ["type", "status"],
)
TASK_QUEUE_DEPTH = Gauge(
    "task_queue_depth",
    "PENDING tasks queued, by priority (all replicas; sampled by each replica).",
    ["priority"],
)
TASK_WAIT = Histogram(
    "task_wait_ms",
    "Time from a task becoming due (scheduled, or its not_before) to its first start, ms.",
    buckets=_MS_BUCKETS,
)
TASK_RUN = Histogram(
    "task_run_ms", "Duration of one task attempt (its Execute call), ms.", buckets=_MS_BUCKETS
)
TASK_ACTIVE = Gauge("task_active", "Tasks this replica is driving now (leases held).")

#: A bounded `type` label value (MAX_STEP_LABELS distinct task types).
type_label = _BoundedLabels(MAX_STEP_LABELS)
