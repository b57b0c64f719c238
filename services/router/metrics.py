"""The router's own Prometheus metrics (names from the seeds); the agent path's
metrics (breakers, cache, safety, attempts) are agentmesh.runtime.routing.metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from agentmesh.runtime.routing.metrics import child

__all__ = ["child"]

_MS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

ROUTING_MESSAGES = Counter(
    "routing_messages_total",
    "Routing decisions, by strategy and status (ok or the gRPC code name).",
    ["strategy", "status"],
)
ROUTING_LATENCY = Histogram(
    "routing_latency_ms", "Time to make one routing decision, ms.", buckets=_MS_BUCKETS
)
SCATTER_GATHER_DURATION = Histogram(
    "scatter_gather_duration_ms", "Wall time of a ScatterGather, ms.", buckets=_MS_BUCKETS
)
INVOKE_DURATION = Histogram(
    "routing_invoke_duration_ms", "Wall time of an Invoke, ms.", buckets=_MS_BUCKETS
)
SAFETY_VALIDATIONS = Counter(
    "safety_validations_total",
    "SafetyService.ValidateOperation verdicts, by result (safe or unsafe).",
    ["result"],
)
BREAKER_OUTCOMES = Counter(
    "safety_breaker_outcomes_total",
    "Outcomes recorded on named circuit breakers, by result (success or failure).",
    ["result"],
)
PERMITS = Counter(
    "safety_permits_total",
    "AcquirePermit calls on named rate limiters, by result (granted or denied).",
    ["result"],
)
