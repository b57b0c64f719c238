"""Tasks: queue depth by priority, the list by state and type, one task's
history (its state changes from WaitTask)."""

from __future__ import annotations

from collections import Counter

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.common.v1 import common_pb2
from agentmesh.console.drain import drain
from agentmesh.console.mesh import mesh_of
from agentmesh.console.pages.common import collect, enum_choices, enum_value
from agentmesh.console.views import render
from agentmesh.task.v1 import task_pb2

STATE_PREFIX = "TASK_STATE_"
PRIORITIES = [p.removeprefix("PRIORITY_") for p in common_pb2.Priority.keys()
              if p != "PRIORITY_UNSPECIFIED"]
#: Most state changes one task page shows.
MAX_CHANGES = 1000


async def task_list(request: Request) -> Response:
    """GET /tasks?state=PENDING&type=TYPE: the queue by priority, then the list."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    state = request.query_params.get("state", "")
    task_type = request.query_params.get("type", "").strip()
    value = enum_value(task_pb2.TaskState, STATE_PREFIX, state)
    queued, queue_more = await collect(
        mesh.client.list_tasks, "tasks", limit=mesh.settings.list_limit,
        states=[task_pb2.TASK_STATE_PENDING], task_type=task_type, metadata=md,
    )
    depth = Counter(common_pb2.Priority.Name(t.priority).removeprefix("PRIORITY_")
                    for t in queued)
    tasks, more = await collect(
        mesh.client.list_tasks, "tasks", limit=mesh.settings.list_limit,
        states=[value] if value is not None else [], task_type=task_type, metadata=md,
    )
    return render(request, "tasks.html", {
        "tasks": tasks, "more": more, "state": state, "type": task_type,
        "states": enum_choices(task_pb2.TaskState, STATE_PREFIX),
        "depth": [(p, depth.get(p, 0)) for p in PRIORITIES],
        "queued": len(queued), "queue_more": queue_more,
    })


async def task_detail(request: Request) -> Response:
    """GET /tasks/{task_id}: the task and each change it went through."""
    mesh = mesh_of(request)
    md = mesh.metadata(request)
    task_id = request.path_params["task_id"]
    task = (await mesh.client.get_task(task_id=task_id, metadata=md)).task
    changes, ended = await drain(
        mesh.client.task.watch_task(task_id=task_id, after_revision=0, metadata=md),
        idle_s=mesh.settings.stream_idle_s, total_s=mesh.settings.stream_total_s,
        max_items=MAX_CHANGES,
    )
    return render(request, "task.html", {
        "task": task, "changes": [c.task for c in changes], "ended": ended,
    })


routes = [
    Route("/tasks", task_list),
    Route("/tasks/{task_id}", task_detail),
]
