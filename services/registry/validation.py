"""Input validation: every malformed field becomes one BadRequest field
violation, and nothing malformed reaches Redis."""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

import httpx

from agentmesh.catalog import parse_version
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.agent_ids import agent_id_violation
from agentmesh.runtime.context import current_principal
from agentmesh.runtime.errors import InvalidArgument, PermissionDenied

#: Capabilities, service types and tags become Redis key suffixes: no spaces.
LABEL = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,128}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)$")
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 3_600_000


def check_agent_id(agent_id: str, *, field: str = "agent_id") -> None:
    """Raises InvalidArgument when `agent_id` is malformed."""
    why = agent_id_violation(agent_id)
    if why:
        raise InvalidArgument(f"invalid {field}", field_violations={field: why})


def endpoint_violation(endpoint: str) -> str | None:
    """Why `endpoint` is not host:port, or None."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be host:port with a port in 1-65535"
    if not _HOST.match(host):
        return "host must be a DNS name, an IPv4 address or a bracketed IPv6 address"
    return None


def card_url_violation(url: str) -> str | None:
    """Why `url` cannot be an A2A agent card URL (absolute http(s)), or None."""
    if not url:
        return "required"
    if len(url) > 2048:
        return "at most 2048 characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
        httpx.URL(url)  # what the fetch will parse (IDNA host, characters)
    except (ValueError, httpx.InvalidURL):
        return "not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an absolute http(s) URL"
    return None


def validate_agent(agent: registry_pb2.Agent) -> None:
    """Check a RegisterAgent descriptor.

    Raises:
        InvalidArgument: with one violation per bad field (`agent.<field>`).
    """
    bad: list[tuple[str, str]] = []
    why = agent_id_violation(agent.agent_id)
    if why:
        bad.append(("agent.agent_id", why))
    if not agent.agent_type:
        bad.append(("agent.agent_type", "required"))
    elif len(agent.agent_type) > 128:
        bad.append(("agent.agent_type", "at most 128 characters"))
    if not agent.version:
        bad.append(("agent.version", "required"))
    else:
        try:
            parse_version(agent.version)
        except ValueError:
            bad.append(("agent.version", f"{agent.version!r} is not a semantic version (1.2.3)"))
    if agent.protocol == registry_pb2.AGENT_PROTOCOL_A2A:
        why = card_url_violation(agent.endpoint)
    else:
        why = endpoint_violation(agent.endpoint) if agent.endpoint else "required"
    if why:
        bad.append(("agent.endpoint", why))
    for name in ("capabilities", "service_types", "tags"):
        values = getattr(agent, name)
        if len(values) > 64:
            bad.append((f"agent.{name}", "at most 64 entries"))
        for i, v in enumerate(values):
            if not LABEL.match(v):
                bad.append((f"agent.{name}[{i}]", "1-128 characters of [A-Za-z0-9_.:/@+-]"))
    if len(agent.location) > 128:
        bad.append(("agent.location", "at most 128 characters"))
    if len(agent.metadata) > 64:
        bad.append(("agent.metadata", "at most 64 entries"))
    if agent.HasField("heartbeat_interval"):
        ms = agent.heartbeat_interval.ToMilliseconds()
        if ms and not MIN_INTERVAL_MS <= ms <= MAX_INTERVAL_MS:
            bad.append(("agent.heartbeat_interval", "must be between 100 ms and 1 h"))
    if agent.sla.min_availability and not 0.0 <= agent.sla.min_availability <= 1.0:
        bad.append(("agent.sla.min_availability", "must be in [0, 1]"))
    if bad:
        raise InvalidArgument("invalid agent descriptor", field_violations=bad)


def load_violations(load: common_pb2.LoadMetrics, *, field: str = "load") -> list[tuple[str, str]]:
    """Violations of a LoadMetrics: NaN, negative, or rates out of range."""
    bad: list[tuple[str, str]] = []
    for name in ("cpu_percent", "memory_percent", "response_time_ms", "processing_time_ms"):
        v = getattr(load, name)
        if math.isnan(v) or v < 0 or math.isinf(v):
            bad.append((f"{field}.{name}", "must be a finite non-negative number"))
    if math.isnan(load.error_rate) or not 0.0 <= load.error_rate <= 1.0:
        bad.append((f"{field}.error_rate", "must be in [0, 1]"))
    return bad


def authorize_agent(agent_id: str) -> None:
    """Allow the call when auth is off, the caller is `agent_id`, or an admin.

    Raises:
        PermissionDenied: when an authenticated caller acts on another agent.
    """
    principal = current_principal()
    if principal is None or principal.is_admin or principal.identity == agent_id:
        return
    raise PermissionDenied(
        f"{principal.identity!r} may not act on {agent_id!r}: agents act only on themselves"
    )


def authorize_identity(name: str, *, field: str) -> None:
    """Allow the call when auth is off, `name` is the caller, or the caller is admin.

    Raises:
        PermissionDenied: when an authenticated caller acts as someone else.
    """
    principal = current_principal()
    if principal is None or principal.is_admin or principal.identity == name:
        return
    raise PermissionDenied(f"{principal.identity!r} may not act as {field} {name!r}")
