"""RegistryService: validation and authorization in front of the store,
the discovery mirror and the watch hub."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.rpc import code_pb2

from agentmesh.catalog import selector_violations
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.runtime.agent_ids import MAX_ID_LEN
from agentmesh.runtime.errors import (
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
)
from agentmesh.server.registry import a2a_card, metrics
from agentmesh.server.registry.discovery import CatalogMirror, selector_matches
from agentmesh.server.registry.settings import RegistrySettings
from agentmesh.server.registry.store import RegistryStore
from agentmesh.server.registry.validation import (
    agent_id_violation,
    authorize_agent,
    check_agent_id,
    load_violations,
    validate_agent,
)
from agentmesh.server.registry.watch import WatchHub

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_OUTPUT_ONLY = (
    "status", "health_score", "load", "register_time", "update_time",
    "last_heartbeat_time", "revision", "protocol",
)
MAX_BATCH = 1000


def _page_token(agent_id: str) -> str:
    return base64.urlsafe_b64encode(agent_id.encode()).decode()


def _parse_page_token(token: str) -> str:
    """The agent id a `next_page_token` resumes after.

    The token is a lexicographic cursor over the catalog, so any id the catalog
    holds is a valid one, including ids written before today's id rule (or by a
    tool writing records directly): the token is checked for being one this API
    could have returned (base64 of a non-empty UTF-8 string of at most
    MAX_ID_LEN characters), not re-validated as a new agent id.
    """
    try:
        after = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            "bad page_token", field_violations={"page_token": "not a token this API returned"}
        ) from exc
    if not after or len(after) > MAX_ID_LEN or not after.isprintable():
        raise InvalidArgument(
            "bad page_token", field_violations={"page_token": "not a token this API returned"}
        )
    return after


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """The RegistryService implementation.

    Args:
        store: the Redis catalog.
        mirror: the discovery mirror.
        hub: the watch fan-out.
        settings: registry settings.
    """

    def __init__(
        self, store: RegistryStore, mirror: CatalogMirror, hub: WatchHub,
        settings: RegistrySettings,
    ) -> None:
        self.store = store
        self.mirror = mirror
        self.hub = hub
        self.settings = settings

    async def RegisterAgent(
        self, request: registry_pb2.RegisterAgentRequest, context: Ctx
    ) -> registry_pb2.RegisterAgentResponse:
        """See registry.proto."""
        metrics.child(metrics.QUERIES, "register").inc()
        agent = registry_pb2.Agent()
        agent.CopyFrom(request.agent)
        for name in _OUTPUT_ONLY:
            agent.ClearField(name)  # type: ignore[arg-type]
        validate_agent(agent)
        authorize_agent(agent.agent_id)
        interval_ms = (
            agent.heartbeat_interval.ToMilliseconds() or self.settings.heartbeat_interval_ms
        )
        agent.heartbeat_interval.FromMilliseconds(interval_ms)
        res = await self.store.register(agent, interval_ms=interval_ms)
        self.mirror.want(res.agent.revision)
        return registry_pb2.RegisterAgentResponse(agent=res.agent, created=res.created)

    async def RegisterA2AAgent(
        self, request: registry_pb2.RegisterA2AAgentRequest, context: Ctx
    ) -> registry_pb2.RegisterA2AAgentResponse:
        """See registry.proto; the card mapping is in a2a_card."""
        metrics.child(metrics.QUERIES, "register_a2a").inc()
        check_agent_id(request.agent_id)
        a2a_card.check_request(request)
        authorize_agent(request.agent_id)
        card = await a2a_card.fetch_card(
            request.agent_card_url, timeout_s=a2a_card.CARD_TIMEOUT_S
        )
        agent = a2a_card.agent_of(request, card, a2a_card.check_card(
            card, card_url=request.agent_card_url
        ))
        validate_agent(agent)
        interval_ms = (
            agent.heartbeat_interval.ToMilliseconds() or self.settings.heartbeat_interval_ms
        )
        agent.heartbeat_interval.FromMilliseconds(interval_ms)
        res = await self.store.register(agent, interval_ms=interval_ms)
        await a2a_card.remember(self.store, agent.agent_id)
        self.mirror.want(res.agent.revision)
        return registry_pb2.RegisterA2AAgentResponse(
            agent=res.agent, created=res.created, agent_card_json=a2a_card.card_json(card)
        )

    async def DeregisterAgent(
        self, request: registry_pb2.DeregisterAgentRequest, context: Ctx
    ) -> registry_pb2.DeregisterAgentResponse:
        """See registry.proto."""
        metrics.child(metrics.QUERIES, "deregister").inc()
        check_agent_id(request.agent_id)
        authorize_agent(request.agent_id)
        agent = await self.store.deregister(
            request.agent_id, reason=request.reason[:256] or "deregistered"
        )
        if agent is None:
            raise NotFound(f"agent {request.agent_id!r} is not registered",
                           resource_type="agent", resource_name=request.agent_id)
        self.mirror.want(agent.revision)
        return registry_pb2.DeregisterAgentResponse(agent=agent)

    async def GetAgent(
        self, request: registry_pb2.GetAgentRequest, context: Ctx
    ) -> registry_pb2.GetAgentResponse:
        """See registry.proto."""
        metrics.child(metrics.QUERIES, "get").inc()
        check_agent_id(request.agent_id)
        agent = await self.store.get(request.agent_id)
        if agent is None:
            raise NotFound(f"agent {request.agent_id!r} is not registered",
                           resource_type="agent", resource_name=request.agent_id)
        return registry_pb2.GetAgentResponse(agent=agent)

    async def ListAgents(
        self, request: registry_pb2.ListAgentsRequest, context: Ctx
    ) -> registry_pb2.ListAgentsResponse:
        """See registry.proto. With a status filter a page may hold fewer than page_size."""
        metrics.child(metrics.QUERIES, "list").inc()
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument("bad page_size",
                                  field_violations={"page_size": "must be 0-1000"})
        size = request.page_size or 100
        after = _parse_page_token(request.page_token) if request.page_token else ""
        revision = await self.store.revision()
        ids = await self.store.list_ids(after=after, count=size + 1)
        more = len(ids) > size
        ids = ids[:size]
        agents = [a for a in await self.store.get_many(ids) if a is not None]
        if request.status:
            agents = [a for a in agents if a.status == request.status]
        return registry_pb2.ListAgentsResponse(
            agents=agents,
            next_page_token=_page_token(ids[-1]) if more and ids else "",
            total_size=await self.store.count(),
            revision=revision,
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Ctx
    ) -> registry_pb2.HeartbeatResponse:
        """See registry.proto."""
        check_agent_id(request.agent_id)
        if request.HasField("load"):
            bad = load_violations(request.load)
            if bad:
                metrics.child(metrics.HEARTBEATS, "invalid").inc()
                raise InvalidArgument("invalid load", field_violations=bad)
        try:
            authorize_agent(request.agent_id)
        except PermissionDenied:
            metrics.child(metrics.HEARTBEATS, "denied").inc()
            raise
        out = await self.store.heartbeat(
            request.agent_id, request.load if request.HasField("load") else None
        )
        if out is None:
            metrics.child(metrics.HEARTBEATS, "not_found").inc()
            raise NotFound(f"agent {request.agent_id!r} is not registered; register again",
                           resource_type="agent", resource_name=request.agent_id)
        metrics.child(metrics.HEARTBEATS, "ok").inc()
        self.mirror.want(out.revision)
        resp = registry_pb2.HeartbeatResponse(
            status=registry_pb2.AgentStatus.Value("AGENT_STATUS_" + out.status),
            health_score=out.health,
        )
        resp.heartbeat_interval.FromMilliseconds(out.interval_ms)
        return resp

    async def HeartbeatStream(
        self, request_iterator: AsyncIterator[registry_pb2.HeartbeatStreamRequest], context: Ctx
    ) -> AsyncIterator[registry_pb2.HeartbeatStreamResponse]:
        """See registry.proto."""
        async for req in request_iterator:
            results: list[registry_pb2.HeartbeatResult] = []
            todo: list[tuple[int, str, common_pb2.LoadMetrics | None]] = []
            for i, hb in enumerate(req.heartbeats):
                code, msg = code_pb2.OK, ""
                if i >= MAX_BATCH:
                    code, msg = code_pb2.INVALID_ARGUMENT, "over 1000 heartbeats in one message"
                elif why := agent_id_violation(hb.agent_id):
                    code, msg = code_pb2.INVALID_ARGUMENT, f"agent_id: {why}"
                elif hb.HasField("load") and (bad := load_violations(hb.load)):
                    code, msg = code_pb2.INVALID_ARGUMENT, "; ".join(f"{f}: {d}" for f, d in bad)
                else:
                    try:
                        authorize_agent(hb.agent_id)
                    except PermissionDenied as exc:
                        code, msg = code_pb2.PERMISSION_DENIED, exc.message
                results.append(registry_pb2.HeartbeatResult(agent_id=hb.agent_id, code=code,
                                                            message=msg))
                if code == code_pb2.OK:
                    todo.append((i, hb.agent_id, hb.load if hb.HasField("load") else None))
                else:
                    metrics.HEARTBEATS.labels(
                        "denied" if code == code_pb2.PERMISSION_DENIED else "invalid"
                    ).inc()
            outcomes = await self.store.heartbeat_many([(a, load) for _, a, load in todo])
            ok = 0
            for (i, agent_id, _), out in zip(todo, outcomes, strict=True):
                r = results[i]
                if out is None:
                    r.code = code_pb2.NOT_FOUND
                    r.message = f"agent {agent_id!r} is not registered; register again"
                    metrics.child(metrics.HEARTBEATS, "not_found").inc()
                else:
                    ok += 1
                    self.mirror.want(out.revision)
                    r.status = registry_pb2.AgentStatus.Value("AGENT_STATUS_" + out.status)
                    r.health_score = out.health
            if ok:
                metrics.child(metrics.HEARTBEATS, "ok").inc(ok)
            yield registry_pb2.HeartbeatStreamResponse(results=results)

    async def DiscoverAgents(
        self, request: registry_pb2.DiscoverAgentsRequest, context: Ctx
    ) -> registry_pb2.DiscoverAgentsResponse:
        """See registry.proto."""
        start = time.perf_counter()
        metrics.child(metrics.QUERIES, "discover").inc()
        bad = selector_violations(request.selector)
        if request.max_results < 0:
            bad.append(("max_results", "must not be negative"))
        if bad:
            raise InvalidArgument("invalid discovery query", field_violations=bad)
        resp = await self.mirror.discover(
            request.selector, max_results=request.max_results,
            include_inactive=request.include_inactive,
        )
        metrics.DISCOVERY_LATENCY.observe((time.perf_counter() - start) * 1000.0)
        return resp

    async def GetRegistryStats(
        self, request: registry_pb2.GetRegistryStatsRequest, context: Ctx
    ) -> registry_pb2.GetRegistryStatsResponse:
        """See registry.proto."""
        metrics.child(metrics.QUERIES, "stats").inc()
        return await self.mirror.stats()

    async def WatchAgents(
        self, request: registry_pb2.WatchAgentsRequest, context: Ctx
    ) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
        """See registry.proto."""
        metrics.child(metrics.QUERIES, "watch").inc()
        bad = selector_violations(request.selector)
        if bad:
            raise InvalidArgument("invalid watch selector", field_violations=bad)
        current = await self.store.revision()
        if request.start_revision == 0:
            nxt = current + 1
        else:
            nxt = request.start_revision
            first = await self.store.first_revision()
            if nxt > current + 1 or (nxt <= current and (first == 0 or nxt < first)):
                raise OutOfRange(
                    f"revision {nxt} is outside the retained history "
                    f"[{first}, {current + 1}]; resync with ListAgents and watch from its "
                    "revision + 1"
                )
        selector = request.selector
        while True:
            token = self.hub.token()
            events = await self.store.events(start=nxt, count=500)
            if events and events[0].revision != nxt:
                raise OutOfRange(
                    f"events from revision {nxt} were trimmed; resync with ListAgents"
                )
            for ev in events:
                nxt = ev.revision + 1
                if selector_matches(ev.event.agent, selector):
                    yield registry_pb2.WatchAgentsResponse(event=ev.event)
            if not events:
                await self.hub.wait_change(token, timeout_s=5.0)
