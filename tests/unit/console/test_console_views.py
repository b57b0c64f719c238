"""The console's pure parts: enum spelling, proto value filters, the SVG plot,
bounded stream reads, and the status page's HTTP codes; plus the app served
in process (Starlette's TestClient) for routes that need no mesh."""

from __future__ import annotations

import asyncio
import math
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.testclient import TestClient

from agentmesh.console.app import create_app
from agentmesh.console.drain import drain
from agentmesh.console.errors import HTTP_STATUS
from agentmesh.console.settings import ConsoleSettings
from agentmesh.console.svg import convergence_plot
from agentmesh.console.views import dur, enum_name, enum_prefix, ts
from agentmesh.router.v1 import router_pb2
from agentmesh.saga.v1 import saga_pb2


def test_enum_values_lose_their_type_prefix() -> None:
    assert enum_prefix("SagaState") == "SAGA_STATE_"
    assert enum_name(saga_pb2.Saga(state=saga_pb2.SAGA_STATE_COMPENSATING), "state") == (
        "COMPENSATING")
    target = router_pb2.TargetState(breaker_state=router_pb2.BREAKER_STATE_OPEN)
    assert enum_name(target, "breaker_state") == "OPEN"
    # A value this build does not know stays visible as its number.
    assert enum_name(saga_pb2.Saga(state=99), "state") == "99"  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        enum_name(saga_pb2.Saga(), "saga_id")


def test_timestamps_and_durations_read_as_utc_and_seconds() -> None:
    assert ts(Timestamp()) == "-" and dur(Duration()) == "-"
    assert ts(Timestamp(seconds=1_796_369_632, nanos=204_000_000)) == (
        "2026-12-04 07:33:52.204Z")
    assert dur(Duration(seconds=1, nanos=500_000_000)) == "1.5 s"


def test_the_plot_is_an_accessible_svg_on_a_log_scale_for_positive_fitness() -> None:
    plot = convergence_plot([(1, 100.0), (2, 1.0), (3, 0.01)], title="swarm <x>")
    root = ET.fromstring(plot.svg)  # well-formed, the title escaped
    ns = "{http://www.w3.org/2000/svg}"
    title, line = root.find(f"{ns}title"), root.find(f"{ns}polyline")
    assert title is not None and line is not None
    assert root.get("role") == "img" and title.text == "swarm <x>"
    assert plot.log_scale
    ys = [float(p.split(",")[1]) for p in (line.get("points") or "").split()]
    # Equal steps on the log scale: 100 -> 1 -> 0.01 are equally spaced, falling.
    assert math.isclose(ys[1] - ys[0], ys[2] - ys[1], rel_tol=1e-6) and ys[0] < ys[2]
    linear = convergence_plot([(1, -3.0), (2, 0.0), (3, float("nan"))], title="t")
    assert not linear.log_scale and len(linear.points) == 2
    assert "no iterations yet" in convergence_plot([], title="t").svg


async def _items(n: int, gap_s: float, then_wait_s: float) -> AsyncIterator[int]:
    for i in range(n):
        yield i
        await asyncio.sleep(gap_s)
    await asyncio.sleep(then_wait_s)


async def test_drain_stops_at_the_end_when_idle_and_at_the_bounds() -> None:
    assert await drain(_items(3, 0, 0), idle_s=1, total_s=5, max_items=10) == ([0, 1, 2], True)
    # A live stream that goes quiet: what came so far, not ended.
    assert await drain(_items(2, 0, 10), idle_s=0.1, total_s=5, max_items=10) == ([0, 1], False)
    assert await drain(_items(50, 0, 0), idle_s=1, total_s=5, max_items=4) == (
        [0, 1, 2, 3], False)
    got, ended = await drain(_items(1000, 0.02, 0), idle_s=1, total_s=0.2, max_items=10_000)
    assert 3 <= len(got) < 30 and not ended
    evens, _ = await drain(_items(6, 0, 0), idle_s=1, total_s=5, max_items=10,
                           keep=lambda i: i % 2 == 0)
    assert evens == [0, 2, 4]


def test_refusals_keep_their_meaning_as_http_statuses() -> None:
    assert HTTP_STATUS[grpc.StatusCode.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED] == 401
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503


def test_the_app_serves_health_static_files_and_refuses_cross_site_posts() -> None:
    # Targets nobody listens on: these routes make no mesh call (the cross-site
    # check comes before any), so nothing here needs a daemon.
    settings = ConsoleSettings(targets={d: "127.0.0.1:9" for d in
                                        ("registry", "router", "bus", "saga", "swarm")})
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").text == "ok"
        css = client.get("/static/console.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
        assert client.get("/", follow_redirects=False).headers["location"] == "/agents"
        forged = client.post("/sagas/sg_1/cancel", headers={"origin": "https://evil.example"})
        assert forged.status_code == 403 and "CROSS_SITE_POST" in forged.text
        down = client.get("/router")  # the unreachable router: the status page, 503
        assert down.status_code == 503 and "UNAVAILABLE" in down.text


def test_the_trace_link_comes_from_saga_started_traceparent() -> None:
    from agentmesh.console.pages.sagas import trace_id

    started = saga_pb2.SagaEvent(
        type=saga_pb2.SAGA_EVENT_TYPE_SAGA_STARTED,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    other = saga_pb2.SagaEvent(type=saga_pb2.SAGA_EVENT_TYPE_LEASE_ACQUIRED)
    assert trace_id([other, started]) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id([other]) == ""  # tracing was off: no link
    assert trace_id([saga_pb2.SagaEvent(type=saga_pb2.SAGA_EVENT_TYPE_SAGA_STARTED,
                                        traceparent="garbage")]) == ""
