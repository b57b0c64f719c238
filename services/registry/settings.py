"""Registry-specific settings: flags, environment variables and defaults.

Each option is a flag `--<name-with-dashes>` and an environment variable
`AGENTMESH_REGISTRY_<NAME>` (see agentmesh.runtime.config).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from agentmesh import catalog
from agentmesh.runtime.config import ExtraOption
from services.registry.health import HealthPolicy

#: Key prefix of everything the registry stores in Redis (the shared catalog schema).
PREFIX = catalog.PREFIX

OPTIONS = [
    ExtraOption("heartbeat_interval_ms", "30000", "default heartbeat interval of agents, ms"),
    ExtraOption(
        "deregistration_timeout_ms", "300000", "silence after which an agent is removed, ms"
    ),
    ExtraOption("sweep_interval_ms", "1000", "how often the reaper evaluates silent agents, ms"),
    ExtraOption("flap_threshold", "3", "evaluations in a row before a status changes"),
    ExtraOption("ttl_factor", "3", "heartbeat intervals of silence before health is 0"),
    ExtraOption("discovery_cache_ttl_ms", "5000", "lifetime of a cached discovery answer, ms"),
    ExtraOption("health_event_step", "0.05", "health change that emits a HEALTH_CHANGED event"),
    ExtraOption("event_retention", "100000", "events kept in the watch stream (approximate)"),
    ExtraOption("replica_id", "", "this replica's id for the reaper lease; default host-pid"),
]


@dataclass(frozen=True)
class RegistrySettings:
    """Parsed registry options.

    Attributes:
        heartbeat_interval_ms: default heartbeat interval, ms.
        deregistration_timeout_ms: silence before removal, ms.
        sweep_interval_ms: reaper period, ms.
        discovery_cache_ttl_ms: discovery cache entry lifetime, ms.
        event_retention: approximate length cap of the event stream.
        replica_id: identifies this replica in the reaper lease.
        policy: health formula and status machine tunables.
        prefix: Redis key prefix.
    """

    heartbeat_interval_ms: int = 30_000
    deregistration_timeout_ms: int = 300_000
    sweep_interval_ms: int = 1_000
    discovery_cache_ttl_ms: int = 5_000
    event_retention: int = 100_000
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    prefix: str = PREFIX

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> RegistrySettings:
        """Build from ServerConfig.extra.

        Raises:
            ValueError: when a value is not a number or out of range.
        """
        s = cls(
            heartbeat_interval_ms=int(extra.get("heartbeat_interval_ms", "30000")),
            deregistration_timeout_ms=int(extra.get("deregistration_timeout_ms", "300000")),
            sweep_interval_ms=int(extra.get("sweep_interval_ms", "1000")),
            discovery_cache_ttl_ms=int(extra.get("discovery_cache_ttl_ms", "5000")),
            event_retention=int(extra.get("event_retention", "100000")),
            replica_id=extra.get("replica_id") or f"{socket.gethostname()}-{os.getpid()}",
            policy=HealthPolicy(
                flap_threshold=int(extra.get("flap_threshold", "3")),
                ttl_factor=float(extra.get("ttl_factor", "3")),
                event_step=float(extra.get("health_event_step", "0.05")),
            ),
        )
        if min(s.heartbeat_interval_ms, s.deregistration_timeout_ms, s.sweep_interval_ms) <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if s.policy.ttl_factor <= s.policy.stale_factor:
            raise ValueError("ttl_factor must exceed the stale factor (2 intervals)")
        if s.policy.flap_threshold < 1:
            raise ValueError("flap_threshold must be at least 1")
        return s

    def lua_config(self) -> str:
        """The JSON config ARGV[2] of the Lua scripts (services/registry/lua.py)."""
        p = self.policy
        return json.dumps(
            {
                "stale_factor": p.stale_factor,
                "stale_penalty": p.stale_penalty,
                "ttl_factor": p.ttl_factor,
                "slow_response_ms": p.slow_response_ms,
                "slow_penalty": p.slow_penalty,
                "cpu_threshold": p.cpu_threshold,
                "cpu_penalty": p.cpu_penalty,
                "active_threshold": p.active_threshold,
                "inactive_threshold": p.inactive_threshold,
                "flap_threshold": p.flap_threshold,
                "event_step": p.event_step,
                "maxlen": self.event_retention,
                "dereg_ms": self.deregistration_timeout_ms,
            }
        )
