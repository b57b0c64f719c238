"""Settings of the one agent path: target choice and guardrails.

Every daemon that calls agents (router, saga coordinator, swarm engine) takes
these flags (`--<name>`, env `AGENTMESH_<DAEMON>_<NAME>` or
`AGENTMESH_<NAME>`), so the breaker and outlier thresholds can be set once for
the whole mesh (`AGENTMESH_BREAKER_OPEN_MS=...`): the state they drive lives
in Redis and is shared by every caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

from agentmesh.runtime.config import ExtraOption

_S = TypeVar("_S", bound="RoutingSettings")


@dataclass(frozen=True)
class RoutingSettings:
    """Tunables of target choice and guardrails, each with its documented default.

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
    """

    default_strategy: str = "LEAST_LOADED"
    panic_threshold: float = 0.5
    state_ttl_ms: int = 500
    route_cache_ttl_ms: int = 5000
    route_cache_size: int = 10000
    affinity_ttl_s: int = 300
    vnodes: int = 160
    breaker_failure_threshold: int = 5
    breaker_open_ms: int = 30000
    breaker_half_open_successes: int = 1
    outlier_window_ms: int = 10000
    outlier_min_requests: int = 10
    outlier_failure_rate: float = 0.5
    outlier_base_ejection_ms: int = 30000
    outlier_max_ejection_percent: float = 50.0
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 100
    max_message_bytes: int = 1048576
    safety_halt_on_critical: bool = True
    gen_poll_ms: int = 200

    @classmethod
    def from_extra(cls: type[_S], extra: Mapping[str, str]) -> _S:
        """Parse the daemon's `extra` option strings into this settings class.

        Raises:
            ValueError: when a value does not parse as its field's type.
        """
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = extra.get(f.name)
            if raw is None:
                continue
            default = getattr(cls, f.name)
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = type(default)(raw)
        return cls(**values)  # type: ignore[arg-type]


ROUTING_HELP: dict[str, str] = {
    "default_strategy": "strategy when neither request nor rule sets one",
    "panic_threshold": "healthy fraction below which all candidates are used (0 disables)",
    "state_ttl_ms": "candidate snapshot lifetime, ms",
    "route_cache_ttl_ms": "route cache entry lifetime, ms",
    "route_cache_size": "route cache entries kept",
    "affinity_ttl_s": "affinity binding lifetime, s (renewed on use)",
    "vnodes": "virtual nodes per target on the hash ring",
    "breaker_failure_threshold": "consecutive failures that open a breaker",
    "breaker_open_ms": "open interval before half-open, ms",
    "breaker_half_open_successes": "probe successes that close a breaker",
    "outlier_window_ms": "outlier detection window, ms",
    "outlier_min_requests": "calls in a window before ejection is considered",
    "outlier_failure_rate": "failure fraction that ejects a target",
    "outlier_base_ejection_ms": "base ejection time, ms (times the ejection count)",
    "outlier_max_ejection_percent": "most of a pool ejected at once, percent",
    "rate_limit_per_s": "tokens per second per caller (0 disables)",
    "rate_limit_burst": "token bucket size per caller",
    "max_message_bytes": "largest RouteMessage accepted, bytes",
    "safety_halt_on_critical": "block calls on CRITICAL safety violations",
    "gen_poll_ms": "poll interval for other replicas' changes, ms",
}


def options_for(cls: type[RoutingSettings], help_text: Mapping[str, str]) -> list[ExtraOption]:
    """The daemon flags of a settings class, defaults taken from the class.

    Args:
        cls: RoutingSettings or a subclass.
        help_text: field name -> help line, for every field of `cls`.

    Raises:
        KeyError: when a field has no help line.
    """
    out = []
    for f in fields(cls):
        default = getattr(cls, f.name)
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        out.append(ExtraOption(f.name, shown, help_text[f.name]))
    return out


#: The routing flags, for daemons that call agents but are not the router.
ROUTING_OPTIONS: list[ExtraOption] = options_for(RoutingSettings, ROUTING_HELP)
