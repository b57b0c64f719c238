"""Redis keys the router reads (the registry's) and writes (its own, `am:rt:`).

`<x>` is a placeholder; literal braces are Redis Cluster hash tags, which
decide the slot a key lives in. Every script and transaction of the router
touches keys of one slot.

Registry state, read only (written by the registry; the key names are
agentmesh.catalog's, the schema is in services/registry/README.md; all in the
catalog's slot):
    am:reg:{catalog}:agent:<id>       HASH endpoint, status, health, location, version, ...
    am:reg:{catalog}:load:<id>        HASH cpu_percent, ..., queue_size, capacity,
                                      processing_time_ms (the router writes it too,
                                      from ReportLoad)
    am:reg:{catalog}:idx:cap:<cap>    SET of agent ids with a capability
    am:reg:{catalog}:idx:stype:<t>    SET of agent ids with a service type
    am:reg:{catalog}:idx:tag:<tag>    SET of agent ids with a tag

Router state:
    am:rt:{cfg}:rules       HASH rule name -> serialized RouteRule
    am:rt:{cfg}:safety      HASH rule name -> serialized SafetyRule
    am:rt:{cfg}:gen         HASH rules|safety -> change counter, polled by replicas
                            (the three share the `{cfg}` slot: a rule and its
                            counter change in one MULTI/EXEC)
    am:rt:target:{<id>}     HASH breaker and outlier-detection state of one agent
                            (the agent's slot: the per-call outcome script
                            touches only this key)
    am:rt:targets           SET of agent ids that have a target state (added
                            after the script, when it created the state)
    am:rt:aff:<pool>:<key>  STRING agent id bound to an affinity key (TTL)
    am:rt:rl:<identity>     HASH token bucket of one caller (TTL)

SafetyService state (named breakers and rate limiters; every script touches one key):
    am:rt:cb:{<name>}       HASH named breaker: `cfg` (serialized CircuitBreaker
                            config) + the breaker fields of am:rt:target (no TTL)
    am:rt:cbs               SET of named breaker names
    am:rt:lim:{<name>}      HASH named rate limiter: `cfg` (serialized RateLimiter)
    am:rt:lims              SET of named rate limiter names
    am:rt:lb:{<name>:<key>} HASH token bucket of one key of a named limiter (TTL)
"""

from __future__ import annotations

RT = "am:rt:"

#: Rules, guardrails and their change counters share one slot (`{cfg}`).
CONFIG = RT + "{cfg}:"
RULES = CONFIG + "rules"
SAFETY = CONFIG + "safety"
GEN = CONFIG + "gen"
TARGETS = RT + "targets"


def target(agent_id: str) -> str:
    """Breaker and outlier state of one agent, in the agent's own slot."""
    return f"{RT}target:{{{agent_id}}}"


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
