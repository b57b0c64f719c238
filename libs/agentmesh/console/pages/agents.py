"""Agents: the catalog with health, status, capabilities, load and the router's
breaker state per agent, filterable; one agent with its catalog history."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.console.drain import drain
from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import collect, enum_choices, enum_value
from agentmesh.console.views import render
from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.errors import OutOfRange

STATUS_PREFIX = "AGENT_STATUS_"
#: Most catalog events one agent page scans for that agent's history.
MAX_HISTORY_SCAN = 20_000


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


routes = [
    Route("/agents", agent_list),
    Route("/agents/{agent_id}", agent_detail),
]
