"""An agent's command line: flags and `AGENTMESH_AGENT_*` environment
variables over the constructor's values, JSON logs, and `run` until SIGTERM.

    agent.run()                       # = run_agent(agent, sys.argv[1:])
    python my_agent.py --port 0 --registry-target 127.0.0.1:50053

Precedence: flag, then `AGENTMESH_AGENT_<FLAG>` (e.g. `AGENTMESH_AGENT_PORT`,
`AGENTMESH_AGENT_ID` for `--agent-id`), then what the constructor was given.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agentmesh.runtime.errors import AgentMeshError
from agentmesh.runtime.logs import configure_logging

if TYPE_CHECKING:
    from agentmesh.agent.sdk import Agent

log = logging.getLogger("agentmesh.agent")

ENV_PREFIX = "AGENTMESH_AGENT_"

#: AgentSettings fields exposed as flags, with their help text.
SETTING_FLAGS: tuple[tuple[str, str], ...] = (
    ("host", "address to bind"),
    ("port", "gRPC port (0 = any free port)"),
    ("advertise_host", "host in the registered endpoint"),
    ("metrics_port", "Prometheus port (0 = any free, -1 = off)"),
    ("registry_target", "registry host:port (empty = do not register)"),
    ("redis_url", "Redis URL for durable idempotency (empty = in memory)"),
    ("redis_password", "Redis password when not in the URL"),
    ("redis_sentinels", "host:port,... of Redis Sentinels (empty = no Sentinel)"),
    ("redis_sentinel_master", "master set name the sentinels monitor"),
    ("redis_sentinel_password", "password of the sentinels themselves"),
    ("idempotency_ttl_s", "seconds a completed result is kept"),
    ("heartbeat_interval_s", "seconds between heartbeats"),
    ("max_concurrency", "calls handled at once (0 = unlimited)"),
    ("grace_period_s", "SIGTERM drain budget, seconds"),
    ("location", "where the agent runs"),
    ("token", "bearer token for the registry"),
    ("tls_ca_file", "PEM CA for the registry connection"),
    ("tls_cert_file", "PEM server certificate"),
    ("tls_key_file", "PEM server key"),
    ("tls_client_ca_file", "PEM CA of client certificates; turns mTLS on"),
    ("auth_tokens_file", "JSON token file; turns caller auth on"),
    ("log_level", "log level"),
    ("log_format", "log format: json or text"),
)


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None:
        return default
    return type(default)(raw) if not isinstance(default, bool) else raw.lower() in ("1", "true")


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
    for name, help_ in SETTING_FLAGS:
        default = getattr(s, name)
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=type(default),
            default=_env(name, default), help=f"{help_} (default {default!r})",
        )


def apply_arguments(ns: argparse.Namespace, agent: Agent) -> None:
    """Apply what `add_arguments` parsed to `agent`."""
    agent.agent_id = ns.agent_id
    agent.capabilities = [c for c in ns.capabilities.split(",") if c]
    agent.tags = [t for t in ns.tags.split(",") if t]
    agent.version = ns.agent_version
    agent.agent_type = ns.agent_type
    values = {k: getattr(ns, k) for k in vars(agent.settings) if hasattr(ns, k)}
    agent.settings = replace(agent.settings, **values)
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
