"""Router settings: flags `--<name>` and env `AGENTMESH_ROUTER_<NAME>` / `AGENTMESH_<NAME>`.

The routing and guardrail tunables are the runtime's
(agentmesh.runtime.routing.settings), shared with every daemon that calls
agents; the router adds the defaults of Invoke and ScatterGather.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.runtime.routing.settings import RoutingSettings
from agentmesh.runtime.settings import setting


@dataclass(frozen=True)
class RouterSettings(RoutingSettings):
    """The router's tunables: RoutingSettings plus these.

    Attributes:
        invoke_max_attempts: default attempts for Invoke.
        invoke_initial_backoff_ms: default first backoff for Invoke.
        invoke_max_backoff_ms: default largest backoff for Invoke.
        scatter_timeout_ms: default ScatterGather budget.
    """

    invoke_max_attempts: int = setting(3, help="default Invoke attempts", minimum=1)
    invoke_initial_backoff_ms: int = setting(
        25, help="default first Invoke backoff", unit="ms", minimum=0
    )
    invoke_max_backoff_ms: int = setting(
        1000, help="default largest Invoke backoff", unit="ms", minimum=0
    )
    scatter_timeout_ms: int = setting(
        10000, help="default ScatterGather timeout", unit="ms", minimum=1
    )

#: The settings class of this daemon (scripts/gen_settings_schema.py, tests/deploy).
SETTINGS = RouterSettings
