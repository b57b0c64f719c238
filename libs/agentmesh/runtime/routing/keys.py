"""Redis keys the router reads (the registry's) and writes (its own, `am:rt:`).

Registry state, read only (written by the registry; the key names are
agentmesh.catalog's, the schema is in services/registry/README.md):
    am:reg:agent:{id}       HASH endpoint, status, health, location, version, ...
    am:reg:load:{id}        HASH cpu_percent, ..., queue_size, capacity, processing_time_ms
                            (the router writes it too, from ReportLoad)
    am:reg:idx:cap:{cap}    SET of agent ids with a capability
    am:reg:idx:stype:{t}    SET of agent ids with a service type
    am:reg:idx:tag:{tag}    SET of agent ids with a tag

Router state:
    am:rt:rules             HASH rule name -> serialized RouteRule
    am:rt:safety            HASH rule name -> serialized SafetyRule
    am:rt:gen               HASH rules|safety -> change counter, polled by replicas
    am:rt:target:{id}       HASH breaker and outlier-detection state of one agent
    am:rt:targets           SET of agent ids that have a target state
    am:rt:aff:{pool}:{key}  STRING agent id bound to an affinity key (TTL)
    am:rt:rl:{identity}     HASH token bucket of one caller (TTL)
"""

from __future__ import annotations

RT = "am:rt:"

RULES = RT + "rules"
SAFETY = RT + "safety"
GEN = RT + "gen"
TARGETS = RT + "targets"


def target(agent_id: str) -> str:
    """Breaker and outlier state of one agent."""
    return f"{RT}target:{agent_id}"


def affinity(pool_key: str, key: str) -> str:
    """Affinity binding of `key` within a candidate pool."""
    return f"{RT}aff:{pool_key}:{key}"


def rate_bucket(identity: str) -> str:
    """Token bucket of one caller."""
    return f"{RT}rl:{identity}"
