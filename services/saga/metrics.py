"""Prometheus metrics of the saga coordinator (names from the seeds).

`step_name` label values are capped at MAX_STEP_LABELS distinct names per
process; later names are reported as "_other", so a definition with generated
step names cannot blow up the time-series count.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

MAX_STEP_LABELS = 200

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

_lock = threading.Lock()
_step_names: set[str] = set()


def step_label(name: str) -> str:
    """A bounded `step_name` label value."""
    with _lock:
        if name in _step_names:
            return name
        if len(_step_names) < MAX_STEP_LABELS:
            _step_names.add(name)
            return name
    return "_other"


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

_type_names: set[str] = set()


def type_label(name: str) -> str:
    """A bounded `type` label value (MAX_STEP_LABELS distinct task types)."""
    with _lock:
        if name in _type_names:
            return name
        if len(_type_names) < MAX_STEP_LABELS:
            _type_names.add(name)
            return name
    return "_other"
