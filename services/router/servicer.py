"""RouterService: the gRPC surface over the routing engine and the invoker."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agentmesh import catalog
from agentmesh.router.v1 import router_pb2, router_pb2_grpc
from agentmesh.runtime.agents import AgentClient
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.errors import (
    AgentMeshError,
    InvalidArgument,
    NotFound,
)
from agentmesh.runtime.routing.candidates import load_is_stale
from agentmesh.runtime.routing.engine import STRATEGY_LABEL, Decision
from agentmesh.runtime.routing.rules import decode_token, encode_token, page_size
from agentmesh.runtime.server import Daemon
from agentmesh.server.router import metrics
from agentmesh.server.router.invoker import Invoker
from agentmesh.server.router.settings import RouterSettings

R = router_pb2
MAX_BATCH = 10_000


def _response(d: Decision) -> router_pb2.RouteResponse:
    return R.RouteResponse(
        targets=[
            R.RouteTarget(agent_id=c.agent_id, endpoint=c.endpoint, health_score=c.health)
            for c in d.targets
        ],
        strategy=d.strategy,
        rule_name=d.rule_name,
        cache_hit=d.cache_hit,
        panic=d.eligible.panic,
        safety_violations=d.violations,
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """RouterService over the registry's Redis state.

    Args:
        daemon: the hosting daemon (Redis client, outgoing channel settings).
        settings: router tunables.
    """

    def __init__(self, daemon: Daemon, settings: RouterSettings) -> None:
        self._redis = daemon.redis()
        self._settings = settings
        cfg = daemon.config
        cert, key = cfg.client_cert_pair
        self.client = AgentClient.create(
            self._redis,
            settings,
            lambda target: create_channel(
                target,
                token=cfg.auth_token,
                tls_ca_file=cfg.tls_ca_file,
                client_cert_file=cert,
                client_key_file=key,
            ),
            identity="router",
        )
        self.engine = self.client.engine
        #: The router's Redis, shared with the SafetyService.
        self.redis = self._redis
        self.invoker = Invoker(self.client, settings)
        self._ok_counters: dict[int, Any] = {}

    async def start(self) -> None:
        """Load rules, start refreshing candidate pools."""
        await self.engine.start()

    async def stop(self) -> None:
        """Stop refreshing and close agent channels."""
        await self.engine.stop()
        await self.invoker.close()

    # ---- admission ------------------------------------------------------------
    async def _admit(self, msg: router_pb2.RouteMessage, *, cost: int = 1) -> None:
        await self.client.admit(msg, cost=cost)

    async def _rate_limit(self, sender_id: str, cost: int) -> None:
        await self.client.admit(router_pb2.RouteMessage(sender_id=sender_id), cost=cost)

    async def _decide(self, req: router_pb2.RouteRequest) -> router_pb2.RouteResponse:
        t0 = time.perf_counter()
        label = STRATEGY_LABEL.get(req.strategy, "INVALID")
        try:
            d = await self.engine.decide(req)
        except AgentMeshError as e:
            metrics.ROUTING_MESSAGES.labels(label, e.code.name).inc()
            raise
        metrics.ROUTING_LATENCY.observe((time.perf_counter() - t0) * 1000)
        ok = self._ok_counters.get(d.strategy)
        if ok is None:  # label lookups take a lock; keep the children
            ok = self._ok_counters[d.strategy] = metrics.ROUTING_MESSAGES.labels(
                STRATEGY_LABEL[d.strategy], "OK"
            )
        ok.inc()
        return _response(d)

    # ---- routing ----------------------------------------------------------------
    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.RouteResponse:
        """See RouterService.Route."""
        await self._admit(request.message)
        return await self._decide(request)

    async def _result(self, req: router_pb2.RouteRequest) -> router_pb2.RouteResult:
        try:
            self.engine.check_size(req.message)
            return R.RouteResult(decision=await self._decide(req))
        except AgentMeshError as e:
            return R.RouteResult(error=R.RouteError(code=e.code.value[0], message=e.message))

    async def RouteBatch(
        self, request: router_pb2.RouteBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.RouteBatchResponse:
        """See RouterService.RouteBatch."""
        n = len(request.requests)
        if n > MAX_BATCH:
            raise InvalidArgument(
                f"a batch holds at most {MAX_BATCH} requests, got {n}",
                field_violations={"requests": f"{n} > {MAX_BATCH}"},
            )
        if n:
            await self._rate_limit(request.requests[0].message.sender_id, n)
        return R.RouteBatchResponse(results=[await self._result(r) for r in request.requests])

    async def RouteStream(
        self,
        request_iterator: AsyncIterator[router_pb2.RouteStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        """See RouterService.RouteStream."""
        async for item in request_iterator:
            await self._rate_limit(item.request.message.sender_id, 1)
            yield R.RouteStreamResponse(
                request_id=item.request_id, result=await self._result(item.request)
            )

    async def Invoke(
        self, request: router_pb2.InvokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.InvokeResponse:
        """See RouterService.Invoke."""
        await self._admit(request.message)
        label = STRATEGY_LABEL.get(request.strategy, "INVALID")
        try:
            resp = await self.invoker.invoke(request)
        except AgentMeshError as e:
            metrics.ROUTING_MESSAGES.labels(label, e.code.name).inc()
            raise
        metrics.child(metrics.ROUTING_MESSAGES, STRATEGY_LABEL[resp.strategy], "OK").inc()
        return resp

    async def ScatterGather(
        self,
        request: router_pb2.ScatterGatherRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.ScatterGatherResponse:
        """See RouterService.ScatterGather."""
        await self._admit(request.message)
        return await self.invoker.scatter_gather(request)

    # ---- route rules ------------------------------------------------------------
    async def CreateRouteRule(
        self,
        request: router_pb2.CreateRouteRuleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.CreateRouteRuleResponse:
        """See RouterService.CreateRouteRule."""
        return R.CreateRouteRuleResponse(
            rule=await self.engine.rules.create_route_rule(request.rule)
        )

    async def GetRouteRule(
        self, request: router_pb2.GetRouteRuleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.GetRouteRuleResponse:
        """See RouterService.GetRouteRule."""
        return R.GetRouteRuleResponse(rule=await self.engine.rules.get_route_rule(request.name))

    async def ListRouteRules(
        self,
        request: router_pb2.ListRouteRulesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.ListRouteRulesResponse:
        """See RouterService.ListRouteRules."""
        size = page_size(request.page_size)
        rules, token = await self.engine.rules.list_route_rules(
            size=size, token=request.page_token
        )
        return R.ListRouteRulesResponse(rules=rules, next_page_token=token)

    async def DeleteRouteRule(
        self,
        request: router_pb2.DeleteRouteRuleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.DeleteRouteRuleResponse:
        """See RouterService.DeleteRouteRule."""
        await self.engine.rules.delete_route_rule(request.name)
        return R.DeleteRouteRuleResponse()

    # ---- safety rules -----------------------------------------------------------
    async def CreateSafetyRule(
        self,
        request: router_pb2.CreateSafetyRuleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.CreateSafetyRuleResponse:
        """See RouterService.CreateSafetyRule."""
        return R.CreateSafetyRuleResponse(
            rule=await self.engine.rules.create_safety_rule(request.rule)
        )

    async def GetSafetyRule(
        self,
        request: router_pb2.GetSafetyRuleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.GetSafetyRuleResponse:
        """See RouterService.GetSafetyRule."""
        return R.GetSafetyRuleResponse(
            rule=await self.engine.rules.get_safety_rule(request.name)
        )

    async def ListSafetyRules(
        self,
        request: router_pb2.ListSafetyRulesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.ListSafetyRulesResponse:
        """See RouterService.ListSafetyRules."""
        size = page_size(request.page_size)
        rules, token = await self.engine.rules.list_safety_rules(
            size=size, token=request.page_token
        )
        return R.ListSafetyRulesResponse(rules=rules, next_page_token=token)

    async def DeleteSafetyRule(
        self,
        request: router_pb2.DeleteSafetyRuleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.DeleteSafetyRuleResponse:
        """See RouterService.DeleteSafetyRule."""
        await self.engine.rules.delete_safety_rule(request.name)
        return R.DeleteSafetyRuleResponse()

    # ---- load and target state ----------------------------------------------------
    async def ReportLoad(
        self, request: router_pb2.ReportLoadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.ReportLoadResponse:
        """See RouterService.ReportLoad."""
        if not request.agent_id:
            raise InvalidArgument("agent_id is required", field_violations={"agent_id": "empty"})
        values = {f: float(getattr(request.load, f)) for f in catalog.LOAD_FIELDS}
        bad = {
            f"load.{f}": "must be finite and >= 0"
            for f, v in values.items()
            if not math.isfinite(v) or v < 0
        }
        if values["error_rate"] > 1:
            bad["load.error_rate"] = "must be in [0, 1]"
        if bad:
            raise InvalidArgument("invalid load figures", field_violations=bad)
        if not await self._redis.exists(catalog.agent_key(request.agent_id)):
            raise NotFound(
                f"agent {request.agent_id!r} is not registered",
                resource_type="Agent",
                resource_name=request.agent_id,
            )
        mapping: dict[str, str] = {f: repr(v) for f, v in values.items()}
        mapping["updated_ms"] = str(int(time.time() * 1000))
        await self._redis.hset(catalog.load_key(request.agent_id), mapping=mapping)  # type: ignore[arg-type]
        return R.ReportLoadResponse()

    async def ListTargetStates(
        self,
        request: router_pb2.ListTargetStatesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.ListTargetStatesResponse:
        """See RouterService.ListTargetStates."""
        size = page_size(request.page_size)
        after = decode_token(request.page_token)
        states, last = await self.engine.outcomes.list_states(after=after, limit=size)
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as p:
            for st in states:
                p.hget(catalog.load_key(st.agent_id), "updated_ms")
            reported = await p.execute()
        max_age_ms = self.engine.settings.max_load_age_ms
        out = []
        for st, updated in zip(states, reported, strict=True):
            ts = R.TargetState(
                agent_id=st.agent_id,
                breaker_state=R.BreakerState.Value("BREAKER_STATE_" + st.effective_breaker(now_ms)),
                consecutive_failures=st.consecutive_failures,
                ejected=st.is_ejected(now_ms),
                window_successes=st.window_successes,
                window_failures=st.window_failures,
                ejection_count=st.ejections,
            )
            if updated is not None:
                ts.load_report_time.FromMilliseconds(int(float(updated)))
                ts.load_stale = load_is_stale(
                    {b"updated_ms": updated}, now_ms=now_ms, max_age_ms=max_age_ms
                )
            if st.is_ejected(now_ms):
                ts.ejected_until.FromMilliseconds(st.ejected_until_ms)
            out.append(ts)
        return R.ListTargetStatesResponse(
            states=out, next_page_token=encode_token(last) if last else ""
        )
