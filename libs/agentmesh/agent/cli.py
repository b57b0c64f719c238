"""An agent's command line: flags and `AGENTMESH_AGENT_*` environment
variables over the constructor's values, JSON logs, and `run` until SIGTERM.

    agent.run()                       # = run_agent(agent, sys.argv[1:])
    python my_agent.py --port 0 --registry-target 127.0.0.1:50053

Precedence: flag, then `AGENTMESH_AGENT_<FLAG>` (e.g. `AGENTMESH_AGENT_PORT`,
`AGENTMESH_AGENT_ID` for `--agent-id`), then what the constructor was given.
The AgentSettings flags come from its declaration (agentmesh.runtime.settings):
typed, range-checked, booleans as true/false, 1/0, yes/no or on/off.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from agentmesh.agent.settings import ENV_PREFIX, AgentSettings
from agentmesh.runtime.errors import AgentMeshError
from agentmesh.runtime.logs import configure_logging
from agentmesh.runtime.settings import add_flags, setting_specs, values_of

if TYPE_CHECKING:
    from agentmesh.agent.sdk import Agent

log = logging.getLogger("agentmesh.agent")


def _env(name: str, default: str) -> str:
    # identity flags (id, capabilities, ...) are plain text
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def add_arguments(parser: argparse.ArgumentParser, agent: Agent) -> None:
    """Add `--agent-id`, `--port`, `--registry-target`, ... with defaults from the
    agent's constructor, overridden by `AGENTMESH_AGENT_<FLAG>` environment variables."""
    s = agent.settings
    parser.add_argument("--agent-id", default=_env("id", agent.agent_id), help="agent id")
    parser.add_argument(
        "--capabilities", default=_env("capabilities", ",".join(agent.capabilities)),
        help="comma-separated capabilities",
    )
    parser.add_argument(
        "--tags", default=_env("tags", ",".join(agent.tags)), help="comma-separated tags"
    )
    parser.add_argument("--version", dest="agent_version", default=_env("version", agent.version))
    parser.add_argument("--agent-type", default=_env("type", agent.agent_type), help="agent kind")
    problems = add_flags(
        parser, AgentSettings, prefixes=(ENV_PREFIX,),
        defaults={spec.name: getattr(s, spec.name) for spec in setting_specs(AgentSettings)},
    )
    if problems:
        parser.error("; ".join(problems))


def apply_arguments(ns: argparse.Namespace, agent: Agent) -> None:
    """Apply what `add_arguments` parsed to `agent`."""
    agent.agent_id = ns.agent_id
    agent.capabilities = [c for c in ns.capabilities.split(",") if c]
    agent.tags = [t for t in ns.tags.split(",") if t]
    agent.version = ns.agent_version
    agent.agent_type = ns.agent_type
    try:
        agent.settings = replace(agent.settings, **values_of(AgentSettings, ns))
    except ValueError as exc:  # out of range: stop like a bad flag does
        raise SystemExit(f"agent settings: {exc}") from None
    agent.load.capacity = agent.settings.max_concurrency


def run_agent(
    agent: Agent, argv: Sequence[str] | None = None, *,
    parser: argparse.ArgumentParser | None = None,
) -> None:
    """Parse flags/env (see `add_arguments`), configure logs, serve until SIGTERM.

    Args:
        agent: the agent to serve.
        argv: arguments without the program name; None reads sys.argv.
        parser: a parser that already holds the caller's own flags; their
            values are available as `agent.args` before serving starts.

    Raises:
        SystemExit: 1 when the agent cannot start (a refused registration, a
            taken port), after one log line that says why.
    """
    parser = parser or argparse.ArgumentParser(description=f"AgentMesh agent {agent.agent_type}")
    add_arguments(parser, agent)
    agent.args = parser.parse_args(argv)
    apply_arguments(agent.args, agent)
    configure_logging(
        f"agent:{agent.agent_id}", agent.settings.log_level, log_format=agent.settings.log_format,
    )
    try:
        asyncio.run(agent.serve())
    except (AgentMeshError, OSError, ValueError) as e:
        log.error("agent failed to start", extra={"error": f"{type(e).__name__}: {e}"})
        raise SystemExit(1) from None


__all__ = ["ENV_PREFIX", "add_arguments", "apply_arguments", "run_agent"]
