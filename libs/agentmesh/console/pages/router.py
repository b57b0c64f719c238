"""Router: route rules, safety rules, circuit breakers, the router's per-agent
breaker states and rate limiters."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import collect
from agentmesh.console.views import render
from agentmesh.runtime.errors import NotFound


async def router_page(request: Request) -> Response:
    """GET /router?limiter=NAME (a rate limiter to look up by name)."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    limit = mesh.settings.list_limit
    c = mesh.client
    rules, _ = await collect(c.list_route_rules, "rules", limit=limit, metadata=md)
    safety, _ = await collect(c.list_safety_rules, "rules", limit=limit, metadata=md)
    breakers, _ = await collect(c.list_circuit_breakers, "breakers", limit=limit, metadata=md)
    targets, _ = await collect(c.list_target_states, "states", limit=limit, metadata=md)
    asked = request.query_params.get("limiter", "").strip()
    names = list(dict.fromkeys([*mesh.settings.rate_limiters, *([asked] if asked else [])]))
    limiters: list[tuple[str, Any]] = []
    for name in names:
        # The API lists no limiters: each is read by name; an unknown one says so.
        try:
            limiters.append((name, (await c.get_rate_limiter(name=name, metadata=md)).limiter))
        except NotFound:
            limiters.append((name, None))
    return render(request, "router.html", {
        "rules": rules, "safety": safety, "breakers": breakers, "targets": targets,
        "limiters": limiters, "asked": asked,
    })


routes = [Route("/router", router_page)]
