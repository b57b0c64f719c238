"""SafetyService: the SafetyMonitor as a service, on the router daemon.

ValidateOperation runs the routing engine's safety step on an operation
described like an agent call (`agentmesh.runtime.agents.call_message`), so the
answer is the one a real call would get. Constraints compile to CEL safety
rules (`agentmesh.runtime.routing.constraints`) stored with the rule store.
Named breakers use the per-agent breaker script (`NamedBreakerRecorder`), and
named rate limiters the runtime's token bucket (`RateLimiter.take_from`): one
mechanism each, state in Redis shared by every replica.

Configurations never change after creation (there is no update RPC), so each
replica caches the ones it has read; the state is always read from Redis.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import redis.asyncio as aioredis

from agentmesh.router.v1 import router_pb2, safety_pb2, safety_pb2_grpc
from agentmesh.runtime.agents import call_message
from agentmesh.runtime.errors import (
    AlreadyExists,
    ErrorReason,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    error_info,
)
from agentmesh.runtime.routing import keys
from agentmesh.runtime.routing.constraints import compile_constraint
from agentmesh.runtime.routing.engine import RouteEngine
from agentmesh.runtime.routing.ratelimit import RateLimiter
from agentmesh.runtime.routing.rules import (
    check_name,
    decode_token,
    encode_token,
    page_size,
)
from agentmesh.runtime.routing.targets import NamedBreakerRecorder, TargetState
from agentmesh.server.router import metrics

S = safety_pb2
R = router_pb2
#: Longest AcquirePermit key, characters (it becomes part of a Redis key).
MAX_KEY_CHARS = 512


def _b(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def _s(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _required_name(name: str) -> None:
    if not name:
        raise InvalidArgument("name is required", field_violations={"name": "empty"})


def breaker_view(
    cfg: safety_pb2.CircuitBreaker, st: TargetState, now_ms: int
) -> safety_pb2.CircuitBreaker:
    """A breaker's configuration with its state at `now_ms` (open expiry applied)."""
    out = safety_pb2.CircuitBreaker()
    out.CopyFrom(cfg)
    state = st.effective_breaker(now_ms)
    out.state = R.BreakerState.Value("BREAKER_STATE_" + state)
    out.consecutive_failures = st.consecutive_failures
    out.success_count = st.window_successes
    out.failure_count = st.window_failures
    out.half_open_successes = st.half_open_successes if state == "HALF_OPEN" else 0
    if state == "OPEN":
        out.next_retry_time.FromMilliseconds(st.open_until_ms)
    return out


