"""What the client's SafetyService helpers (`Client.breaker`, `Client.permit`,
`Client.validate`) raise and read:

    async with Client(router="127.0.0.1:50052") as c:
        async with c.breaker("scada"):       # CircuitOpen while the breaker is OPEN
            await write_setpoint()           # an exception records a failure
        await c.permit("api", key="tenant-7")   # ResourceExhausted when out of permits
        verdict = await c.validate("set_valve", {"pressure": 12.5})
"""

from __future__ import annotations

import time

from google.rpc import error_details_pb2

from agentmesh.router.v1 import safety_pb2
from agentmesh.runtime.errors import ErrorReason, ResourceExhausted, Unavailable

__all__ = ["CircuitOpen", "retry_delay_s"]


class CircuitOpen(Unavailable):
    """A named circuit breaker is OPEN: the guarded call was not made.

    UNAVAILABLE with ErrorInfo CIRCUIT_OPEN (safe to retry after the wait).

    Attributes:
        name: the breaker.
        breaker: its state when it was read (`agentmesh.router.v1.CircuitBreaker`).
        retry_after_s: seconds until it half-opens, s.
    """

    def __init__(self, breaker: safety_pb2.CircuitBreaker) -> None:
        left_s = 0.0
        if breaker.HasField("next_retry_time"):
            left_s = max(0.0, breaker.next_retry_time.ToMilliseconds() / 1000.0 - time.time())
        super().__init__(
            f"circuit breaker {breaker.name!r} is open; retry in {left_s:.3f}s",
            reason=ErrorReason.ERROR_REASON_CIRCUIT_OPEN,
            metadata={"breaker": breaker.name},
            retry_after_s=left_s,
        )
        self.name = breaker.name
        self.breaker = breaker
        self.retry_after_s = left_s


def retry_delay_s(err: ResourceExhausted) -> float | None:
    """The google.rpc.RetryInfo delay of a refusal, s; None without one."""
    info = err.detail(error_details_pb2.RetryInfo)
    if not isinstance(info, error_details_pb2.RetryInfo):
        return None
    return info.retry_delay.ToTimedelta().total_seconds()
