"""Router-specific settings: flags `--<name>` and env `AGENTMESH_ROUTER_<NAME>`.

The routing and guardrail tunables are the runtime's
(agentmesh.runtime.routing.settings), shared with every daemon that calls
agents; the router adds the defaults of Invoke and ScatterGather.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.runtime.config import ExtraOption
from agentmesh.runtime.routing.settings import ROUTING_HELP, RoutingSettings, options_for


@dataclass(frozen=True)
class RouterSettings(RoutingSettings):
    """The router's tunables: RoutingSettings plus these.

    Attributes:
        invoke_max_attempts: default attempts for Invoke.
        invoke_initial_backoff_ms: default first backoff for Invoke.
        invoke_max_backoff_ms: default largest backoff for Invoke.
        scatter_timeout_ms: default ScatterGather budget.
    """

    invoke_max_attempts: int = 3
    invoke_initial_backoff_ms: int = 25
    invoke_max_backoff_ms: int = 1000
    scatter_timeout_ms: int = 10000


_HELP = {
    **ROUTING_HELP,
    "invoke_max_attempts": "default Invoke attempts",
    "invoke_initial_backoff_ms": "default first Invoke backoff, ms",
    "invoke_max_backoff_ms": "default largest Invoke backoff, ms",
    "scatter_timeout_ms": "default ScatterGather timeout, ms",
}

#: The router's extra flags, with defaults taken from RouterSettings.
OPTIONS: list[ExtraOption] = options_for(RouterSettings, _HELP)
