"""agentmesh.runtime.a2a_call against a real A2A agent process
(tests/a2a_agent.py, a2a-sdk): long-running tasks polled to the end, the
attempt timeout cancels the task, transport failures and rich errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import GetTaskRequest, TaskState
from google.protobuf import json_format
from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_pb2
from agentmesh.runtime import tracing
from agentmesh.runtime.a2a_call import A2A_DOMAIN, A2ACaller
from agentmesh.runtime.errors import from_rpc_error
from tests.infra import free_port
from tests.procs import ROOT, DaemonProcess, ProcessGroup
from tests.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def card_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The card URL of one A2A agent process for the module."""
    group = ProcessGroup()
    tmp: Path = tmp_path_factory.mktemp("a2a-call")
    p = group.start(DaemonProcess([str(ROOT / "tests" / "a2a_agent.py")], tmp / "a2a.log"))
    yield f"http://127.0.0.1:{p.port}/.well-known/agent-card.json"
    group.stop_all()


def execute(action: str, **input: object) -> agent_pb2.ExecuteRequest:
    req = agent_pb2.ExecuteRequest(action=action, idempotency_key=uuid.uuid4().hex, attempt=1)
    req.input.update(input)
    return req


async def task_state(card_url: str, task_id: str) -> int:
    """The task's state, read with the official client."""
    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, card_url).get_agent_card(relative_card_path="/")
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        return int((await client.get_task(GetTaskRequest(id=task_id))).status.state)


async def test_a_long_task_is_polled_until_it_completes(card_url: str) -> None:
    caller = A2ACaller(return_immediately=True)  # the agent answers SUBMITTED at once
    try:
        res = await caller.call(card_url, "Execute", execute("slow", seconds=0.4),
                                agent_id="agent-x", timeout_s=10)
        assert res.code == grpc.StatusCode.OK, res.message
        assert res.task_id
        assert json_format.MessageToDict(res.response.output)["quote"] == {"seconds": 0.4}
        assert await task_state(card_url, res.task_id) == TaskState.TASK_STATE_COMPLETED
    finally:
        await caller.close()


async def test_the_attempt_timeout_ends_the_call_and_cancels_the_task(card_url: str) -> None:
    caller = A2ACaller(return_immediately=True)
    try:
        res = await caller.call(card_url, "Execute", execute("slow", seconds=30),
                                agent_id="agent-x", timeout_s=0.5)
        assert res.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert res.task_id

        async def canceled() -> bool:
            return await task_state(card_url, res.task_id) == TaskState.TASK_STATE_CANCELED

        await eventually(canceled, timeout_s=10, every_s=0.1, what="the task canceled")
    finally:
        await caller.close()
    blocking = A2ACaller()  # one HTTP request held open: the timeout still ends it
    try:
        res = await blocking.call(card_url, "Execute", execute("slow", seconds=30),
                                  agent_id="agent-x", timeout_s=0.5)
        assert res.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await blocking.close()


async def test_failures_carry_the_task_state_and_transport_errors_map(card_url: str) -> None:
    caller = A2ACaller()
    try:
        res = await caller.call(card_url, "Execute", execute("book_fail"),
                                agent_id="agent-x", timeout_s=5)
        assert (res.code, res.message) == (grpc.StatusCode.FAILED_PRECONDITION, "no seats left")
        err = from_rpc_error(res.rpc_error(card_url))
        info = err.detail(error_details_pb2.ErrorInfo)
        assert isinstance(info, error_details_pb2.ErrorInfo)
        assert (info.domain, info.reason) == (A2A_DOMAIN, "TASK_STATE_FAILED")
        assert info.metadata["task_id"] == res.task_id
        dead = f"http://127.0.0.1:{free_port()}/.well-known/agent-card.json"
        res = await caller.call(dead, "Execute", execute("quote"), agent_id="agent-x",
                                timeout_s=5)
        assert res.code == grpc.StatusCode.UNAVAILABLE and not res.reached
        res = await caller.call(card_url, "Evaluate", agent_pb2.EvaluateRequest(),
                                agent_id="agent-x", timeout_s=5)
        assert res.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await caller.close()


async def test_calls_carry_the_trace_context_of_the_current_span(card_url: str) -> None:
    # ratio 0: real trace ids, nothing exported (no collector needed)
    assert tracing.configure_tracing(service_name="t", otlp_endpoint="127.0.0.1:9",
                                     sample_ratio=0.0)
    caller = A2ACaller()
    try:
        req = execute("quote")
        with tracing.span("step") as span:
            res = await caller.call(card_url, "Execute", req, agent_id="agent-x", timeout_s=5)
            trace_id = format(span.get_span_context().trace_id, "032x")
        assert res.code == grpc.StatusCode.OK
        tracing.shutdown_tracing()
        ask = execute("traceparent", key=req.idempotency_key)
        got = await caller.call(card_url, "Execute", ask, agent_id="agent-x", timeout_s=5)
        traceparent = json_format.MessageToDict(got.response.output)["traceparent"]
        assert traceparent.split("-")[1] == trace_id
    finally:
        tracing.shutdown_tracing()
        await caller.close()
