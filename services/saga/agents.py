"""Saga steps and compensations on the one agent path (agentmesh.runtime.agents).

A step names its agent by id or by selector. Either way the call goes
through the mesh's AgentClient, so a saga step meets the same guardrails as a
router Invoke: the CEL safety rules on the step's real input, the shared
breakers and outlier ejection (its outcome counts toward them), the
per-caller rate limit. A selector step is placed with the routing engine's
consistent-hash ring on the step's idempotency key, the same ring and
function the router's STRATEGY_CONSISTENT_HASH uses, so every attempt of a
step, and its compensation, reach the agent the router would choose while
the eligible set is stable (agents dedupe per key, so a retry must not hop),
whether the router daemon is up or not. When that agent's breaker opens, the
ring owner among the remaining eligible agents takes the key, as the router
would fail over; when none is left the step fails with UNAVAILABLE and
reason NO_HEALTHY_TARGET.

The saga engine handles retries itself (durably, with its own policy and
attempt numbers), so each `execute` / `compensate` here is one attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_pb2
from agentmesh.runtime.agents import AgentClient, CallOutcome, call_message
from agentmesh.runtime.errors import AgentMeshError, from_rpc_error
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.state import dict_to_struct, struct_to_dict

if TYPE_CHECKING:
    from agentmesh.server.saga.swarm_steps import SwarmStages

#: The suffix older agents recognise a compensation's idempotency key by.
COMPENSATE_SUFFIX = "/compensate"


class CallError(Exception):
    """A failed agent call.

    Attributes:
        code: gRPC status code name, e.g. "UNAVAILABLE".
        message: the error message.
        reason: the google.rpc.ErrorInfo reason, "" when none; e.g.
            "COMPENSATED" (ABORTED: the Agent SDK refuses an Execute whose key
            was already compensated) or "NO_HEALTHY_TARGET" (no eligible agent).
    """

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @classmethod
    def of(cls, e: AgentMeshError) -> CallError:
        """The CallError for a mesh error (a guardrail refusal or an agent's status)."""
        info = e.detail(error_details_pb2.ErrorInfo)
        reason = info.reason if isinstance(info, error_details_pb2.ErrorInfo) else ""
        return cls(e.code.name, e.message, reason=reason)

    @classmethod
    def of_outcome(cls, out: CallOutcome) -> CallError:
        """The CallError for a failed attempt, keeping the agent's ErrorInfo reason."""
        if out.error is not None:
            return cls.of(from_rpc_error(out.error))
        return cls(out.code.name, out.message)


class AgentCaller:
    """Runs saga steps and compensations through the mesh's AgentClient, and
    swarm steps (`Step.swarm`) on the swarm engine.

    Args:
        client: the coordinator's AgentClient (started and closed with it).
        swarms: the swarm engine client for swarm steps (see
            agentmesh.server.saga.swarm_steps), or None when swarm steps are
            refused.
    """

    def __init__(self, client: AgentClient, swarms: SwarmStages | None = None) -> None:
        self.client = client
        self.swarms = swarms

    async def close(self) -> None:
        """Stop the client and close every channel."""
        await self.client.close()
        if self.swarms is not None:
            await self.swarms.close()

    @staticmethod
    def _message(
        step: saga_pb2.Step,
        *,
        action: str,
        input: Mapping[str, Any] | None,
        route_key: str,
        metadata: Mapping[str, str],
    ) -> Any:
        by_id = step.WhichOneof("target") == "agent_id"
        return call_message(
            action=action,
            payload=dict_to_struct(dict(input)) if input is not None else None,
            agent_id=step.agent_id if by_id else "",
            selector=None if by_id else step.selector,
            routing_key=route_key,
            metadata=metadata,
        )

    async def resolve(self, step: saga_pb2.Step, *, route_key: str) -> str:
        """host:port of the agent that runs `step` for `route_key` now.

        Raises:
            CallError: UNAVAILABLE (NO_HEALTHY_TARGET) when no agent is eligible.
        """
        msg = self._message(step, action=step.action, input=None, route_key=route_key, metadata={})
        try:
            d = await self.client.pick(msg, enforce_safety=False)
        except AgentMeshError as e:
            raise CallError.of(e) from e
        return d.targets[0].endpoint

    async def execute(
        self,
        step: saga_pb2.Step,
        *,
        input: Mapping[str, Any],
        key: str,
        attempt: int,
        timeout_ms: float,
        metadata: Mapping[str, str],
    ) -> dict[str, Any]:
        """Run one attempt of the step's action; returns its output.

        Raises:
            CallError: a guardrail's refusal (FAILED_PRECONDITION for a safety
                rule, UNAVAILABLE NO_HEALTHY_TARGET, RESOURCE_EXHAUSTED) or the
                agent's status code (DEADLINE_EXCEEDED on timeout).
        """
        if step.WhichOneof("target") == "swarm":
            if self.swarms is None:
                raise CallError("FAILED_PRECONDITION", "this coordinator runs no swarm steps")
            return await self.swarms.execute(step, input=input, key=key, timeout_ms=timeout_ms)
        msg = self._message(step, action=step.action, input=input, route_key=key, metadata=metadata)
        try:
            _, out = await self.client.execute(
                msg, idempotency_key=key, attempt=attempt, timeout_s=timeout_ms / 1000.0
            )
        except AgentMeshError as e:
            raise CallError.of(e) from e
        if out.response is None:
            raise CallError.of_outcome(out)
        return struct_to_dict(out.response.output)

    async def compensate(
        self,
        step: saga_pb2.Step,
        *,
        input: Mapping[str, Any],
        original_output: Mapping[str, Any] | None,
        key: str,
        route_key: str,
        attempt: int,
        timeout_ms: float,
        metadata: Mapping[str, str],
    ) -> None:
        """Run one attempt of the step's compensation on the agent that owns
        `route_key` (the Execute's idempotency key).

        Args:
            key: the compensation's idempotency key (`<route_key>/compensate`).
            route_key: the idempotency key of the Execute it undoes.

        Raises:
            CallError: UNAVAILABLE NO_HEALTHY_TARGET, or the agent's status code.
        """
        req = agent_pb2.CompensateRequest(
            action=step.compensation_action,
            input=dict_to_struct(dict(input)),
            idempotency_key=key,
            attempt=attempt,
            metadata=dict(metadata),
            compensated_idempotency_key=route_key,
        )
        if original_output is not None:
            req.original_output.CopyFrom(dict_to_struct(dict(original_output)))
        # Placed with the Execute's action and key, so route rules resolve
        # the same pool and the ring gives the same agent as the Execute's.
        msg = self._message(
            step, action=step.action, input=None, route_key=route_key, metadata=metadata
        )
        try:
            _, out = await self.client.compensate(msg, req, timeout_s=timeout_ms / 1000.0)
        except AgentMeshError as e:
            raise CallError.of(e) from e
        if out.response is None:
            raise CallError.of_outcome(out)
