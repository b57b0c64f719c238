"""Metrics of the one agent path (names from the seeds): route cache, breakers,
outlier ejection, safety violations, rate limits and agent call attempts.
Every daemon that calls agents exports them. Label values come from fixed sets
(status code names, breaker states, safety levels), so cardinality stays
bounded however many targets there are."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge

_MS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

CACHE_HITS = Counter("routing_cache_hits_total", "Route cache hits.")
CACHE_MISSES = Counter("routing_cache_misses_total", "Route cache misses.")
BREAKER_TARGETS = Gauge(
    "routing_breaker_targets",
    "Targets known to this replica in each circuit breaker state.",
    ["state"],
)
BREAKER_LONGEST_OPEN = Gauge(
    "routing_breaker_longest_open_seconds",
    "Seconds the longest-tripped circuit breaker known to this replica has stayed out of "
    "CLOSED (OPEN or HALF_OPEN without closing); 0 when every breaker is closed. "
    "One series, however many targets.",
)
EJECTED_TARGETS = Gauge("routing_ejected_targets", "Targets ejected by outlier detection now.")
INVOKE_ATTEMPTS = Counter(
    "routing_invoke_attempts_total",
    "Agent calls made on the one agent path (Invoke, ScatterGather, saga steps, "
    "swarm partitions), by gRPC code name.",
    ["code"],
)
SAFETY_VIOLATIONS = Counter(
    "safety_violations_total", "Safety rule violations, by level.", ["level"]
)
RATE_LIMITED = Counter("routing_rate_limited_total", "Calls refused by the rate limit.")
CEL_ERRORS = Counter(
    "routing_rule_eval_errors_total", "Route rule conditions that failed to evaluate."
)
PANIC = Counter("routing_panic_total", "Decisions made in panic mode.")


@functools.cache
def child(metric: Any, *label_values: str) -> Any:
    """`metric.labels(*label_values)`, looked up once per label set.

    `labels()` takes a lock and builds a key on every call; Invoke counts
    every attempt and outcome, with label values from fixed enums (status
    codes, strategies), so the children are kept.
    """
    return metric.labels(*label_values)
