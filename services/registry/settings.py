"""Registry settings: flags `--<name>` and env `AGENTMESH_REGISTRY_<NAME>` /
`AGENTMESH_<NAME>`, declared once (agentmesh.runtime.settings).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

from agentmesh import catalog
from agentmesh.runtime.settings import Settings, setting
from agentmesh.server.registry.health import HealthPolicy

#: Key prefix of everything the registry stores in Redis (the shared catalog schema).
PREFIX = catalog.PREFIX


@dataclass(frozen=True)
class RegistrySettings(Settings):
    """Registry settings: the flags, then what is derived from them.

    Attributes:
        heartbeat_interval_ms: default heartbeat interval, ms.
        deregistration_timeout_ms: silence before removal, ms.
        sweep_interval_ms: reaper period, ms.
        flap_threshold: evaluations in a row before a status changes.
        ttl_factor: heartbeat intervals of silence before health is 0; must
            exceed the stale factor (HealthPolicy.stale_factor, 2).
        discovery_cache_ttl_ms: discovery cache entry lifetime, ms.
        health_event_step: health change that emits a HEALTH_CHANGED event.
        event_retention: approximate length cap of the event stream.
        replica_id: identifies this replica in the reaper lease; "" becomes
            `<hostname>-<pid>`.
        policy: health formula and status machine tunables (from the flags above).
        prefix: Redis key prefix.
    """

    heartbeat_interval_ms: int = setting(
        30_000, help="default heartbeat interval of agents", unit="ms", minimum=1
    )
    deregistration_timeout_ms: int = setting(
        300_000, help="silence after which an agent is removed", unit="ms", minimum=1
    )
    sweep_interval_ms: int = setting(
        1_000, help="how often the reaper evaluates silent agents", unit="ms", minimum=1
    )
    flap_threshold: int = setting(3, help="evaluations in a row before a status changes", minimum=1)
    ttl_factor: float = setting(
        3.0, help="heartbeat intervals of silence before health is 0 (> 2)", minimum=2
    )
    discovery_cache_ttl_ms: int = setting(
        5_000, help="lifetime of a cached discovery answer", unit="ms", minimum=0
    )
    health_event_step: float = setting(
        0.05, help="health change that emits a HEALTH_CHANGED event", minimum=0, maximum=1
    )
    event_retention: int = setting(
        100_000, help="events kept in the watch stream (approximate)", unit="events", minimum=1
    )
    replica_id: str = setting("", help="this replica's id for the reaper lease; empty = host-pid")
    policy: HealthPolicy = field(init=False, repr=False)
    prefix: str = PREFIX

    def __post_init__(self) -> None:
        super().__post_init__()
        # derived, not settings: set once here, so a frozen instance stays consistent
        object.__setattr__(
            self,
            "policy",
            HealthPolicy(
                flap_threshold=self.flap_threshold,
                ttl_factor=self.ttl_factor,
                event_step=self.health_event_step,
            ),
        )
        if not self.replica_id:
            object.__setattr__(self, "replica_id", f"{socket.gethostname()}-{os.getpid()}")

    def problems(self) -> list[str]:
        """Range problems, and a ttl_factor that does not exceed the stale factor."""
        out = super().problems()
        stale = HealthPolicy.stale_factor
        if self.ttl_factor <= stale:
            out.append(f"--ttl-factor={self.ttl_factor} must exceed the stale factor ({stale})")
        return out

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

#: The settings class of this daemon (scripts/gen_settings_schema.py, tests/deploy).
SETTINGS = RegistrySettings
