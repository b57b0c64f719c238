"""Registry metrics; names from the seeds.

`registry_agent_health` keeps cardinality bounded: instead of one series per
agent (the seeds' `registry_agent_health{agent_id}`, unbounded at 10k agents)
it is a gauge of how many agents fall in each of 10 fixed health bands,
`band="0.0-0.1"` ... `band="0.9-1.0"` (1.0 counts in the top band).
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

AGENTS = Gauge("registry_agents_total", "Registered agents by status.", ["status"])
QUERIES = Counter("registry_queries_total", "Registry queries by type.", ["type"])
DISCOVERY_LATENCY = Histogram(
    "registry_discovery_latency_ms",
    "DiscoverAgents time inside the daemon, milliseconds.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250),
)
HEALTH_BANDS = [(i / 10, (i + 1) / 10) for i in range(10)]
AGENT_HEALTH = Gauge(
    "registry_agent_health", "Agents per health-score band (bounded cardinality).", ["band"]
)
#: Capability label values are bounded by this cap (the first names in sorted
#: order), not by what agents register.
MAX_CAPABILITY_LABELS = 500
CAPABILITY_HEALTHY = Gauge(
    "registry_capability_healthy_agents",
    "Agents in ACTIVE or DEGRADED status per capability; a capability whose last agent "
    "left reports 0 for an hour before its series is dropped.",
    ["capability"],
)
HEARTBEATS = Counter("registry_heartbeats_total", "Heartbeats received, by result.", ["result"])
EXPIRED = Counter("registry_expired_agents_total", "Agents deregistered by the reaper.")
DISCOVERY_CACHE = Counter(
    "registry_discovery_cache_total", "Discovery cache lookups by result.", ["result"]
)


def band_label(lo: float, hi: float) -> str:
    """"0.3-0.4" style label of a health band."""
    return f"{lo:.1f}-{hi:.1f}"


@functools.cache
def child(metric: Any, *label_values: str) -> Any:
    """`metric.labels(*label_values)`, looked up once per label set.

    `labels()` takes a lock and builds a key on every call; the per-RPC
    counters (queries, heartbeats, discovery cache) call it with a few fixed
    values, so the children are kept. Label sets stay as bounded as the
    callers' literals.
    """
    return metric.labels(*label_values)

CATALOG_RESETS = Counter(
    "registry_catalog_resets_total",
    "Times this replica found Redis's catalog reset (its epoch key gone or"
    " changed: Redis came back empty) and rebuilt its discovery mirror.",
)
