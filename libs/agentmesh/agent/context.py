"""What an action handler learns about the call it is serving."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentmesh.runtime.context import Principal
from agentmesh.runtime.errors import DeadlineExceeded, FailedPrecondition

if TYPE_CHECKING:
    from agentmesh.agent.safety import SafetyLink
    from agentmesh.router.v1 import safety_pb2


@dataclass(frozen=True)
class ActionContext:
    """Per-call context passed to every action and compensation handler.

    Attributes:
        agent_id: id of the agent serving the call.
        action: the action (or compensation) name.
        kind: "execute" or "compensate".
        idempotency_key: the caller's stable key; "" when the call is not deduplicated.
        compensated_idempotency_key: for compensations, the idempotency key of
            the Execute being undone (fenced by the SDK); "" when none.
        attempt: attempt number, starting at 1 (0 when the caller did not set it).
        metadata: free-form call metadata from the request (e.g. "saga_id").
        deadline_monotonic: absolute deadline on the `time.monotonic()` clock,
            or None when the caller set no deadline.
        original_output: for compensations, the output of the action being
            undone when it completed; None otherwise.
        principal: the authenticated caller when auth is on, else None.
        safety: the link to the router's SafetyService when the agent has a
            `router_target`, else None (see `validate`).
    """

    agent_id: str
    action: str
    kind: str = "execute"
    idempotency_key: str = ""
    attempt: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)
    deadline_monotonic: float | None = None
    original_output: dict[str, Any] | None = None
    principal: Principal | None = None
    compensated_idempotency_key: str = ""
    safety: SafetyLink | None = field(default=None, repr=False, compare=False)

    @property
    def remaining_s(self) -> float | None:
        """Seconds left before the caller gives up (never negative), or None if unbounded."""
        if self.deadline_monotonic is None:
            return None
        return max(0.0, self.deadline_monotonic - time.monotonic())

    def check_deadline(self) -> None:
        """Raise when the caller's deadline has passed, so long handlers can stop early.

        Raises:
            DeadlineExceeded: when `remaining_s` is 0.
        """
        left = self.remaining_s
        if left is not None and left <= 0.0:
            raise DeadlineExceeded(f"deadline exceeded while running {self.action!r}")

    async def validate(
        self,
        parameters: Mapping[str, Any] | None = None,
        *,
        operation_type: str = "",
        agent_id: str = "",
        metadata: Mapping[str, str] | None = None,
        raise_if_unsafe: bool = False,
    ) -> safety_pb2.ValidateOperationResponse:
        """Ask the mesh whether an operation is safe before doing it: a dry run
        of the safety rules every agent call is checked with (the router's
        SafetyService.ValidateOperation), with this agent as the sender.

            verdict = await ctx.validate({"pressure": 12.5}, operation_type="set_valve")
            if not verdict.is_safe: ...

        Args:
            parameters: the operation's parameters (the CEL `payload`).
            operation_type: what the operation does; default this call's action.
            agent_id: the system the operation would call, if any.
            metadata: string metadata (the CEL `message.metadata`).
            raise_if_unsafe: raise FailedPrecondition (SAFETY_VIOLATION)
                instead of returning an unsafe verdict.

        Returns:
            The verdict: `is_safe`, every violation, the blocking ones.

        Raises:
            FailedPrecondition: the agent has no `router_target`, or
                `raise_if_unsafe` and the operation would be blocked.
        """
        if self.safety is None:
            raise FailedPrecondition(
                "ctx.validate needs the agent's router_target (--router-target or "
                "AGENTMESH_AGENT_ROUTER_TARGET)"
            )
        return await self.safety.validate(
            operation_type or self.action,
            parameters,
            agent_id=agent_id,
            metadata=metadata,
            raise_if_unsafe=raise_if_unsafe,
        )
