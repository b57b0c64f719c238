"""Swarms: the list by state; one swarm's convergence plot (from WatchSwarm's
retained iterations), roles, partition progress per agent, and a stop button."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.console.drain import drain
from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import (
    collect,
    cross_site,
    enum_choices,
    enum_value,
    see_other,
)
from agentmesh.console.svg import convergence_plot
from agentmesh.console.views import render
from agentmesh.swarm.v1 import swarm_pb2

STATE_PREFIX = "SWARM_STATE_"
#: WatchSwarm keeps the last 10,000 iterations; the plot reads at most these.
MAX_ITERATIONS = 10_000
ACTIVE = frozenset({swarm_pb2.SWARM_STATE_PENDING, swarm_pb2.SWARM_STATE_RUNNING})


async def swarm_list(request: Request) -> Response:
    """GET /swarms?state=RUNNING."""
    mesh = mesh_of(request)
    state = request.query_params.get("state", "")
    value = enum_value(swarm_pb2.SwarmState, STATE_PREFIX, state)
    swarms, more = await collect(
        mesh.client.list_swarms, "swarms", limit=mesh.settings.list_limit,
        states=[value] if value is not None else [], metadata=mesh.metadata(request),
    )
    return render(request, "swarms.html", {
        "swarms": swarms, "more": more, "state": state,
        "states": enum_choices(swarm_pb2.SwarmState, STATE_PREFIX),
    })


async def swarm_detail(request: Request) -> Response:
    """GET /swarms/{swarm_id}."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    swarm_id = request.path_params["swarm_id"]
    swarm = (await mesh.client.get_swarm(swarm_id=swarm_id, metadata=md)).swarm
    iterations, _ = await drain(
        mesh.client.watch_swarm(swarm_id=swarm_id, start_iteration=1, metadata=md),
        idle_s=mesh.settings.stream_idle_s, total_s=mesh.settings.stream_total_s,
        max_items=MAX_ITERATIONS,
    )
    stats = [r.stats for r in iterations if r.HasField("stats")]
    latest = stats[-1] if stats else swarm.stats
    partitions = swarm.task.HasField("partition_work")
    plot = None if partitions else convergence_plot(
        [(s.iteration, s.best_fitness) for s in stats],
        title=f"Best fitness per iteration of swarm {swarm_id}",
    )
    by_agent = sorted(swarm.partitions.partitions_by_agent.items())
    return render(request, "swarm.html", {
        "swarm": swarm, "latest": latest, "plot": plot, "partitions": partitions,
        "by_agent": by_agent, "iterations": len(stats),
        "active": swarm.state in ACTIVE,
    })


async def swarm_stop(request: Request) -> Response:
    """POST /swarms/{swarm_id}/stop: StopSwarm (its owner or an admin only)."""
    if (refused := cross_site(request)) is not None:
        return refused
    mesh = mesh_of(request)
    swarm_id = request.path_params["swarm_id"]
    await mesh.client.stop_swarm(swarm_id=swarm_id, metadata=mesh.metadata(request))
    return see_other(f"/swarms/{swarm_id}")


routes = [
    Route("/swarms", swarm_list),
    Route("/swarms/{swarm_id}", swarm_detail),
    Route("/swarms/{swarm_id}/stop", swarm_stop, methods=["POST"]),
]
