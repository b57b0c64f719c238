"""The mesh's MCP tools: each one is an RPC of the contract.

A tool names the RPC it calls. Its input schema is the JSON Schema of the
RPC's request message and its output schema that of the response message
(`agentmesh.mcp.schema`), and its MCP annotations come from the RPC's
`idempotency_level`. Arguments are checked against the schema (so a bad one is
named by its path), parsed with `json_format`, and sent through
`agentmesh.Client` with the caller's bearer token, so the mesh's auth,
guardrails, retries and deadlines apply as to any other client.

| tool | RPC | returns |
|---|---|---|
| `discover_agents` | RegistryService.DiscoverAgents | the matching agents |
| `invoke` | RouterService.Invoke | the agent's output, the agent, the attempts |
| `run_saga` | SagaService.StartSaga, then WatchSaga to the end | the final saga |
| `schedule_task` | TaskService.ScheduleTask | the queued task |
| `get_task` | TaskService.GetTask | the task, with its result once it ended |
| `publish` | BusService.Publish | the message id and where it was written |
| `get_saga_history` | SagaService.GetSagaEvents | a page of the saga's event log |
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from jsonschema import Draft202012Validator

from agentmesh.client import Client
from agentmesh.mcp.schema import ONEOF_TAKEN, message_schema
from agentmesh.runtime.errors import (
    AgentMeshError,
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
)
from agentmesh.runtime.retry import IdempotencyLevel, idempotency_of

# The descriptors of every RPC below must be in the default pool.
from agentmesh.bus.v1 import bus_pb2 as _bus  # noqa: F401  isort: skip
from agentmesh.registry.v1 import registry_pb2 as _registry  # noqa: F401  isort: skip
from agentmesh.router.v1 import router_pb2 as _router  # noqa: F401  isort: skip
from agentmesh.saga.v1 import saga_pb2  # isort: skip
from agentmesh.task.v1 import task_pb2 as _task  # noqa: F401  isort: skip

#: gRPC metadata of one call: the caller's `authorization` header, if any.
Metadata = Sequence[tuple[str, str]]

#: Final saga states (SagaState): the saga log takes no more events.
FINAL_SAGA_STATES = frozenset({
    saga_pb2.SAGA_STATE_COMPLETED,
    saga_pb2.SAGA_STATE_COMPENSATED,
    saga_pb2.SAGA_STATE_FAILED,
    saga_pb2.SAGA_STATE_CANCELLED,
})


#: Saga events after which a step does no more work (progress counts them).
_STEP_ENDS = frozenset({
    saga_pb2.SAGA_EVENT_TYPE_STEP_COMPLETED,
    saga_pb2.SAGA_EVENT_TYPE_STEP_SKIPPED,
    saga_pb2.SAGA_EVENT_TYPE_STEP_FAILED,
})


@dataclass(frozen=True)
class Outcome:
    """What a tool call answers: JSON for the model and the structured result.

    Attributes:
        data: the structured result (the response message as proto3 JSON, or
            `{"error": ...}` for a failure).
        text: the same, as text for clients that read only text content.
        is_error: True when the call failed (MCP `isError`).
    """

    data: dict[str, Any]
    text: str
    is_error: bool = False


@dataclass(frozen=True)
class Caller:
    """How a tool reaches the mesh: the shared client and the call's bounds.

    Attributes:
        client: the mesh client (its channels carry no token of their own).
        metadata: the caller's gRPC metadata (`authorization: Bearer ...`).
        call_timeout_s: deadline of each unary call, s.
        saga_timeout_s: longest `run_saga` wait for the saga's end, s.
        progress: reports progress of a long call (MCP `notifications/progress`:
            progress, total, message); a no-op when the client asked for none.
    """

    client: Client
    metadata: Metadata
    call_timeout_s: float
    saga_timeout_s: float
    progress: Progress | None = None


#: `(progress, total, message)` of one progress report.
Progress = Callable[[float, float | None, str], Awaitable[None]]

Runner = Callable[["ToolSpec", Caller, Message, Mapping[str, Any]], Awaitable[Outcome]]


@dataclass(frozen=True)
class ToolSpec:
    """One tool: the RPC it calls and how.

    Attributes:
        name: the MCP tool name.
        title: a short human title.
        description: what the tool does, for the model.
        rpc: full method name, "agentmesh.router.v1.RouterService.Invoke".
        method: the Client method that calls it (given the client).
        run: how a call runs; `unary` for a plain request/response RPC.
        extras: tool-level arguments beside the request's fields (name ->
            JSON Schema); not sent to the mesh.
    """

    name: str
    title: str
    description: str
    rpc: str
    method: Callable[[Client], Callable[..., Awaitable[Any]]]
    run: Runner
    extras: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def request_class(self) -> type[Message]:
        """The RPC's request message class, from the contract's descriptor."""
        return message_factory.GetMessageClass(_method(self.rpc).input_type)

    @property
    def response_class(self) -> type[Message]:
        """The RPC's response message class, from the contract's descriptor."""
        return message_factory.GetMessageClass(_method(self.rpc).output_type)

    def input_schema(self) -> dict[str, Any]:
        """The request message's JSON Schema, plus the tool-level `extras`."""
        schema = message_schema(_method(self.rpc).input_type)
        schema["properties"].update({k: dict(v) for k, v in self.extras.items()})
        return schema

    def output_schema(self) -> dict[str, Any]:
        """The response message's JSON Schema (the structured result of a success)."""
        return message_schema(_method(self.rpc).output_type)

    def level(self) -> IdempotencyLevel:
        """The RPC's `idempotency_level` as the contract declares it."""
        return idempotency_of(self.rpc)


