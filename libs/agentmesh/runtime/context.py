"""Per-RPC context carried in contextvars: request id, trace id, principal and
the absolute deadline, so logs and outgoing calls can see them without
threading arguments through every function."""

from __future__ import annotations

import contextvars
import os
import re
import time
from dataclasses import dataclass

#: W3C trace-context `traceparent`: version-traceid-parentid-flags.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        identity: the caller's id; for agents their agent id (`agent-...`).
        roles: granted roles; `admin` may act on any agent.
    """

    identity: str
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        """True when the caller may act on resources it does not own."""
        return "admin" in self.roles


request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)
#: Absolute deadline on the time.monotonic() clock, or None for no deadline.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "deadline", default=None
)


def new_id() -> str:
    """A random 32-hex-digit id, usable as a request id or a W3C trace id."""
    # 128 random bits straight from the OS: a W3C trace id needs no UUID
    # version bits, and uuid.uuid4() costs several times as much per RPC.
    return os.urandom(16).hex()


def trace_id_from_metadata(metadata: dict[str, str]) -> str:
    """The trace id from `traceparent` or `x-trace-id`, or a new one."""
    traceparent = metadata.get("traceparent")
    if traceparent:  # most calls carry none; skip the regex for them
        match = _TRACEPARENT.match(traceparent)
        if match:
            return match.group(1)
    return metadata.get("x-trace-id") or new_id()


def current_principal() -> Principal | None:
    """The authenticated caller of the RPC being served; None when auth is off."""
    return principal_var.get()


def remaining_s(default_s: float | None = None) -> float | None:
    """Seconds left before the current RPC's deadline, capped by `default_s`.

    Returns:
        min(remaining, default_s); `default_s` when no deadline is set; None
        when neither is set. Never negative.
    """
    deadline = deadline_var.get()
    if deadline is None:
        return default_s
    left = max(0.0, deadline - time.monotonic())
    return left if default_s is None else min(left, default_s)
