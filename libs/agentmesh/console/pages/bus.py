"""Bus: topics with partitions (and consumer lag from the gateway's metrics
when configured), one topic's dead letters with redrive."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import collect, cross_site, see_other
from agentmesh.console.views import render

DLQ_SUFFIX = ".dlq"
#: The gateway's gauge of unacked-and-unread records per consumer group.
LAG_METRIC = "message_bus_consumer_lag"


def _scrape(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return str(r.read().decode())


async def consumer_lag(url: str, *, timeout_s: float) -> tuple[dict[str, float], str]:
    """Lag per consumer group from the bus gateway's Prometheus endpoint.

    Returns:
        ({group: records behind}, "" or why it could not be read). The
        Subscribe API has no lag call; the gateway publishes the gauge it
        keeps for its own subscriptions (one replica's view).
    """
    try:
        text = await asyncio.to_thread(_scrape, url, timeout_s)
    except (OSError, ValueError) as e:
        return {}, f"could not read {url}: {e}"
    lag: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == LAG_METRIC:
            for s in family.samples:
                group = s.labels.get("group", "")
                lag[group] = lag.get(group, 0.0) + s.value
    return lag, ""


async def bus_page(request: Request) -> Response:
    """GET /bus: topics, their dead-letter topics, consumer lag."""
    mesh = mesh_of(request)
    topics, more = await collect(
        mesh.client.list_topics, "topics", limit=mesh.settings.list_limit,
        metadata=mesh.metadata(request),
    )
    names = {t.name for t in topics}
    lag: dict[str, float] = {}
    lag_error = ""
    if mesh.settings.bus_metrics_url:
        lag, lag_error = await consumer_lag(
            mesh.settings.bus_metrics_url, timeout_s=mesh.settings.call_timeout_s
        )
    return render(request, "bus.html", {
        "topics": [t for t in topics if not t.name.endswith(DLQ_SUFFIX)],
        "with_dlq": {n.removesuffix(DLQ_SUFFIX) for n in names if n.endswith(DLQ_SUFFIX)},
        "more": more, "lag": sorted(lag.items()), "lag_error": lag_error,
        "lag_configured": bool(mesh.settings.bus_metrics_url),
    })


async def topic_page(request: Request) -> Response:
    """GET /bus/topics/{topic}: the topic's pending dead letters."""
    mesh = mesh_of(request)
    topic = request.path_params["topic"]
    letters, more = await collect(
        mesh.client.list_dead_letters, "dead_letters", limit=mesh.settings.list_limit,
        topic=topic, metadata=mesh.metadata(request),
    )
    redriven = request.query_params.get("redriven", "")
    return render(request, "topic.html", {
        "topic": topic, "letters": letters, "more": more,
        "redriven": int(redriven) if redriven.isdigit() else None,
    })


async def topic_redrive(request: Request) -> Response:
    """POST /bus/topics/{topic}/redrive (form `max_messages`, 0 = all pending)."""
    if (refused := cross_site(request)) is not None:
        return refused
    mesh = mesh_of(request)
    topic = request.path_params["topic"]
    form = await request.form()
    raw = str(form.get("max_messages") or "0")
    resp = await mesh.client.redrive_dead_letters(
        topic=topic, max_messages=int(raw) if raw.isdigit() else 0,
        metadata=mesh.metadata(request),
    )
    return see_other(f"/bus/topics/{topic}?redriven={resp.redriven_count}")


routes = [
    Route("/bus", bus_page),
    Route("/bus/topics/{topic}", topic_page),
    Route("/bus/topics/{topic}/redrive", topic_redrive, methods=["POST"]),
]
