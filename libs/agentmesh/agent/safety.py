"""The agent's link to the router's SafetyService: `ctx.validate(...)` and the
constraints an agent declares (`Agent(constraints=[...])`), registered at start.

Declared constraints become ordinary safety rules, so the mesh enforces them
on every call to any agent whose operations they name (`message_types`), not
only on this agent's. Registration is idempotent: a constraint that already
exists with the same compiled condition, level and types is left alone (the
agent's other replicas, a restart); one that exists with different ones fails
the start, so two versions never silently disagree (rename it to change it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from agentmesh.agent.structs import dict_to_struct
from agentmesh.router.v1 import router_pb2, router_pb2_grpc, safety_pb2, safety_pb2_grpc
from agentmesh.runtime.errors import (
    AlreadyExists,
    ErrorReason,
    FailedPrecondition,
    error_info,
    from_rpc_error,
)

log = logging.getLogger("agentmesh.agent.safety")

#: Attempts of a constraint registration while the router is unreachable.
REGISTER_ATTEMPTS = 5


def _transient(e: BaseException) -> bool:
    return isinstance(e, grpc.aio.AioRpcError) and e.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


class SafetyLink:
    """Calls the router's SafetyService for one agent.

    Args:
        channel: a channel to the router (the agent daemon's, with its token and TLS).
        agent_id: the agent, sent as the operations' `sender_id`.
        timeout_s: deadline of each call, s.
    """

    def __init__(self, channel: grpc.aio.Channel, *, agent_id: str, timeout_s: float = 5.0) -> None:
        self._safety = safety_pb2_grpc.SafetyServiceStub(channel)
        self._rules = router_pb2_grpc.RouterServiceStub(channel)
        self._agent_id = agent_id
        self._timeout_s = timeout_s

    async def register(self, constraints: Sequence[safety_pb2.Constraint]) -> list[str]:
        """Create every constraint that does not exist yet.

        Returns:
            The names of the constraints this call created.

        Raises:
            InvalidArgument: a constraint does not compile (checked before any call).
            AlreadyExists: a safety rule of that name exists with another condition,
                level or message types.
            AgentMeshError: the router refused or stayed unreachable.
        """
        try:  # the CEL compiler (cel-python) is an extra: only agents with constraints need it
            from agentmesh.runtime.routing.constraints import compile_constraint
        except ImportError as e:
            raise ImportError(
                f"typed safety constraints are compiled with cel-python ({e}); "
                "install it with: pip install 'agentmesh[cel]'"
            ) from e
        wanted = [compile_constraint(c) for c in constraints]
        created = []
        for c, rule in zip(constraints, wanted, strict=True):
            try:
                await self._call(
                    self._safety.CreateConstraint, safety_pb2.CreateConstraintRequest(constraint=c)
                )
                created.append(c.name)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise from_rpc_error(e) from e
                await self._check_same(rule)
        if created:
            log.info(
                "constraints registered",
                extra={"agent_id": self._agent_id, "constraints": created},
            )
        return created

    async def _check_same(self, want: router_pb2.SafetyRule) -> None:
        try:
            got = (
                await self._call(
                    self._rules.GetSafetyRule, router_pb2.GetSafetyRuleRequest(name=want.name)
                )
            ).rule
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        same = (
            got.condition == want.condition
            and got.level == want.level
            and list(got.message_types) == list(want.message_types)
        )
        if not same:
            raise AlreadyExists(
                f"safety rule {want.name!r} exists with another condition, level or message "
                f"types ({got.condition!r}); give the changed constraint a new name"
            )

    async def _call(self, method: Any, request: Any) -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(REGISTER_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            retry=retry_if_exception(_transient),
            reraise=True,
        ):
            with attempt:
                return await method(request, timeout=self._timeout_s)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def validate(
        self,
        operation_type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        agent_id: str = "",
        metadata: Mapping[str, str] | None = None,
        raise_if_unsafe: bool = False,
    ) -> safety_pb2.ValidateOperationResponse:
        """Dry-run the mesh's safety rules on an operation (ValidateOperation).

        Args:
            operation_type: what the operation does; rules with `message_types`
                apply only to their types.
            parameters: the operation's parameters (the CEL `payload`).
            agent_id: the system the operation would call, if any.
            metadata: string metadata (the CEL `message.metadata`).
            raise_if_unsafe: raise instead of returning an unsafe verdict.

        Returns:
            The verdict: `is_safe`, every violation, the blocking ones.

        Raises:
            FailedPrecondition: `raise_if_unsafe` and the operation would be
                blocked (ErrorInfo SAFETY_VIOLATION, one PreconditionFailure
                violation per blocking rule).
            AgentMeshError: the router refused the request or is unreachable.
        """
        req = safety_pb2.ValidateOperationRequest(
            operation_type=operation_type,
            agent_id=agent_id,
            parameters=dict_to_struct(dict(parameters or {})),
            sender_id=self._agent_id,
            metadata=dict(metadata or {}),
        )
        try:
            verdict: safety_pb2.ValidateOperationResponse = await self._safety.ValidateOperation(
                req, timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        if raise_if_unsafe and not verdict.is_safe:
            raise FailedPrecondition(
                f"operation {operation_type!r} is not safe: "
                + "; ".join(f"{v.rule_name}: {v.description}" for v in verdict.blocking),
                violations=[("SAFETY", v.rule_name, v.description) for v in verdict.blocking],
                details=[
                    error_info(
                        ErrorReason.ERROR_REASON_SAFETY_VIOLATION,
                        metadata={"rules": ",".join(v.rule_name for v in verdict.blocking)},
                    )
                ],
            )
        return verdict
