"""Calling agents: Invoke (route, Execute, retry with backoff, fail over) and
ScatterGather (fan out, gather, aggregate).

Deadlines: every Execute goes through a channel from
`agentmesh.runtime.channels`, whose interceptor caps the call's timeout with
the time left on the incoming RPC, so an agent never works past the moment
the caller gives up. Backoff is exponential with full jitter (AWS
Architecture Blog, "Exponential Backoff And Jitter", 2015).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

from agentmesh.agent.v1 import agent_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.agents import AgentClient, CallOutcome
from agentmesh.runtime.context import remaining_s
from agentmesh.runtime.errors import (
    DeadlineExceeded,
    ErrorReason,
    InvalidArgument,
    Unavailable,
    from_rpc_error,
)
from agentmesh.runtime.retry import idempotency_of, is_retryable_error
from agentmesh.runtime.routing.candidates import Candidate
from agentmesh.server.router import aggregate, metrics
from agentmesh.server.router.settings import RouterSettings

R = router_pb2
EXECUTE = "/agentmesh.agent.v1.AgentService/Execute"
MAX_ATTEMPTS = 10
DEFAULT_TIMEOUT_S = 30.0


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _input_of(msg: router_pb2.RouteMessage) -> struct_pb2.Struct:
    kind = msg.payload.WhichOneof("kind")
    if kind == "bytes_value":
        raise InvalidArgument(
            "Execute takes a Struct input; send the payload as struct_value",
            field_violations={"message.payload": "bytes_value is not supported here"},
        )
    return msg.payload.struct_value


class Invoker:
    """Makes Execute calls for Invoke and ScatterGather, on the one agent path.

    Args:
        client: the daemon's AgentClient (routing engine, guardrails, channels).
    """

    def __init__(self, client: AgentClient, settings: RouterSettings) -> None:
        self._client = client
        self._engine = client.engine
        self._settings = settings

    async def close(self) -> None:
        """Close every channel (the client's)."""
        await self._client.close()

    async def _call(
        self,
        target: Candidate,
        req: agent_pb2.ExecuteRequest,
        timeout_s: float | None,
        strategy: str = "",
    ) -> CallOutcome:
        return await self._client.call(
            target, "Execute", req, timeout_s=timeout_s, strategy=strategy
        )

    # ---- Invoke -------------------------------------------------------------
    async def invoke(self, req: router_pb2.InvokeRequest) -> router_pb2.InvokeResponse:
        """Route, call, retry and fail over (see RouterService.Invoke).

        Raises:
            InvalidArgument, FailedPrecondition, Unavailable: from routing.
            AgentMeshError: the agent's final non-retryable error.
            Unavailable: ATTEMPTS_EXHAUSTED when every attempt failed retryably.
            DeadlineExceeded: when the caller's deadline ran out.
        """
        if not req.action:
            raise InvalidArgument("action is required", field_violations={"action": "empty"})
        execute_input = _input_of(req.message)
        s = self._settings
        policy = req.retry_policy
        if policy.max_attempts > MAX_ATTEMPTS:
            raise InvalidArgument(
                f"retry_policy.max_attempts is at most {MAX_ATTEMPTS}",
                field_violations={"retry_policy.max_attempts": str(policy.max_attempts)},
            )
        attempts_max = policy.max_attempts or s.invoke_max_attempts
        backoff_s = (
            policy.initial_backoff.ToTimedelta().total_seconds()
            if policy.HasField("initial_backoff")
            else s.invoke_initial_backoff_ms / 1000.0
        )
        max_backoff_s = (
            policy.max_backoff.ToTimedelta().total_seconds()
            if policy.HasField("max_backoff")
            else s.invoke_max_backoff_ms / 1000.0
        )
        multiplier = policy.multiplier or 2.0
        attempt_timeout_s = (
            policy.attempt_timeout.ToTimedelta().total_seconds()
            if policy.HasField("attempt_timeout")
            else None
        )
        decision = await self._engine.decide(
            router_pb2.RouteRequest(message=req.message, strategy=req.strategy),
            allow_broadcast=False,
        )
        order = self._engine.failover_order(decision)
        attempts: list[router_pb2.InvokeAttempt] = []
        last: CallOutcome | None = None
        rng = self._engine.picker.rng
        t_start = time.perf_counter()
        for i in range(attempts_max):
            left = remaining_s()
            if left is not None and left <= 0:
                break
            target = order[i % len(order)]
            timeout_s = remaining_s(attempt_timeout_s) or DEFAULT_TIMEOUT_S
            ex = agent_pb2.ExecuteRequest(
                action=req.action,
                input=execute_input,
                idempotency_key=req.idempotency_key,
                attempt=i + 1,
                metadata=dict(req.message.metadata),
            )
            last = await self._call(
                target, ex, timeout_s, R.Strategy.Name(decision.strategy)
            )
            attempts.append(
                router_pb2.InvokeAttempt(
                    agent_id=last.agent_id,
                    code=last.code.value[0],
                    message=last.message,
                    duration=_duration(last.seconds),
                )
            )
            if last.response is not None:
                metrics.INVOKE_DURATION.observe((time.perf_counter() - t_start) * 1000)
                return router_pb2.InvokeResponse(
                    output=last.response.output,
                    agent_id=last.response.agent_id or last.agent_id,
                    deduplicated=last.response.deduplicated,
                    attempts=attempts,
                    strategy=decision.strategy,
                    rule_name=decision.rule_name,
                    safety_violations=decision.violations,
                )
            assert last.error is not None
            level = idempotency_of(EXECUTE, request=ex)
            if last.reached and not is_retryable_error(last.error, idempotency=level):
                raise from_rpc_error(last.error)
            if i + 1 < attempts_max:
                delay = rng.uniform(0, min(max_backoff_s, backoff_s * multiplier**i))
                left = remaining_s()
                if left is not None and delay >= left:
                    break
                await asyncio.sleep(delay)
        left = remaining_s()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"deadline exceeded after {len(attempts)} attempt(s)")
        raise Unavailable(
            f"all {len(attempts)} attempt(s) failed; last: "
            + (f"{last.agent_id}: {last.code.name} {last.message}" if last else "none"),
            reason=ErrorReason.ERROR_REASON_ATTEMPTS_EXHAUSTED,
            metadata={
                "attempts": str(len(attempts)),
                "agents": ",".join(a.agent_id for a in attempts),
            },
        )

    # ---- ScatterGather ----------------------------------------------------
    async def scatter_gather(
        self, req: router_pb2.ScatterGatherRequest
    ) -> router_pb2.ScatterGatherResponse:
        """Fan out, gather and aggregate (see RouterService.ScatterGather).

        Raises:
            InvalidArgument: bad aggregation or bounds; a CUSTOM reduce that
                does not compile (before any call) or fails on the replies.
            Unavailable: NO_HEALTHY_TARGET, INSUFFICIENT_RESPONSES.
        """
        if not req.action:
            raise InvalidArgument("action is required", field_violations={"action": "empty"})
        agg = req.aggregation or R.AGGREGATION_ALL
        if agg not in R.Aggregation.values():
            raise InvalidArgument(
                f"unknown aggregation {agg}", field_violations={"aggregation": str(agg)}
            )
        if agg == R.AGGREGATION_AVERAGE and not req.field_path:
            raise InvalidArgument(
                "AVERAGE needs field_path", field_violations={"field_path": "empty"}
            )
        reduce = aggregate.compile_reduce(req.reduce) if agg == R.AGGREGATION_CUSTOM else None
        execute_input = _input_of(req.message)
        msg = router_pb2.RouteMessage()
        msg.CopyFrom(req.message)
        if req.target_ids:
            del msg.target_ids[:]
            msg.target_ids.extend(req.target_ids)
            msg.ClearField("selector")
        elif req.HasField("selector"):
            del msg.target_ids[:]
            msg.selector.CopyFrom(req.selector)
        decision = await self._engine.decide(
            router_pb2.RouteRequest(
                message=msg, strategy=R.STRATEGY_BROADCAST, max_targets=req.max_targets
            )
        )
        targets = sorted(decision.targets, key=lambda c: c.agent_id)
        min_responses = req.min_responses or 1
        if min_responses > len(targets):
            raise InvalidArgument(
                f"min_responses {min_responses} exceeds the {len(targets)} eligible target(s)",
                field_violations={"min_responses": f"at most {len(targets)}"},
            )
        budget_s = (
            req.timeout.ToTimedelta().total_seconds()
            if req.HasField("timeout")
            else self._settings.scatter_timeout_ms / 1000.0
        )
        budget_s = remaining_s(budget_s) or budget_s
        t0 = time.perf_counter()
        outcomes = await self._fan_out(targets, req, execute_input, budget_s, agg)
        metrics.SCATTER_GATHER_DURATION.observe((time.perf_counter() - t0) * 1000)
        ok = sorted(
            (
                (o.agent_id, json_format.MessageToDict(o.response.output))
                for o in outcomes.values()
                if o.response is not None
            ),
            key=lambda x: x[0],
        )
        responses = []
        for t in targets:
            o = outcomes[t.agent_id]
            tr = router_pb2.TargetResponse(
                agent_id=t.agent_id,
                code=o.code.value[0],
                message=o.message,
                duration=_duration(o.seconds),
            )
            if o.response is not None:
                tr.output.CopyFrom(o.response.output)
            responses.append(tr)
        failed = len(targets) - len(ok)
        if agg == R.AGGREGATION_FIRST:
            failed = sum(
                1
                for o in outcomes.values()
                if o.response is None and o.code != grpc.StatusCode.CANCELLED
            )
        if len(ok) < min_responses:
            raise Unavailable(
                f"{len(ok)} of {len(targets)} target(s) answered; {min_responses} required",
                reason=ErrorReason.ERROR_REASON_INSUFFICIENT_RESPONSES,
                metadata={
                    "succeeded": str(len(ok)),
                    "required": str(min_responses),
                    "targets": str(len(targets)),
                },
            )
        resp = router_pb2.ScatterGatherResponse(
            aggregation=agg,
            partial=failed > 0,
            succeeded=len(ok),
            failed=failed,
            responses=responses,
            safety_violations=decision.violations,
        )
        result: dict[str, Any]
        if agg == R.AGGREGATION_FIRST:
            first = min(
                (o for o in outcomes.values() if o.response is not None),
                key=lambda o: o.seconds,
            )
            result = {"agent_id": first.agent_id, "output": dict(ok)[first.agent_id]}
        elif agg == R.AGGREGATION_ALL:
            result = aggregate.aggregate_all(ok)
        elif agg == R.AGGREGATION_MAJORITY_VOTE:
            vote = aggregate.majority_vote(ok, req.field_path)
            result = vote.result
            resp.vote.CopyFrom(
                router_pb2.VoteReport(
                    winner_votes=vote.winner_votes,
                    majority=vote.majority,
                    tie=vote.tie,
                    tied_values=vote.tied,
                )
            )
        elif agg == R.AGGREGATION_AVERAGE:
            result = aggregate.average(ok, req.field_path)
        elif reduce is not None:
            result = aggregate.custom(reduce, ok)
        else:
            result, conflicts = aggregate.merge(ok)
            resp.merge_conflicts.extend(conflicts)
        resp.result.update(result)
        return resp

    async def _fan_out(
        self,
        targets: list[Candidate],
        req: router_pb2.ScatterGatherRequest,
        execute_input: struct_pb2.Struct,
        budget_s: float,
        agg: int,
    ) -> dict[str, CallOutcome]:
        ex = agent_pb2.ExecuteRequest(
            action=req.action,
            input=execute_input,
            idempotency_key=req.idempotency_key,
            attempt=1,
            metadata=dict(req.message.metadata),
        )
        t0 = time.perf_counter()
        tasks = {asyncio.create_task(self._call(t, ex, budget_s)): t.agent_id for t in targets}
        outcomes: dict[str, CallOutcome] = {}
        pending = set(tasks)
        deadline = time.monotonic() + budget_s
        try:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                won = False
                for task in done:
                    o = task.result()
                    outcomes[o.agent_id] = o
                    won = won or o.response is not None
                if won and agg == R.AGGREGATION_FIRST:
                    return self._finish(tasks, outcomes, pending, t0, grpc.StatusCode.CANCELLED)
            return self._finish(tasks, outcomes, pending, t0, grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            for task in pending:
                task.cancel()

    @staticmethod
    def _finish(
        tasks: dict[asyncio.Task[CallOutcome], str],
        outcomes: dict[str, CallOutcome],
        pending: set[asyncio.Task[CallOutcome]],
        t0: float,
        code: grpc.StatusCode,
    ) -> dict[str, CallOutcome]:
        for task in pending:
            aid = tasks[task]
            outcomes[aid] = CallOutcome(
                aid,
                "",
                code,
                "no answer before the first success"
                if code == grpc.StatusCode.CANCELLED
                else "no answer before the scatter-gather timeout",
                None,
                time.perf_counter() - t0,
            )
        return outcomes