def _method(full_name: str) -> Any:
    return descriptor_pool.Default().FindMethodByName(full_name)


# ---- results -----------------------------------------------------------------
def to_json(msg: Message) -> dict[str, Any]:
    """A message as proto3 JSON with the proto field names (what the schemas say)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def ok(data: dict[str, Any]) -> Outcome:
    """A successful outcome with `data` as structured and as JSON text."""
    return Outcome(data=data, text=json.dumps(data, sort_keys=True))


def error_outcome(err: AgentMeshError) -> Outcome:
    """A mesh error as an MCP tool error: the status code, message, reason,
    field violations and every google.rpc detail, as text and structured."""
    violations = [
        {"field": f, "description": d} for f, d in getattr(err, "field_violations", []) or []
    ]
    info: dict[str, Any] = {"code": err.code.name, "message": err.message}
    if err.reason:
        info["reason"] = err.reason
    if violations:
        info["field_violations"] = violations
    details = [_detail_json(d) for d in err.details]
    if details:
        info["details"] = details
    text = f"{err.code.name}: {err.message}"
    if err.reason:
        text += f" (reason {err.reason})"
    if violations:
        text += " [" + "; ".join(f"{v['field']}: {v['description']}" for v in violations) + "]"
    for d in details:
        if d.get("@type", "").endswith("google.rpc.RetryInfo"):
            text += f" retry after {d.get('retryDelay', '?')}"
    return Outcome(data={"error": info}, text=text, is_error=True)


def _detail_json(detail: Message) -> dict[str, Any]:
    out = json_format.MessageToDict(detail)
    out["@type"] = f"type.googleapis.com/{detail.DESCRIPTOR.full_name}"
    return out


# ---- arguments -----------------------------------------------------------------
def parse_arguments(spec: ToolSpec, arguments: Mapping[str, Any]) -> tuple[Message, dict[str, Any]]:
    """The request message and the tool-level extras of a call's arguments.

    Raises:
        InvalidArgument: with one field violation per schema error (its JSON
            path, e.g. `message.payload`) or the json_format parse error.
    """
    errors = sorted(
        _validator(spec).iter_errors(dict(arguments)), key=lambda e: list(e.absolute_path)
    )
    if errors:
        violations = [(_path(e), _describe(e)) for e in errors]
        raise InvalidArgument(
            f"arguments of {spec.name} do not match its input schema "
            f"({spec.request_class.DESCRIPTOR.full_name})",
            field_violations=violations,
        )
    extras = {k: v for k, v in arguments.items() if k in spec.extras}
    body = {k: v for k, v in arguments.items() if k not in spec.extras}
    try:
        req = json_format.ParseDict(body, spec.request_class())
    except json_format.ParseError as e:
        raise InvalidArgument(
            f"arguments of {spec.name}: {e}", field_violations=[(_parse_field(str(e)), str(e))]
        ) from None
    return req, extras


_VALIDATORS: dict[str, Draft202012Validator] = {}


def _validator(spec: ToolSpec) -> Draft202012Validator:
    v = _VALIDATORS.get(spec.name)
    if v is None:
        v = _VALIDATORS[spec.name] = Draft202012Validator(spec.input_schema())
    return v


def _describe(err: Any) -> str:
    if err.validator == "not" and err.validator_value == ONEOF_TAKEN["not"]:
        return "another field of the same oneof is set; set at most one of them"
    return str(err.message)


def _path(err: Any) -> str:
    """`message.target_ids[0]`; for an unknown field, the field itself."""
    parts: list[str] = []
    for p in err.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    base = "".join(parts)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            return ".".join(x for x in (base, extra[0]) if x)
    return base or "(arguments)"


def _parse_field(message: str) -> str:
    """The field path json_format names in `message`: its nested
    "Failed to parse <field> field: ..." prefixes, joined with dots."""
    path = re.findall(r"Failed to parse (\w+) field", message)
    return ".".join(path) or "(arguments)"


# ---- runners -------------------------------------------------------------------
async def unary(spec: ToolSpec, caller: Caller, req: Message, _: Mapping[str, Any]) -> Outcome:
    """Call the RPC once (with the client's contract-driven retries)."""
    resp = await spec.method(caller.client)(
        req, timeout_s=caller.call_timeout_s, metadata=caller.metadata
    )
    return ok(to_json(resp))


async def run_saga(
    spec: ToolSpec, caller: Caller, req: Message, extras: Mapping[str, Any]
) -> Outcome:
    """Start a saga, follow WatchSaga to a final state and return the final saga.

    The watch is resumed after the last event seen when it breaks
    (UNAVAILABLE, e.g. a coordinator replica restarting). A saga that ends in
    anything but COMPLETED is a tool error carrying the saga and its error.

    Raises:
        DeadlineExceeded: the saga is not final within `wait_timeout_s`.
    """
    c, md = caller.client, caller.metadata
    wait_s = float(extras.get("wait_timeout_s") or caller.saga_timeout_s)
    assert isinstance(req, saga_pb2.StartSagaRequest)
    started = await c.start_saga(req, timeout_s=caller.call_timeout_s, metadata=md)
    saga_id = started.saga.saga_id
    deadline = time.monotonic() + wait_s
    after = 0
    saga = started.saga
    total = float(len(saga.steps)) or None
    done: set[str] = set()
    while saga.state not in FINAL_SAGA_STATES:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(
                f"saga {saga_id} is still {saga_pb2.SagaState.Name(saga.state)} after "
                f"{wait_s:g} s; read it with get_saga_history (saga_id {saga_id})"
            )
        try:
            async for resp in c.watch_saga(
                saga_id=saga_id, after_sequence=after, timeout_s=left, metadata=md
            ):
                ev = resp.event
                after = ev.sequence
                if ev.type in _STEP_ENDS:
                    done.add(ev.step_name)
                if caller.progress is not None:
                    kind = saga_pb2.SagaEventType.Name(ev.type).removeprefix("SAGA_EVENT_TYPE_")
                    await caller.progress(
                        float(len(done)), total, f"#{ev.sequence} {kind} {ev.step_name}".strip()
                    )
                if ev.state in FINAL_SAGA_STATES:
                    break
        except DeadlineExceeded:
            pass  # the loop reports it, with the saga's state read below
        except Unavailable:
            await asyncio.sleep(0.2)
        saga = (await c.get_saga(
            saga_id=saga_id, timeout_s=caller.call_timeout_s, metadata=md
        )).saga
    result = saga_pb2.StartSagaResponse(saga=saga, already_started=started.already_started)
    data = to_json(result)
    if saga.state == saga_pb2.SAGA_STATE_COMPLETED:
        return ok(data)
    state = saga_pb2.SagaState.Name(saga.state)
    cause = saga.error
    text = f"saga {saga_id} ended {state}"
    if cause.code or cause.message:
        step = f" in step {cause.step_name!r}" if cause.step_name else ""
        text += f"{step}: {cause.code}: {cause.message}"
    return Outcome(data=data, text=text + "\n" + json.dumps(data, sort_keys=True), is_error=True)


# ---- the tools ----------------------------------------------------------------
TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="discover_agents",
        title="Discover agents",
        description=(
            "Find registered agents by capability, service type, tag, version or health "
            "(RegistryService.DiscoverAgents). Returns the matches in discovery order."
        ),
        rpc="agentmesh.registry.v1.RegistryService.DiscoverAgents",
        method=lambda c: c.discover_agents,
        run=unary,
    ),
    ToolSpec(
        name="invoke",
        title="Invoke a capability",
        description=(
            "Route a message to an agent and run an action on it (RouterService.Invoke): the "
            "router picks the agent (message.selector or message.target_ids), applies the "
            "mesh's safety rules, breakers and retries, and returns the agent's output. Put the "
            "action's input in message.payload.struct_value; set idempotency_key to make "
            "retries safe."
        ),
        rpc="agentmesh.router.v1.RouterService.Invoke",
        method=lambda c: c.invoke,
        run=unary,
    ),
    ToolSpec(
        name="run_saga",
        title="Run a saga",
        description=(
            "Start a saga (SagaService.StartSaga: an inline `definition` or a registered "
            "`definition_name`, with `input`) and wait until it ends. Returns the final saga: "
            "its output by step when it COMPLETED; a tool error with the saga and its error "
            "when it COMPENSATED, FAILED or was CANCELLED."
        ),
        rpc="agentmesh.saga.v1.SagaService.StartSaga",
        method=lambda c: c.start_saga,
        run=run_saga,
        extras={
            "wait_timeout_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": (
                    "Longest wait for the saga's end, seconds (not part of StartSagaRequest); "
                    "default: the server's --saga-timeout-s."
                ),
            }
        },
    ),
    ToolSpec(
        name="schedule_task",
        title="Schedule a task",
        description=(
            "Queue a durable task (TaskService.ScheduleTask): `task_type` is the agent action, "
            "`agent_id` or `selector` says who may run it, `payload` is its input. Returns the "
            "task; read its result later with get_task."
        ),
        rpc="agentmesh.task.v1.TaskService.ScheduleTask",
        method=lambda c: c.schedule_task,
        run=unary,
    ),
    ToolSpec(
        name="get_task",
        title="Get a task",
        description="Read a task's state and, once it ended, its result (TaskService.GetTask).",
        rpc="agentmesh.task.v1.TaskService.GetTask",
        method=lambda c: c.get_task,
        run=unary,
    ),
    ToolSpec(
        name="publish",
        title="Publish to the bus",
        description=(
            "Publish one message to a bus topic (BusService.Publish); message.topic and "
            "message.payload are required. Returns the message id and its position."
        ),
        rpc="agentmesh.bus.v1.BusService.Publish",
        method=lambda c: c.publish,
        run=unary,
    ),
    ToolSpec(
        name="get_saga_history",
        title="Read a saga's history",
        description=(
            "A page of a saga's event log in sequence order (SagaService.GetSagaEvents): what "
            "each step did, its attempts, outputs, errors and compensations. Pass "
            "next_page_token back as page_token for the next page."
        ),
        rpc="agentmesh.saga.v1.SagaService.GetSagaEvents",
        method=lambda c: c.get_saga_events,
        run=unary,
    ),
)

TOOLS_BY_NAME: dict[str, ToolSpec] = {t.name: t for t in TOOLS}


async def call_tool(spec: ToolSpec, caller: Caller, arguments: Mapping[str, Any]) -> Outcome:
    """Run one tool call; every mesh error (and a bad argument) is an error Outcome.

    Never raises an AgentMeshError: the status code, message and details go to
    the MCP client as an `isError` result the model can read and correct.
    """
    try:
        req, extras = parse_arguments(spec, arguments)
        return await spec.run(spec, caller, req, extras)
    except AgentMeshError as e:
        return error_outcome(e)


__all__ = [
    "FINAL_SAGA_STATES",
    "TOOLS",
    "TOOLS_BY_NAME",
    "Caller",
    "Outcome",
    "ToolSpec",
    "call_tool",
    "error_outcome",
    "message_schema",
    "parse_arguments",
    "to_json",
]
