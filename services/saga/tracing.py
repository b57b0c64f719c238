"""The saga coordinator's spans: one trace per saga, one per task.

StartSaga opens the saga's span (`saga <definition name>`, INTERNAL, a child
of the StartSaga server span, so a traced client sees the saga inside its
own trace) and ends it at once: its W3C `traceparent` is stored in the
SAGA_STARTED event (`SagaEvent.traceparent`, covered by the event hash).
Every step attempt (`saga.step <name>`) and compensation attempt
(`saga.compensate <name>`) is a span whose parent is read back from that
stored context, in whichever coordinator replica drives it, also after a
restart or a lease takeover: the same trace, re-parented rather than linked,
because a span a killed coordinator held open would never be exported, while
the stored context needs nothing but the record. The saga span's own
duration is therefore the acceptance of the saga; the trace's duration is
the saga's. The agent call of an attempt is the attempt span's child (the
CLIENT span of AgentClient.call), and the agent's SERVER span its child.

An unsampled saga (at ratio 0.01, 99 in 100) costs one check per attempt:
the stored context says unsampled, so no span is made and no attribute
built; the agent calls carry that context on (`traceparent` with the
sampled flag clear), so the agents and the router stay unsampled too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import Status, StatusCode

from agentmesh.runtime import tracing
from agentmesh.runtime.agents import CallOutcome
from agentmesh.server.saga.planner import Call, CallKind


def saga_span(saga_id: str, name: str) -> str:
    """Make the saga's span (ended at once) and return its traceparent;
    "" while tracing is off or the span is not sampled-in at all."""
    if not tracing.enabled():
        return ""
    if tracing.current_unsampled():
        # The saga's span would not be recorded: store the StartSaga call's
        # own (unsampled) context, which its steps then carry on.
        return tracing.current_traceparent()
    with tracing.span(
        f"saga {name or 'inline'}",
        attributes={tracing.ATTR_SAGA_ID: saga_id, tracing.ATTR_SAGA_NAME: name or "inline"},
    ) as span:
        return tracing.traceparent_of(span)


@contextlib.contextmanager
def attempt_span(saga_id: str, traceparent: str, call: Call) -> Iterator[Any]:
    """The span of one step or compensation attempt, child of the saga's
    span (`traceparent`, from the saga record); ERROR when the block raises
    (a CallError: the step's failure)."""
    if not tracing.enabled():
        yield None
        return
    if (unsampled := tracing.unsampled_context(traceparent)) is not None:
        # One check per attempt: an unsampled saga makes no spans and builds
        # no attributes; the agent call carries the stored context on.
        token = otel_context.attach(unsampled)
        try:
            yield None
        finally:
            otel_context.detach(token)
        return
    kind = "step" if call.kind is CallKind.EXECUTE else "compensate"
    key = call.key if call.kind is CallKind.EXECUTE else call.key + "/compensate"
    with tracing.span(
        f"saga.{kind} {call.step}",
        parent_traceparent=traceparent,
        attributes={
            tracing.ATTR_SAGA_ID: saga_id,
            tracing.ATTR_STEP: call.step,
            tracing.ATTR_ATTEMPT: call.attempt,
            tracing.ATTR_IDEMPOTENCY_KEY: key,
        },
    ) as span:
        try:
            yield span
        except Exception as exc:
            code = getattr(exc, "code", "")
            if code:
                span.set_attribute(tracing.ATTR_ERROR_CODE, str(code))
            raise


# ---- tasks ------------------------------------------------------------------------
# One trace per task, as per saga: ScheduleTask opens the task's span
# (`task <task_type>`, ended at once) and stores its traceparent in the task
# record (Task.traceparent); each attempt (`task.attempt <task_type>`) is its
# child, read back from the record by whichever replica drives it, and the
# attempt's agent call (AgentClient.call's CLIENT span) the attempt's child.


def task_span(task_id: str, task_type: str) -> str:
    """Make the task's span (ended at once) and return its traceparent; ""
    while tracing is off. Unsampled: the ScheduleTask call's own context."""
    if not tracing.enabled():
        return ""
    if tracing.current_unsampled():
        return tracing.current_traceparent()
    with tracing.span(
        f"task {task_type}",
        attributes={tracing.ATTR_TASK_ID: task_id, tracing.ATTR_TASK_TYPE: task_type},
    ) as span:
        return tracing.traceparent_of(span)


async def traced_attempt(task: Any, call: Awaitable[CallOutcome]) -> CallOutcome:
    """Await `call`, the agent call of one attempt of `task` (a
    task_pb2.Task), inside the attempt's span, child of the task's span
    (`task.traceparent`); the call's CLIENT span is then the attempt's child.
    ERROR with the outcome's code when the attempt failed.

    `call` is a coroutine not yet started, so it runs in this context.
    """
    if not tracing.enabled():
        return await call
    if (unsampled := tracing.unsampled_context(task.traceparent)) is not None:
        token = otel_context.attach(unsampled)  # unsampled: no span, no attributes
        try:
            return await call
        finally:
            otel_context.detach(token)
    with tracing.span(
        f"task.attempt {task.task_type}",
        parent_traceparent=task.traceparent,
        attributes={
            tracing.ATTR_TASK_ID: task.task_id,
            tracing.ATTR_TASK_TYPE: task.task_type,
            tracing.ATTR_ATTEMPT: task.attempt,
            tracing.ATTR_IDEMPOTENCY_KEY: f"task/{task.task_id}",
        },
    ) as span:
        out = await call
        if out.code is not grpc.StatusCode.OK:
            span.set_attribute(tracing.ATTR_ERROR_CODE, out.code.name)
            span.set_status(Status(StatusCode.ERROR, out.message or out.code.name))
        return out
