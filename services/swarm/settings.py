"""Swarm engine settings: flags `--<name>` and env `AGENTMESH_SWARM_<NAME>` /
`AGENTMESH_<NAME>`, declared once (agentmesh.runtime.settings).

The routing and guardrail settings of the one agent path (RoutingSettings) and
the retention period (RetentionSettings) are the runtime's; the swarm engine
adds its lease, snapshot and refresh settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.runtime.retention import RetentionSettings
from agentmesh.runtime.routing.settings import RoutingSettings
from agentmesh.runtime.settings import setting


@dataclass(frozen=True)
class SwarmSettings(RoutingSettings, RetentionSettings):
    """The swarm engine's settings: routing, retention, plus these.

    Attributes:
        lease_ttl_ms: swarm lease TTL; orphaned swarms resume after it.
        snapshot_every: iterations between engine snapshots to Redis.
        scan_interval_ms: how often to look for swarms nobody drives.
        record_interval_ms: minimum time between swarm record updates.
        agent_refresh_ms: how often drivers re-read the registry's agents.
        max_watchers: Redis connections for WatchSwarm streams (one each).
    """

    lease_ttl_ms: int = setting(
        10000, help="swarm lease TTL; orphaned swarms resume after it", unit="ms", minimum=1
    )
    snapshot_every: int = setting(
        10, help="iterations between engine snapshots to Redis", unit="iterations", minimum=1
    )
    scan_interval_ms: int = setting(
        1000, help="how often to look for swarms nobody drives", unit="ms", minimum=1
    )
    record_interval_ms: int = setting(
        200, help="minimum time between swarm record updates", unit="ms", minimum=0
    )
    agent_refresh_ms: int = setting(
        1000, help="how often drivers re-read the registry's agents", unit="ms", minimum=1
    )
    max_watchers: int = setting(
        256, help="Redis connections for WatchSwarm streams (one each)", minimum=1
    )

#: The settings class of this daemon (scripts/gen_settings_schema.py, tests/deploy).
SETTINGS = SwarmSettings
