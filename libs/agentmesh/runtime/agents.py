"""The one path from the mesh to its agents.

Every call the mesh makes to an agent (router Invoke and ScatterGather, saga
steps and compensations, swarm partitions and evaluations, and the task
scheduler) goes through `AgentClient`, so the mesh's promises are kept in one
place:

* target choice by agent id or selector through the routing engine
  (`agentmesh.runtime.routing.engine.RouteEngine`): one eligibility rule
  (status, breaker, outlier ejection, panic threshold) and ONE
  consistent-hash ring (ketama, `vnodes` points per agent), so every daemon
  maps a key to the same agent the router would;
* guardrails: the CEL safety rules evaluated on the real payload (a CRITICAL
  violation is FAILED_PRECONDITION with a PreconditionFailure of type SAFETY),
  the per-caller token bucket (RESOURCE_EXHAUSTED with RetryInfo), and the
  circuit breaker and outlier-ejection state every caller shares in Redis
  (`am:rt:target:{agent_id}`): each call's outcome counts toward it, and an
  agent that is OPEN or ejected is not eligible for any caller;
* deadlines (the runtime's propagating channels cap every call's timeout with
  the incoming RPC's remaining time), attempt numbers and idempotency keys;
* protocols: an agent whose endpoint is an A2A agent card URL
  (RegisterA2AAgent) is called with the A2A client
  (`agentmesh.runtime.a2a_call`), its task state becoming the same outcome a
  gRPC agent's status is, so everything above applies to it unchanged.

Guardrails run in the caller's process, reading and writing the router's
Redis state, rather than in the router daemon behind an extra hop: a saga
step costs no more round trips than before, and the guardrails keep working
while the router restarts (see README, "One path to every agent").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import redis
from google.protobuf import struct_pb2

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime import tracing
from agentmesh.runtime.context import current_principal
from agentmesh.runtime.errors import ErrorReason, ResourceExhausted, Unavailable
from agentmesh.runtime.redis_errors import is_redis_down, redis_unavailable
from agentmesh.runtime.routing import metrics
from agentmesh.runtime.routing.candidates import Candidate
from agentmesh.runtime.routing.engine import Decision, RouteEngine
from agentmesh.runtime.routing.ratelimit import RateLimiter
from agentmesh.runtime.routing.settings import RoutingSettings
from agentmesh.runtime.routing.targets import FAILURE_CODES

if TYPE_CHECKING:
    from agentmesh.runtime.a2a_call import A2ACaller

R = router_pb2

#: Endpoints with these prefixes are A2A agent card URLs (RegisterA2AAgent);
#: every other endpoint is a gRPC AgentService at host:port.
A2A_SCHEMES = ("http://", "https://")

#: Successes of agents whose breaker is CLOSED are counted in the process and
#: applied every this many seconds: one pipelined round trip for all agents,
#: one script call per agent with its count (a success only adds to the
#: outlier window and resets the consecutive failures); failures and
#: half-open successes are applied at once, after the agent's pending
#: successes. A call spread over 100 agents otherwise paid about one script
#: call per call (a 50 ms flush rarely saw two successes of one agent), the
#: largest cost the path added to a swarm partition.
SUCCESS_FLUSH_S = 0.2

#: Strategy used when a call names a selector and a routing key: the ring
#: owner of the key, so retries and compensations reach the same agent.
KEYED_STRATEGY = R.STRATEGY_CONSISTENT_HASH


@dataclass(slots=True)
class CallOutcome:
    """What one attempt on one agent returned.

    Attributes:
        agent_id: the agent called.
        endpoint: its host:port.
        code: the gRPC status (OK on success).
        message: the status message ("" on success).
        response: the agent's response message, None on failure.
        seconds: wall time of the attempt, s.
        error: the RPC error, None on success or when the attempt never started.
        reached: False when the request provably never reached the agent (an
            UNAVAILABLE while the channel was not connected: connection
            refused, no route); such an attempt is safe to repeat for any
            method, gRPC's "transparent retry" (A6).
    """

    agent_id: str
    endpoint: str
    code: grpc.StatusCode
    message: str
    response: Any | None
    seconds: float
    error: grpc.aio.AioRpcError | None = None
    reached: bool = True


def call_message(
    *,
    action: str,
    payload: struct_pb2.Struct | None = None,
    agent_id: str = "",
    selector: common_pb2.AgentSelector | None = None,
    routing_key: str = "",
    sender_id: str = "",
    metadata: Mapping[str, str] | None = None,
) -> router_pb2.RouteMessage:
    """The RouteMessage that describes an agent call to the routing engine.

    The safety and route rules see it exactly as they see a router Invoke:
    `message.message_type` is the action, `payload` the Execute input.

    Args:
        action: the AgentService action (capability) called.
        payload: the call's input; None for none.
        agent_id: call this agent ("" when `selector` is set).
        selector: call an agent matching this selector.
        routing_key: the consistent-hash key (usually the idempotency key).
        sender_id: the caller, for rules and rate limits.
        metadata: string metadata rules may read.
    """
    msg = router_pb2.RouteMessage(message_type=action, routing_key=routing_key, sender_id=sender_id)
    if payload is not None:
        msg.payload.struct_value.CopyFrom(payload)
    if agent_id:
        msg.target_ids.append(agent_id)
    elif selector is not None:
        msg.selector.CopyFrom(selector)
    if metadata:
        msg.metadata.update(metadata)
    return msg


class AgentClient:
    """Calls agents for one daemon, through the shared guardrails.

    Args:
        engine: the routing engine over the mesh's Redis (rules, pools,
            breakers, outlier ejection, hash rings).
        channel_factory: makes an outgoing channel for an endpoint
            (`agentmesh.runtime.channels.create_channel` with the daemon's
            token and TLS settings).
        identity: who this daemon is for rate limits when a call runs outside
            any incoming RPC (background drivers), e.g. "saga-coordinator".
    """

    def __init__(
        self,
        engine: RouteEngine,
        channel_factory: Callable[[str], grpc.aio.Channel],
        *,
        identity: str,
    ) -> None:
        self.engine = engine
        self.settings: RoutingSettings = engine.settings
        s = self.settings
        self.limiter = RateLimiter(
            engine.redis, rate_per_s=s.rate_limit_per_s, burst=s.rate_limit_burst
        )
        self._identity = identity
        self._factory = channel_factory
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ok_pending: dict[str, int] = {}
        self._flush: asyncio.Task[Any] | None = None
        #: Calls to A2A agents (endpoint = agent card URL), made on first use
        #: so the gRPC path neither imports a2a-sdk nor pays for it.
        self._a2a: A2ACaller | None = None

    @classmethod
    def create(
        cls,
        redis: Any,
        settings: RoutingSettings,
        channel_factory: Callable[[str], grpc.aio.Channel],
        *,
        identity: str,
        seed: int | None = None,
    ) -> AgentClient:
        """An AgentClient with its own RouteEngine on `redis`."""
        return cls(RouteEngine(redis, settings, seed=seed), channel_factory, identity=identity)

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Load the rules and start the engine's background refreshers."""
        await self.engine.start()

    async def close(self) -> None:
        """Apply pending outcomes, stop the engine and close every agent channel."""
        await self.flush_outcomes()
        await self.engine.stop()
        for task in list(self._background):
            task.cancel()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._stubs.clear()
        if self._a2a is not None:
            await self._a2a.close()
            self._a2a = None

    def stub(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """The AgentService stub for `endpoint`; one channel per endpoint."""
        stub = self._stubs.get(endpoint)
        if stub is None:
            ch = self._channels[endpoint] = self._factory(endpoint)
            stub = self._stubs[endpoint] = agent_pb2_grpc.AgentServiceStub(ch)
        return stub

    async def forget(self, endpoint: str) -> None:
        """Close the channel to an endpoint that went away."""
        ch = self._channels.pop(endpoint, None)
        self._stubs.pop(endpoint, None)
        if ch is not None:
            await ch.close()
        if self._a2a is not None:
            self._a2a.forget(endpoint)

    # ---- admission and decisions -------------------------------------------------
    async def admit(self, msg: router_pb2.RouteMessage, *, cost: int = 1) -> None:
        """Size limit and per-caller rate limit for one call (or `cost` calls).

        The caller is the incoming RPC's principal, else `msg.sender_id`, else
        this daemon's identity.

        Raises:
            ResourceExhausted: over the size limit, or over the rate limit
                (with RetryInfo).
            Unavailable: REDIS_DOWN when the bucket cannot be read.
        """
        self.engine.check_size(msg)
        if not self.limiter.enabled:
            return
        principal = current_principal()
        identity = principal.identity if principal else (msg.sender_id or self._identity)
        try:
            verdict = await self.limiter.take(identity, cost)
        except redis.RedisError as e:  # mapped here: saga and swarm call outside RPC handlers
            if not is_redis_down(e):
                raise
            raise redis_unavailable(e, action="cannot read the rate limit bucket") from e
        if not verdict.allowed:
            metrics.RATE_LIMITED.inc()
            s = self.settings
            raise ResourceExhausted(
                f"rate limit for {identity!r} exceeded "
                f"({s.rate_limit_per_s}/s, burst {s.rate_limit_burst})",
                retry_after_s=verdict.retry_after_ms / 1000.0,
                quota_subject=identity,
                quota_description=f"{s.rate_limit_per_s} decisions per second",
            )

    async def decide(
        self,
        msg: router_pb2.RouteMessage,
        *,
        strategy: router_pb2.Strategy.ValueType = R.STRATEGY_UNSPECIFIED,
        max_targets: int = 0,
        allow_broadcast: bool = True,
    ) -> Decision:
        """The routing decision for `msg` (safety rules, route rules, eligibility, strategy).

        Raises:
            InvalidArgument, FailedPrecondition, Unavailable: see RouteEngine.decide.
        """
        return await self.engine.decide(
            router_pb2.RouteRequest(message=msg, strategy=strategy, max_targets=max_targets),
            allow_broadcast=allow_broadcast,
        )

    async def pick(self, msg: router_pb2.RouteMessage, *, enforce_safety: bool = True) -> Decision:
        """The decision for one agent call: the named agent, or the ring owner
        of `msg.routing_key` among the eligible agents of `msg.selector`
        (least loaded when there is no key).

        Raises:
            FailedPrecondition: a CRITICAL safety rule matched the payload.
            Unavailable: NO_HEALTHY_TARGET when the agent (or every matching
                one) is breaker-open, ejected, inactive or unknown.
        """
        if msg.target_ids:
            strategy = R.STRATEGY_FAILOVER
        elif msg.routing_key:
            strategy = KEYED_STRATEGY
        else:
            strategy = R.STRATEGY_LEAST_LOADED
        return await self.engine.decide(
            router_pb2.RouteRequest(message=msg, strategy=strategy),
            allow_broadcast=False,
            enforce_safety=enforce_safety,
        )

    async def eligible_ids(self, msg: router_pb2.RouteMessage) -> frozenset[str]:
        """Ids of the agents of `msg`'s pool that a call may go to now (not
        breaker-open, not ejected, healthy), for callers that place calls
        themselves. Safety rules are not evaluated (there is no payload yet).

        Raises:
            InvalidArgument: a bad selector.
            Unavailable: REDIS_DOWN.
        """
        try:
            d = await self.engine.decide(
                router_pb2.RouteRequest(message=msg, strategy=R.STRATEGY_BROADCAST),
                enforce_safety=False,
            )
        except Unavailable as e:
            if e.error_reason == ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET:
                return frozenset()
            raise
        return d.eligible.ids()

    async def check_agent(self, msg: router_pb2.RouteMessage, agent_id: str) -> Candidate:
        """Guardrails for a call the caller already placed on `agent_id`
        (the swarm's partition scheduler places its own leases).

        `msg` names the pool the agent was chosen from (its selector); the
        call is refused when the agent is not eligible in it, exactly as the
        router would skip it.

        Raises:
            FailedPrecondition: a CRITICAL safety rule matched the payload.
            ResourceExhausted: over the caller's rate limit.
            Unavailable: NO_HEALTHY_TARGET when `agent_id` is not eligible.
        """
        await self.admit(msg)
        probe = msg
        if not (self.engine.rules.safety_rules or self.engine.rules.route_rules):
            # No rule can read the payload or the key: decide on the pool
            # alone, which the route cache serves without re-deciding.
            probe = router_pb2.RouteMessage(
                message_type=msg.message_type, selector=msg.selector, target_ids=msg.target_ids
            )
        d = await self.decide(probe, strategy=R.STRATEGY_BROADCAST)
        for c in d.eligible.candidates:
            if c.agent_id == agent_id:
                return c
        raise Unavailable(
            f"agent {agent_id!r} is not eligible now (breaker open, ejected or not healthy)",
            reason=ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET,
            metadata={"agent_id": agent_id, "pool": d.pool.key},
        )

    # ---- calls -------------------------------------------------------------------
    async def call(
        self,
        target: Candidate,
        method: str,
        request: Any,
        *,
        timeout_s: float | None,
        metadata: tuple[tuple[str, str], ...] | None = None,
        strategy: str = "",
    ) -> CallOutcome:
        """One attempt of `method` ("Execute", "Compensate" or "Evaluate") on
        `target`; its outcome counts toward the agent's breaker and outlier
        state (failures awaited, so the next attempt sees an opened breaker).

        While tracing is on the attempt is one CLIENT span
        (`agentmesh.agent.v1.AgentService/<method>`) with the rpc.* and
        agentmesh.* attributes (agent, action, idempotency key, attempt,
        routing strategy, saga id and step from the request's metadata).

        Args:
            strategy: the routing strategy that chose `target`, for the span.

        Never raises for an RPC failure: the outcome carries it.
        """
        if not tracing.enabled() or tracing.current_unsampled():
            # Unsampled: no span to record, so no attributes to build; the
            # channel still propagates the unsampled context.
            return await self._call(target, method, request, timeout_s=timeout_s, metadata=metadata)
        with tracing.client_span(
            f"/agentmesh.agent.v1.AgentService/{method}",
            _span_attributes(target, request, strategy),
        ) as span:
            out = await self._call(target, method, request, timeout_s=timeout_s, metadata=metadata)
            tracing.set_call_status(span, out.code, out.message)
            return out

    async def _call(
        self,
        target: Candidate,
        method: str,
        request: Any,
        *,
        timeout_s: float | None,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> CallOutcome:
        if target.endpoint.startswith(A2A_SCHEMES):
            return await self._call_a2a(target, method, request, timeout_s=timeout_s)
        inflight = self.engine.picker.inflight
        inflight[target.agent_id] = inflight.get(target.agent_id, 0) + 1
        rpc = getattr(self.stub(target.endpoint), method)
        t0 = time.perf_counter()
        try:
            resp = await rpc(request, timeout=timeout_s, metadata=metadata)
            out = CallOutcome(
                target.agent_id,
                target.endpoint,
                grpc.StatusCode.OK,
                "",
                resp,
                time.perf_counter() - t0,
            )
        except grpc.aio.AioRpcError as e:
            ch = self._channels.get(target.endpoint)
            # An agent that answered leaves the channel READY; a request that
            # never left leaves it CONNECTING or TRANSIENT_FAILURE.
            reached = not (
                e.code() == grpc.StatusCode.UNAVAILABLE
                and ch is not None
                and ch.get_state() != grpc.ChannelConnectivity.READY
            )
            out = CallOutcome(
                target.agent_id,
                target.endpoint,
                e.code(),
                e.details() or "",
                None,
                time.perf_counter() - t0,
                e,
                reached,
            )
        finally:
            inflight[target.agent_id] -= 1
        metrics.child(metrics.INVOKE_ATTEMPTS, out.code.name).inc()
        if out.code in FAILURE_CODES:
            await self._failed(target.agent_id)
        else:
            self._succeeded(target.agent_id)
        return out

    async def _call_a2a(
        self, target: Candidate, method: str, request: Any, *, timeout_s: float | None
    ) -> CallOutcome:
        """`_call` for an A2A agent (agentmesh.runtime.a2a_call): the same
        in-flight count, metrics and outcome recording."""
        if self._a2a is None:
            from agentmesh.runtime.a2a_call import A2ACaller  # lazy: see self._a2a

            self._a2a = A2ACaller()
        inflight = self.engine.picker.inflight
        inflight[target.agent_id] = inflight.get(target.agent_id, 0) + 1
        t0 = time.perf_counter()
        try:
            res = await self._a2a.call(
                target.endpoint, method, request, agent_id=target.agent_id, timeout_s=timeout_s
            )
        finally:
            inflight[target.agent_id] -= 1
        out = CallOutcome(
            target.agent_id, target.endpoint, res.code, res.message, res.response,
            time.perf_counter() - t0,
            None if res.code == grpc.StatusCode.OK else res.rpc_error(target.endpoint),
            res.reached,
        )
        metrics.child(metrics.INVOKE_ATTEMPTS, out.code.name).inc()
        if out.code in FAILURE_CODES:
            await self._failed(target.agent_id)
        else:
            self._succeeded(target.agent_id)
        return out

    # ---- outcomes ------------------------------------------------------------------
    def _succeeded(self, agent_id: str) -> None:
        st = self.engine.states.get(agent_id)
        if st is not None and st.effective_breaker(int(time.time() * 1000)) != "CLOSED":
            # a half-open probe's success closes the breaker: apply it now
            self._spawn(self.engine.record(agent_id, ok=True))
            return
        self._ok_pending[agent_id] = self._ok_pending.get(agent_id, 0) + 1
        if self._flush is None:
            self._flush = self._spawn(self._flush_later())

    async def _failed(self, agent_id: str) -> None:
        # Successes still pending happened before this failure: apply them
        # first, so they do not reset the consecutive-failure count after it.
        n = self._ok_pending.pop(agent_id, 0)
        if n:
            await self.engine.record(agent_id, ok=True, count=n)
        # awaited, so the caller's next attempt already sees an opened breaker
        await self.engine.record(agent_id, ok=False)

    async def _flush_later(self) -> None:
        await asyncio.sleep(SUCCESS_FLUSH_S)
        self._flush = None
        await self.flush_outcomes()

    async def flush_outcomes(self) -> None:
        """Apply the successes counted since the last flush, one script call per agent."""
        pending, self._ok_pending = self._ok_pending, {}
        await self.engine.record_successes(pending)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def execute(
        self,
        msg: router_pb2.RouteMessage,
        *,
        idempotency_key: str,
        attempt: int,
        timeout_s: float | None,
    ) -> tuple[Candidate, CallOutcome]:
        """Pick the agent for `msg` and run one Execute attempt on it.

        Args:
            msg: from `call_message`; its payload is the Execute input.
            idempotency_key: stays the same on every attempt.
            attempt: 1-based attempt number.
            timeout_s: the attempt's timeout, capped by the incoming deadline.

        Raises:
            FailedPrecondition, Unavailable, ResourceExhausted: from the
                guardrails, before any agent is called.
        """
        await self.admit(msg)
        target = (await self.pick(msg)).targets[0]
        req = agent_pb2.ExecuteRequest(
            action=msg.message_type,
            input=msg.payload.struct_value,
            idempotency_key=idempotency_key,
            attempt=attempt,
            metadata=dict(msg.metadata),
        )
        return target, await self.call(
            target, "Execute", req, timeout_s=timeout_s, strategy=_strategy_name(msg)
        )

    async def compensate(
        self,
        msg: router_pb2.RouteMessage,
        request: agent_pb2.CompensateRequest,
        *,
        timeout_s: float | None,
    ) -> tuple[Candidate, CallOutcome]:
        """Pick the agent for `msg` (the same ring owner as its Execute) and
        run one Compensate attempt.

        Safety rules and rate limits are not applied to compensations: a
        compensation undoes an effect that already passed them, and refusing
        or starving it would strand that effect. Breakers and ejection still
        apply, and the outcome counts.

        Raises:
            Unavailable: NO_HEALTHY_TARGET when no agent is eligible.
        """
        target = (await self.pick(msg, enforce_safety=False)).targets[0]
        return target, await self.call(
            target, "Compensate", request, timeout_s=timeout_s, strategy=_strategy_name(msg)
        )


def _strategy_name(msg: router_pb2.RouteMessage) -> str:
    """The strategy `AgentClient.pick` uses for `msg`, as its enum name."""
    if msg.target_ids:
        return "STRATEGY_FAILOVER"
    if msg.routing_key:
        return R.Strategy.Name(KEYED_STRATEGY)
    return "STRATEGY_LEAST_LOADED"


def _span_attributes(target: Candidate, request: Any, strategy: str) -> dict[str, Any]:
    """The agentmesh.* attributes of an agent call's CLIENT span."""
    attrs: dict[str, Any] = {
        tracing.ATTR_AGENT_ID: target.agent_id,
        tracing.SERVER_ADDRESS: target.endpoint,
    }
    if strategy:
        attrs[tracing.ATTR_STRATEGY] = strategy
    for field, attr in (
        ("action", tracing.ATTR_ACTION),
        ("idempotency_key", tracing.ATTR_IDEMPOTENCY_KEY),
        ("attempt", tracing.ATTR_ATTEMPT),
    ):
        value = getattr(request, field, None)
        if value:
            attrs[attr] = value
    md = getattr(request, "metadata", None)
    if md:
        if saga_id := md.get("saga_id"):
            attrs[tracing.ATTR_SAGA_ID] = saga_id
        if step := md.get("step"):
            attrs[tracing.ATTR_STEP] = step
        if swarm_id := md.get("swarm_id"):
            attrs[tracing.ATTR_SWARM_ID] = swarm_id
        if partition := md.get("partition"):  # a swarm partition's index
            attrs[tracing.ATTR_PARTITION] = int(partition) if partition.isdigit() else partition
        if task_id := md.get("task_id"):
            attrs[tracing.ATTR_TASK_ID] = task_id
    if swarm_id := getattr(request, "swarm_id", ""):  # EvaluateRequest
        attrs[tracing.ATTR_SWARM_ID] = swarm_id
    return attrs
