"""The compensation fence's keys, as `agentmesh.agent.v1.CompensateRequest` defines them.

A Compensate names the Execute it undoes in `compensated_idempotency_key`.
Its own `idempotency_key` stays that key plus "/compensate" on the wire, so
agents that predate the field (they only strip the suffix) keep fencing. Every
caller that sends a Compensate builds both keys with `compensate_key`, and
every agent reads the fenced key with `fenced_key`, so the convention has one
home.

    req = agent_pb2.CompensateRequest(
        action="refund",
        idempotency_key=compensate_key("sg_1/charge"),     # "sg_1/charge/compensate"
        compensated_idempotency_key="sg_1/charge",
    )
    fenced_key(req)                                          # "sg_1/charge"
"""

from __future__ import annotations

from agentmesh.agent.v1 import agent_pb2

#: `idempotency_key` of a Compensate = the compensated Execute's key + this suffix.
COMPENSATE_SUFFIX = "/compensate"


def compensate_key(execute_key: str) -> str:
    """The Compensate `idempotency_key` that undoes the Execute with `execute_key`.

    `"sg_1/charge"` → `"sg_1/charge/compensate"`; map items and loop
    iterations keep their suffix (`"sg_1/ship[2]"` → `"sg_1/ship[2]/compensate"`).
    """
    return execute_key + COMPENSATE_SUFFIX


def strip_compensate_suffix(compensate_idempotency_key: str) -> str | None:
    """The Execute key an old-style Compensate key undoes, or None without the suffix.

    `"sg_1/charge/compensate"` → `"sg_1/charge"`; `"refund-7"` → None.
    """
    key = compensate_idempotency_key
    if key.endswith(COMPENSATE_SUFFIX) and len(key) > len(COMPENSATE_SUFFIX):
        return key[: -len(COMPENSATE_SUFFIX)]
    return None


def fenced_key(request: agent_pb2.CompensateRequest) -> str | None:
    """The idempotency key of the Execute a Compensate undoes, or None.

    `compensated_idempotency_key` when set; otherwise (a caller that predates
    the field) `idempotency_key` without its "/compensate" suffix; None when
    neither names an Execute, and then nothing is fenced.
    """
    if request.compensated_idempotency_key:
        return request.compensated_idempotency_key
    return strip_compensate_suffix(request.idempotency_key)


__all__ = ["COMPENSATE_SUFFIX", "compensate_key", "fenced_key", "strip_compensate_suffix"]
