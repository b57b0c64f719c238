"""Agents: the catalog with health, status, capabilities, load and the router's
breaker state per agent, filterable; one agent with its catalog history and,
live over SSE, each heartbeat it sends while the page is open."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.console.drain import drain
from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import collect, enum_choices, enum_value
from agentmesh.console.views import render, templates
from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.errors import AgentMeshError, OutOfRange

STATUS_PREFIX = "AGENT_STATUS_"
#: Most catalog events one agent page scans for that agent's history.
MAX_HISTORY_SCAN = 20_000
#: A live heartbeat stream ends after this long (the page can reload), seconds.
STREAM_MAX_S = 3600.0


def matches(agent: registry_pb2.Agent, q: str, capability: str) -> bool:
    """The list's text filter: `q` in the id, type, capabilities or tags (any
    case), and `capability` among the capabilities when given."""
    if capability and capability not in agent.capabilities:
        return False
    if not q:
        return True
    q = q.lower()
    hay = [agent.agent_id, agent.agent_type, *agent.capabilities, *agent.tags]
    return any(q in h.lower() for h in hay)


async def target_states(request: Request) -> dict[str, Any]:
    """The router's view of each agent (breaker, ejection), by agent id."""
    mesh = mesh_of(request)
    states, _ = await collect(
        mesh.client.list_target_states, "states", limit=mesh.settings.list_limit,
        metadata=mesh.metadata(request),
    )
    return {s.agent_id: s for s in states}


async def agent_list(request: Request) -> Response:
    """GET /agents?q=TEXT&status=ACTIVE&capability=CAP."""
    mesh = mesh_of(request)
    q = request.query_params.get("q", "").strip()
    status = request.query_params.get("status", "")
    capability = request.query_params.get("capability", "").strip()
    value = enum_value(registry_pb2.AgentStatus, STATUS_PREFIX, status)
    fields: dict[str, Any] = {"status": value} if value is not None else {}
    agents, more = await collect(
        mesh.client.list_agents, "agents", limit=mesh.settings.list_limit,
        metadata=mesh.metadata(request), **fields,
    )
    breakers = await target_states(request)
    shown = [a for a in agents if matches(a, q, capability)]
    return render(request, "agents.html", {
        "agents": shown, "total": len(agents), "more": more, "breakers": breakers,
        "q": q, "status": status, "capability": capability,
        "statuses": enum_choices(registry_pb2.AgentStatus, STATUS_PREFIX),
        "capabilities": sorted({c for a in agents for c in a.capabilities}),
    })


async def agent_detail(request: Request) -> Response:
    """GET /agents/{agent_id}: the agent, its breaker, and its health and status
    history from the catalog's retained events (WatchAgents from revision 1)."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    agent_id = request.path_params["agent_id"]
    agent = (await mesh.client.get_agent(agent_id=agent_id, metadata=md)).agent
    breakers = await target_states(request)
    history: list[Any] = []
    note = ""
    try:
        history, _ = await drain(
            mesh.client.watch_agents(start_revision=1, metadata=md),
            idle_s=mesh.settings.stream_idle_s, total_s=mesh.settings.stream_total_s,
            max_items=MAX_HISTORY_SCAN, keep=lambda r: r.event.agent.agent_id == agent_id,
        )
    except OutOfRange as e:
        note = f"The catalog no longer keeps its first events ({e.message})."
    return render(request, "agent.html", {
        "agent": agent, "breaker": breakers.get(agent_id),
        "history": [r.event for r in history], "note": note,
    })


def heartbeat_row(agent: registry_pb2.Agent) -> str:
    """One row of the live heartbeat table (the page's script appends it)."""
    return templates.get_template("agent_heartbeat.html").render(a=agent)


async def agent_stream(request: Request) -> Response:
    """GET /agents/{agent_id}/stream: server-sent `heartbeat` events, one per
    heartbeat the registry records (GetAgent each heartbeat interval, at most
    twice a second), with the health, status and load it brought; for as long
    as the page listens, up to STREAM_MAX_S."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    agent_id = request.path_params["agent_id"]
    first = (await mesh.client.get_agent(agent_id=agent_id, metadata=md)).agent
    interval_s = max(0.5, first.heartbeat_interval.ToMilliseconds() / 1000 or 1.0)

    async def beats() -> AsyncIterator[dict[str, Any]]:
        seen = None
        deadline = time.monotonic() + STREAM_MAX_S
        while time.monotonic() < deadline:
            try:
                agent = (await mesh.client.get_agent(agent_id=agent_id, metadata=md)).agent
            except AgentMeshError as exc:
                yield {"event": "mesh-error", "data": json.dumps(
                    {"code": exc.code.name, "message": exc.message})}
                return
            stamp = agent.last_heartbeat_time.ToNanoseconds()
            if stamp != seen:
                seen = stamp
                yield {"event": "heartbeat", "data": json.dumps({"html": heartbeat_row(agent)})}
            await asyncio.sleep(interval_s)
        yield {"event": "end", "data": "{}"}

    return EventSourceResponse(beats(), ping=15)


routes = [
    Route("/agents", agent_list),
    Route("/agents/{agent_id}", agent_detail),
    Route("/agents/{agent_id}/stream", agent_stream),
]
