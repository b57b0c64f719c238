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

SafetyService state (named breakers and rate limiters; literal braces are
Redis Cluster hash tags, and every script touches one key):
    am:rt:cb:{name}         HASH named breaker: `cfg` (serialized CircuitBreaker
                            config) + the breaker fields of am:rt:target (no TTL)
    am:rt:cbs               SET of named breaker names
    am:rt:lim:{name}        HASH named rate limiter: `cfg` (serialized RateLimiter)
    am:rt:lims              SET of named rate limiter names
    am:rt:lb:{name:key}     HASH token bucket of one key of a named limiter (TTL)
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


BREAKERS = RT + "cbs"
LIMITERS = RT + "lims"


def named_breaker(name: str) -> str:
    """Configuration and state of one named circuit breaker."""
    return f"{RT}cb:{{{name}}}"


def named_limiter(name: str) -> str:
    """Configuration of one named rate limiter."""
    return f"{RT}lim:{{{name}}}"


def limiter_bucket(name: str, key: str) -> str:
    """Token bucket of `key` in a named rate limiter ("" for a shared bucket)."""
    return f"{RT}lb:{{{name}:{key}}}"
