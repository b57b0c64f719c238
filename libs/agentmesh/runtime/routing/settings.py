"""Settings of the one agent path: target choice and guardrails.

Every daemon that calls agents (router, saga coordinator, swarm engine) takes
these flags (`--<name>`, env `AGENTMESH_<DAEMON>_<NAME>` or
`AGENTMESH_<NAME>`; declared once with agentmesh.runtime.settings), so the
breaker and outlier thresholds can be set once for the whole mesh
(`AGENTMESH_BREAKER_OPEN_MS=...`): the state they drive lives in Redis and is
shared by every caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.runtime.settings import Settings, setting


@dataclass(frozen=True)
class RoutingSettings(Settings):
    """Tunables of target choice and guardrails, each with its documented default.

    A daemon that calls agents derives its settings class from this one
    (`class SagaSettings(RoutingSettings, ...)`), so these flags are its flags.

    Attributes:
        default_strategy: strategy name used when neither the request nor a rule sets one.
        panic_threshold: healthy fraction in [0, 1] below which every candidate
            (healthy or not) is eligible, as Envoy's panic threshold; 0 disables.
        state_ttl_ms: how long a candidate snapshot read from the registry's
            Redis state is served before it is refreshed.
        route_cache_ttl_ms: lifetime of a route-cache entry (rule match and
            candidate pool for one message).
        route_cache_size: most route-cache entries kept (LRU).
        affinity_ttl_s: lifetime of an affinity binding, renewed on each use.
        vnodes: virtual nodes per target on the consistent-hash ring.
        breaker_failure_threshold: consecutive failures that open a breaker.
        breaker_open_ms: how long a breaker stays open before half-opening.
        breaker_half_open_successes: probe successes that close a half-open breaker.
        outlier_window_ms: outlier-detection counting window.
        outlier_min_requests: calls needed in a window before ejection is considered.
        outlier_failure_rate: failure fraction in a window that ejects the target.
        outlier_base_ejection_ms: ejection time, multiplied by the ejection count.
        outlier_max_ejection_percent: most of a candidate pool that may be ejected at once.
        rate_limit_per_s: tokens per second per caller identity; 0 disables rate limiting.
        rate_limit_burst: bucket size per caller identity.
        max_message_bytes: largest RouteMessage (or agent call payload) accepted.
        safety_halt_on_critical: when false CRITICAL violations are reported, not enforced.
        gen_poll_ms: how often other replicas' rule and health changes are polled.
        max_load_age_ms: load reports older than this count as neutral (no
            queue, time or errors; the declared capacity stays), so an agent
            whose reports stopped is neither avoided nor preferred for figures
            it no longer sends; 0 trusts a report however old.
    """

    default_strategy: str = setting(
        "LEAST_LOADED", help="strategy when neither request nor rule sets one"
    )
    panic_threshold: float = setting(
        0.5, help="healthy fraction below which all candidates are used (0 disables)",
        minimum=0, maximum=1,
    )
    state_ttl_ms: int = setting(500, help="candidate snapshot lifetime", unit="ms", minimum=0)
    route_cache_ttl_ms: int = setting(
        5000, help="route cache entry lifetime", unit="ms", minimum=0
    )
    route_cache_size: int = setting(10000, help="route cache entries kept", minimum=0)
    affinity_ttl_s: int = setting(
        300, help="affinity binding lifetime (renewed on use)", unit="s", minimum=1
    )
    vnodes: int = setting(160, help="virtual nodes per target on the hash ring", minimum=1)
    breaker_failure_threshold: int = setting(
        5, help="consecutive failures that open a breaker", minimum=1
    )
    breaker_open_ms: int = setting(
        30000, help="open interval before half-open", unit="ms", minimum=1
    )
    breaker_half_open_successes: int = setting(
        1, help="probe successes that close a breaker", minimum=1
    )
    outlier_window_ms: int = setting(
        10000, help="outlier detection window", unit="ms", minimum=1
    )
    outlier_min_requests: int = setting(
        10, help="calls in a window before ejection is considered", minimum=1
    )
    outlier_failure_rate: float = setting(
        0.5, help="failure fraction that ejects a target", minimum=0, maximum=1
    )
    outlier_base_ejection_ms: int = setting(
        30000, help="base ejection time (times the ejection count)", unit="ms", minimum=0
    )
    outlier_max_ejection_percent: float = setting(
        50.0, help="most of a pool ejected at once", unit="percent", minimum=0, maximum=100
    )
    rate_limit_per_s: float = setting(
        0.0, help="tokens per second per caller (0 disables)", unit="1/s", minimum=0
    )
    rate_limit_burst: int = setting(100, help="token bucket size per caller", minimum=1)
    max_message_bytes: int = setting(
        1048576, help="largest RouteMessage accepted", unit="bytes", minimum=1
    )
    safety_halt_on_critical: bool = setting(
        True, help="block calls on CRITICAL safety violations"
    )
    gen_poll_ms: int = setting(
        200, help="poll interval for other replicas' changes", unit="ms", minimum=1
    )
    max_load_age_ms: int = setting(
        30000, help="load reports older than this count as neutral (0 = never)", unit="ms",
        minimum=0,
    )