class SafetyServicer(safety_pb2_grpc.SafetyServiceServicer):
    """SafetyService over the router's engine and Redis.

    Args:
        redis: the router's Redis.
        engine: the router's routing engine (rules, route cache, settings), the
            one RouterService and the agent path use.
    """

    def __init__(self, redis: aioredis.Redis, engine: RouteEngine) -> None:
        self._redis = redis
        self._engine = engine
        self._breakers = NamedBreakerRecorder(redis)
        self._bucket = RateLimiter(redis, rate_per_s=0, burst=1)
        self._breaker_cfg: dict[str, safety_pb2.CircuitBreaker] = {}
        self._limiter_cfg: dict[str, safety_pb2.RateLimiter] = {}

    # ---- validation -----------------------------------------------------------
    async def ValidateOperation(
        self,
        request: safety_pb2.ValidateOperationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.ValidateOperationResponse:
        """See SafetyService.ValidateOperation."""
        if not request.operation_type:
            raise InvalidArgument(
                "operation_type is required", field_violations={"operation_type": "empty"}
            )
        msg = call_message(
            action=request.operation_type,
            payload=request.parameters,
            agent_id=request.agent_id,
            sender_id=request.sender_id,
            metadata=request.metadata,
        )
        self._engine.check_size(msg)
        passing, blocking = self._engine.evaluate_safety(msg)
        violations = sorted([*passing, *blocking], key=lambda v: v.rule_name)
        safe = not blocking
        metrics.child(metrics.SAFETY_VALIDATIONS, "safe" if safe else "unsafe").inc()
        return S.ValidateOperationResponse(
            is_safe=safe,
            violations=violations,
            blocking=blocking,
            halt_on_critical=self._engine.settings.safety_halt_on_critical,
        )

    async def CreateConstraint(
        self,
        request: safety_pb2.CreateConstraintRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.CreateConstraintResponse:
        """See SafetyService.CreateConstraint."""
        rule = compile_constraint(request.constraint)
        return S.CreateConstraintResponse(rule=await self._engine.rules.create_safety_rule(rule))

    # ---- named circuit breakers -----------------------------------------------
    async def CreateCircuitBreaker(
        self,
        request: safety_pb2.CreateCircuitBreakerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.CreateCircuitBreakerResponse:
        """See SafetyService.CreateCircuitBreaker."""
        b = request.breaker
        check_name(b.name, "breaker.name")
        bad: dict[str, str] = {}
        if b.failure_threshold < 1:
            bad["breaker.failure_threshold"] = "must be at least 1"
        if b.half_open_max_calls < 1:
            bad["breaker.half_open_max_calls"] = "must be at least 1"
        if not b.HasField("open_duration") or b.open_duration.ToMilliseconds() <= 0:
            bad["breaker.open_duration"] = "must be positive (at least 1ms)"
        if bad:
            raise InvalidArgument("invalid circuit breaker", field_violations=bad)
        cfg = S.CircuitBreaker(
            name=b.name,
            failure_threshold=b.failure_threshold,
            open_duration=b.open_duration,
            half_open_max_calls=b.half_open_max_calls,
        )
        cfg.create_time.GetCurrentTime()
        created = await self._redis.hsetnx(
            keys.named_breaker(b.name), "cfg", cfg.SerializeToString()
        )
        if not created:
            raise AlreadyExists(f"circuit breaker {b.name!r} already exists")
        await self._redis.sadd(keys.BREAKERS, b.name)
        self._breaker_cfg[b.name] = cfg
        return S.CreateCircuitBreakerResponse(
            breaker=breaker_view(cfg, TargetState(b.name), int(time.time() * 1000))
        )

    async def _breaker(self, name: str) -> safety_pb2.CircuitBreaker:
        _required_name(name)
        cfg = self._breaker_cfg.get(name)
        if cfg is None:
            raw = await self._redis.hget(keys.named_breaker(name), "cfg")
            if raw is None:
                raise NotFound(
                    f"circuit breaker {name!r} not found; create it with CreateCircuitBreaker",
                    resource_type="CircuitBreaker",
                    resource_name=name,
                )
            cfg = self._breaker_cfg[name] = S.CircuitBreaker.FromString(_b(raw))
        return cfg

    async def RecordOutcome(
        self,
        request: safety_pb2.RecordOutcomeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.RecordOutcomeResponse:
        """See SafetyService.RecordOutcome."""
        cfg = await self._breaker(request.name)
        now_ms = int(time.time() * 1000)
        st = await self._breakers.record(
            keys.named_breaker(cfg.name),
            cfg.name,
            ok=request.success,
            failure_threshold=cfg.failure_threshold,
            open_ms=cfg.open_duration.ToMilliseconds(),
            half_open_successes=cfg.half_open_max_calls,
            now_ms=now_ms,
        )
        metrics.child(
            metrics.BREAKER_OUTCOMES, "success" if request.success else "failure"
        ).inc()
        return S.RecordOutcomeResponse(breaker=breaker_view(cfg, st, now_ms))

    async def GetCircuitBreaker(
        self,
        request: safety_pb2.GetCircuitBreakerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.GetCircuitBreakerResponse:
        """See SafetyService.GetCircuitBreaker."""
        _required_name(request.name)
        raw = await self._redis.hgetall(keys.named_breaker(request.name))
        h = {_b(k): _b(v) for k, v in raw.items()}
        if b"cfg" not in h:
            await self._breaker(request.name)  # raises NotFound
        cfg = S.CircuitBreaker.FromString(h[b"cfg"])
        st = TargetState.from_hash(request.name, h)
        return S.GetCircuitBreakerResponse(
            breaker=breaker_view(cfg, st, int(time.time() * 1000))
        )

    async def ListCircuitBreakers(
        self,
        request: safety_pb2.ListCircuitBreakersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.ListCircuitBreakersResponse:
        """See SafetyService.ListCircuitBreakers."""
        size = page_size(request.page_size)
        after = decode_token(request.page_token)
        names = sorted(_s(n) for n in await self._redis.smembers(keys.BREAKERS))
        names = [n for n in names if n > after]
        page, more = names[:size], len(names) > size
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in page:
                pipe.hgetall(keys.named_breaker(n))
            raw = await pipe.execute()
        now_ms = int(time.time() * 1000)
        out = [
            breaker_view(
                S.CircuitBreaker.FromString(h[b"cfg"]), TargetState.from_hash(n, h), now_ms
            )
            for n, h in zip(page, raw, strict=True)
            if b"cfg" in h
        ]
        return S.ListCircuitBreakersResponse(
            breakers=out, next_page_token=encode_token(page[-1]) if more and page else ""
        )

    # ---- named rate limiters ---------------------------------------------------
    async def CreateRateLimiter(
        self,
        request: safety_pb2.CreateRateLimiterRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.CreateRateLimiterResponse:
        """See SafetyService.CreateRateLimiter."""
        lim = request.limiter
        check_name(lim.name, "limiter.name")
        bad: dict[str, str] = {}
        if lim.max_requests < 1:
            bad["limiter.max_requests"] = "must be at least 1"
        if not lim.HasField("window") or lim.window.ToMilliseconds() <= 0:
            bad["limiter.window"] = "must be positive (at least 1ms)"
        if bad:
            raise InvalidArgument("invalid rate limiter", field_violations=bad)
        cfg = S.RateLimiter(
            name=lim.name, max_requests=lim.max_requests, window=lim.window, per_key=lim.per_key
        )
        cfg.create_time.GetCurrentTime()
        created = await self._redis.hsetnx(
            keys.named_limiter(lim.name), "cfg", cfg.SerializeToString()
        )
        if not created:
            raise AlreadyExists(f"rate limiter {lim.name!r} already exists")
        await self._redis.sadd(keys.LIMITERS, lim.name)
        self._limiter_cfg[lim.name] = cfg
        return S.CreateRateLimiterResponse(limiter=cfg)

    async def _limiter(self, name: str) -> safety_pb2.RateLimiter:
        _required_name(name)
        cfg = self._limiter_cfg.get(name)
        if cfg is None:
            raw = await self._redis.hget(keys.named_limiter(name), "cfg")
            if raw is None:
                raise NotFound(
                    f"rate limiter {name!r} not found; create it with CreateRateLimiter",
                    resource_type="RateLimiter",
                    resource_name=name,
                )
            cfg = self._limiter_cfg[name] = S.RateLimiter.FromString(_b(raw))
        return cfg

    async def AcquirePermit(
        self,
        request: safety_pb2.AcquirePermitRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.AcquirePermitResponse:
        """See SafetyService.AcquirePermit."""
        cfg = await self._limiter(request.name)
        count = request.count or 1
        bad: dict[str, str] = {}
        if cfg.per_key and not request.key:
            bad["key"] = f"empty; limiter {cfg.name!r} is per key"
        if len(request.key) > MAX_KEY_CHARS:
            bad["key"] = f"longer than {MAX_KEY_CHARS} characters"
        if count > cfg.max_requests:
            bad["count"] = f"{count} exceeds max_requests {cfg.max_requests}"
        if bad:
            raise InvalidArgument("invalid permit request", field_violations=bad)
        key = request.key if cfg.per_key else ""
        window_s = cfg.window.ToMilliseconds() / 1000.0
        verdict = await self._bucket.take_from(
            keys.limiter_bucket(cfg.name, key),
            rate_per_s=cfg.max_requests / window_s,
            burst=cfg.max_requests,
            cost=count,
        )
        if not verdict.allowed:
            metrics.child(metrics.PERMITS, "denied").inc()
            raise ResourceExhausted(
                f"rate limiter {cfg.name!r}: no {count} permit(s) for key {key!r}; "
                f"retry in {verdict.retry_after_ms} ms",
                retry_after_s=verdict.retry_after_ms / 1000.0,
                quota_subject=f"{cfg.name}/{key}",
                quota_description=f"{cfg.max_requests} per {window_s:g}s",
                details=[
                    error_info(
                        ErrorReason.ERROR_REASON_RATE_LIMITED,
                        metadata={"limiter": cfg.name, "key": key},
                    )
                ],
            )
        metrics.child(metrics.PERMITS, "granted").inc()
        return S.AcquirePermitResponse(granted=True)

    async def GetRateLimiter(
        self,
        request: safety_pb2.GetRateLimiterRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> safety_pb2.GetRateLimiterResponse:
        """See SafetyService.GetRateLimiter."""
        return S.GetRateLimiterResponse(limiter=await self._limiter(request.name))
