"""Sagas: the list by state and definition, one saga's timeline (live over SSE
from WatchSaga), its cancel button and its Jaeger link."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import (
    collect,
    cross_site,
    enum_choices,
    enum_value,
    see_other,
)
from agentmesh.console.views import enum_name, render, templates
from agentmesh.runtime.errors import AgentMeshError
from agentmesh.saga.v1 import saga_pb2

STATE_PREFIX = "SAGA_STATE_"
FINAL = frozenset({
    saga_pb2.SAGA_STATE_COMPLETED, saga_pb2.SAGA_STATE_COMPENSATED,
    saga_pb2.SAGA_STATE_FAILED, saga_pb2.SAGA_STATE_CANCELLED,
})
#: Events of the compensation phase; the timeline marks them.
COMPENSATION_EVENTS = frozenset({
    saga_pb2.SAGA_EVENT_TYPE_COMPENSATION_STARTED,
    saga_pb2.SAGA_EVENT_TYPE_STEP_COMPENSATION_STARTED,
    saga_pb2.SAGA_EVENT_TYPE_STEP_COMPENSATED,
    saga_pb2.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED,
    saga_pb2.SAGA_EVENT_TYPE_STEP_COMPENSATION_ATTEMPT_FAILED,
    saga_pb2.SAGA_EVENT_TYPE_COMPENSATION_COMPLETED,
})
#: Most events one page load reads (GetSagaEvents pages of 1000).
MAX_EVENTS = 5000


def trace_id(events: list[saga_pb2.SagaEvent]) -> str:
    """The trace id of the saga's span (from SAGA_STARTED's traceparent), "" if none."""
    for e in events:
        if e.type == saga_pb2.SAGA_EVENT_TYPE_SAGA_STARTED and e.traceparent:
            parts = e.traceparent.split("-")
            return parts[1] if len(parts) == 4 else ""
    return ""


def event_row(event: saga_pb2.SagaEvent) -> str:
    """One timeline entry as HTML (the page and the live stream render the same)."""
    return templates.get_template("saga_event.html").render(
        e=event, compensation=event.type in COMPENSATION_EVENTS
    )


async def saga_list(request: Request) -> Response:
    """GET /sagas?state=RUNNING&definition=NAME."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    state = request.query_params.get("state", "")
    definition = request.query_params.get("definition", "")
    value = enum_value(saga_pb2.SagaState, STATE_PREFIX, state)
    sagas, more = await collect(
        mesh.client.list_sagas, "sagas", limit=mesh.settings.list_limit,
        states=[value] if value is not None else [], definition_name=definition, metadata=md,
    )
    definitions, _ = await collect(
        mesh.client.list_saga_definitions, "definitions", limit=mesh.settings.list_limit,
        metadata=md,
    )
    return render(request, "sagas.html", {
        "sagas": sagas, "more": more, "state": state, "definition": definition,
        "states": enum_choices(saga_pb2.SagaState, STATE_PREFIX),
        "definitions": sorted({d.name for d in definitions} | ({definition} - {""})),
    })


async def saga_detail(request: Request) -> Response:
    """GET /sagas/{saga_id}: steps and the event timeline (live with JS)."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    saga_id = request.path_params["saga_id"]
    saga = (await mesh.client.get_saga(saga_id=saga_id, metadata=md)).saga
    events: list[saga_pb2.SagaEvent] = []
    token = ""
    while len(events) < MAX_EVENTS:
        resp = await mesh.client.get_saga_events(
            saga_id=saga_id, page_size=1000, page_token=token, metadata=md
        )
        events.extend(resp.events)
        token = resp.next_page_token
        # A running saga's log always hands a token back (to poll): stop at its end.
        if not token or not resp.events:
            break
    if saga.state not in FINAL and events and events[-1].state in FINAL:
        # It ended between the two reads: the page shows the final saga (its
        # events are all here, so the live script has nothing to wait for).
        saga = (await mesh.client.get_saga(saga_id=saga_id, metadata=md)).saga
    tid = trace_id(events)
    jaeger = mesh.settings.jaeger_url.rstrip("/")
    return render(request, "saga.html", {
        "saga": saga, "rows": [event_row(e) for e in events],
        "after": events[-1].sequence if events else 0,
        "final": saga.state in FINAL,
        "trace_url": f"{jaeger}/trace/{tid}" if jaeger and tid else "",
        "trace_id": tid,
    })


async def saga_stream(request: Request) -> Response:
    """GET /sagas/{saga_id}/stream: server-sent events from WatchSaga.

    Each `saga-event` carries JSON {sequence, state, type, html} and the
    event's sequence as its SSE id, so a reconnecting EventSource resumes
    after the last one it got (Last-Event-ID). An `end` event follows the
    final one; the page's script then closes the stream.
    """
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    saga_id = request.path_params["saga_id"]
    raw = request.headers.get("last-event-id") or request.query_params.get("after", "0")
    after = int(raw) if raw.isdigit() else 0

    # A stream's status comes only with its first read, after the 200 is sent:
    # GetSaga first, so NOT_FOUND or PERMISSION_DENIED is the status page.
    saga = (await mesh.client.get_saga(saga_id=saga_id, metadata=md)).saga

    async def events() -> AsyncIterator[dict[str, Any]]:
        state = enum_name(saga, "state")
        try:
            async for resp in mesh.client.watch_saga(
                saga_id=saga_id, after_sequence=after, metadata=md
            ):
                e = resp.event
                state = enum_name(e, "state")
                yield {"event": "saga-event", "id": str(e.sequence), "data": json.dumps({
                    "sequence": e.sequence, "state": state,
                    "type": enum_name(e, "type"), "html": event_row(e),
                })}
        except AgentMeshError as exc:
            # The page shows it and stops listening; a reconnect would fail alike.
            yield {"event": "mesh-error", "data": json.dumps(
                {"code": exc.code.name, "message": exc.message})}
            return
        yield {"event": "end", "data": json.dumps({"state": state})}

    return EventSourceResponse(events(), ping=15)


async def saga_cancel(request: Request) -> Response:
    """POST /sagas/{saga_id}/cancel (form field `reason`): CancelSaga, then the saga."""
    if (refused := cross_site(request)) is not None:
        return refused
    mesh = mesh_of(request)
    saga_id = request.path_params["saga_id"]
    form = await request.form()
    reason = str(form.get("reason") or "cancelled from the console")
    await mesh.client.cancel_saga(saga_id=saga_id, reason=reason,
                                  metadata=mesh.metadata(request))
    return see_other(f"/sagas/{saga_id}")


routes = [
    Route("/sagas", saga_list),
    Route("/sagas/{saga_id}", saga_detail),
    Route("/sagas/{saga_id}/stream", saga_stream),
    Route("/sagas/{saga_id}/cancel", saga_cancel, methods=["POST"]),
]
