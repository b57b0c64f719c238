"""`agentmesh.agent.v1.AgentService` over an Agent's declared handlers.

It turns each request into an `ActionContext` (deadline, attempt, principal,
the compensated Execute key), finds the handler, and hands keyed work to the
agent's `IdempotentExecutor`. Evaluate is pure, so it bypasses the executor.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import duration_pb2

from agentmesh.agent.context import ActionContext
from agentmesh.agent.executor import COMPENSATE, EXECUTE, call_handler, map_exception
from agentmesh.agent.structs import struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.compensation import fenced_key
from agentmesh.runtime.context import current_principal
from agentmesh.runtime.errors import Internal, InvalidArgument

if TYPE_CHECKING:
    from agentmesh.agent.sdk import Agent

#: Action name that matches any action without its own handler.
WILDCARD = "*"


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


def _duration_ms(ms: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(ms * 1e6))
    return d


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Adapts AgentService RPCs to an Agent's handlers and executor.

    Args:
        agent: the agent; its id and handler tables are read at call time.
    """

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse:
        """See AgentService.Execute."""
        a = self._agent
        handler = a.action_handler(request.action)
        if handler is None:
            raise InvalidArgument(
                f"unknown action {request.action!r}; agent {a.agent_id} serves {a.actions}",
                field_violations={"action": "not declared by this agent"},
            )
        ctx = ActionContext(
            agent_id=a.agent_id,
            action=request.action,
            kind="execute",
            idempotency_key=request.idempotency_key,
            attempt=request.attempt or 1,
            metadata=dict(request.metadata),
            deadline_monotonic=_deadline(context),
            principal=current_principal(),
            safety=a.safety,
        )
        inp = struct_to_dict(request.input)
        out = await a.executor.run(EXECUTE, ctx, lambda c: call_handler(handler, inp, c))
        return agent_pb2.ExecuteResponse(
            output=out.output,
            deduplicated=out.deduplicated,
            agent_id=a.agent_id,
            processing_duration=_duration_ms(out.processing_ms),
        )

    async def Compensate(
        self, request: agent_pb2.CompensateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.CompensateResponse:
        """See AgentService.Compensate."""
        a = self._agent
        handler = a.compensation_handler(request.action)
        if handler is None:
            raise InvalidArgument(
                f"unknown compensation {request.action!r}; agent {a.agent_id} compensates "
                f"{a.compensations}",
                field_violations={"action": "no compensation declared for this action"},
            )
        ctx = ActionContext(
            agent_id=a.agent_id,
            action=request.action,
            kind="compensate",
            idempotency_key=request.idempotency_key,
            attempt=request.attempt or 1,
            metadata=dict(request.metadata),
            deadline_monotonic=_deadline(context),
            original_output=(
                struct_to_dict(request.original_output)
                if request.HasField("original_output")
                else None
            ),
            principal=current_principal(),
            safety=a.safety,
            # The new field, else the "<K>/compensate" suffix of older callers.
            compensated_idempotency_key=fenced_key(request) or "",
        )
        inp = struct_to_dict(request.input)
        out = await a.executor.run(COMPENSATE, ctx, lambda c: call_handler(handler, inp, c))
        return agent_pb2.CompensateResponse(
            output=out.output,
            deduplicated=out.deduplicated,
            agent_id=a.agent_id,
        )

    async def Evaluate(
        self, request: agent_pb2.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.EvaluateResponse:
        """See AgentService.Evaluate."""
        a = self._agent
        fn = a.objective_handler(request.objective)
        if fn is None:
            raise InvalidArgument(
                f"unknown objective {request.objective!r}; agent {a.agent_id} evaluates "
                f"{a.objectives}",
                field_violations={"objective": "not declared by this agent"},
            )
        d = request.dimensions
        flat = np.asarray(request.positions, dtype=np.float64)
        if d == 0 or flat.size % d:
            raise InvalidArgument(
                f"{flat.size} position values do not form rows of {d} dimensions",
                field_violations={"dimensions": "must be > 0 and divide len(positions)"},
            )
        positions = flat.reshape(-1, d)
        params = struct_to_dict(request.parameters)
        start = a.load.started()
        t0 = time.perf_counter()
        ok = False
        try:
            try:
                result = await call_handler(fn, positions, params)
            except Exception as exc:
                raise map_exception(exc, request.objective) from exc
            fitness = np.asarray(result, dtype=np.float64).reshape(-1)
            if fitness.size != positions.shape[0]:
                raise Internal(
                    f"objective {request.objective!r} returned {fitness.size} values for "
                    f"{positions.shape[0]} positions"
                )
            ok = True
            return agent_pb2.EvaluateResponse(fitness=fitness.tolist())
        finally:
            a.load.finished(start, processing_ms=(time.perf_counter() - t0) * 1e3, ok=ok)


__all__ = ["WILDCARD", "AgentServicer"]
