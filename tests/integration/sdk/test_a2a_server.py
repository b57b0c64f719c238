"""An SDK agent served over A2A (agentmesh.agent.a2a_server), called by the
official a2a-sdk client and by the mesh's own A2A caller, over real HTTP on
loopback (no Redis: the agent keeps idempotency records in memory)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, Task, TaskState
from google.protobuf import json_format

from agentmesh.agent import ActionContext, Agent
from agentmesh.agent.a2a_server import A2AServer
from agentmesh.agent.v1 import agent_pb2
from agentmesh.runtime.a2a_call import A2ACaller
from tests.agents import serving

pytestmark = pytest.mark.integration


class Booking:
    """An SDK agent with an action, its compensation and failing actions."""

    def __init__(self) -> None:
        self.agent = Agent("agent-a2a-sdk", agent_type="booking", version="2.1.0",
                           capabilities=["booking"], a2a_port=0)
        self.runs: list[tuple[str, str]] = []
        a = self.agent

        @a.action("book")
        async def book(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            self.runs.append(("book", ctx.idempotency_key))
            return {"booked": inp.get("seats", 0), "attempt": ctx.attempt}

        @a.compensation("book")
        async def unbook(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            self.runs.append(("unbook", ctx.compensated_idempotency_key))
            return {"released": (ctx.original_output or {}).get("booked")}

        @a.action("explode")
        async def explode(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            raise RuntimeError("the booking system is down")

        @a.action("picky")
        async def picky(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            raise ValueError("seats must be positive")


@pytest.fixture
async def served() -> AsyncIterator[tuple[Booking, A2AServer]]:
    b = Booking()
    async with serving(b.agent):  # a2a_port=0: A2A beside gRPC, on a free port
        assert b.agent.a2a is not None and b.agent.a2a.port > 0
        yield b, b.agent.a2a


async def send(server: A2AServer, skill: str, data: dict[str, Any], **meta: Any) -> Task:
    """One message with the official client; the task it ends in."""
    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, server.card_url).get_agent_card(
            relative_card_path="/"
        )
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        msg = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex)
        part = msg.parts.add()
        part.data.struct_value.update(data)
        msg.metadata.update({"skill_id": skill, **meta})
        tasks = [ev.task async for ev in client.send_message(SendMessageRequest(message=msg))]
    assert len(tasks) == 1
    return tasks[0]


def output(task: Task) -> dict[str, Any]:
    parts: list[Part] = [p for a in task.artifacts for p in a.parts]
    return json_format.MessageToDict(parts[0].data)  # type: ignore[no-any-return]


def status_text(task: Task) -> str:
    return "".join(p.text for p in task.status.message.parts)


async def test_the_card_is_generated_from_the_agent(served: tuple[Booking, A2AServer]) -> None:
    _, server = served
    async with httpx.AsyncClient() as http:
        card = (await http.get(server.card_url)).json()
    assert card["name"] == "booking" and card["version"] == "2.1.0"
    skills = {s["id"]: s["tags"] for s in card["skills"]}
    assert skills == {"book": ["booking"], "explode": ["booking"], "picky": ["booking"]}
    assert card["supportedInterfaces"][0]["protocolBinding"] == "JSONRPC"
    assert card["supportedInterfaces"][0]["url"] == server.url


async def test_the_official_client_calls_an_action_once_per_key(
    served: tuple[Booking, A2AServer],
) -> None:
    b, server = served
    key = uuid.uuid4().hex
    first = await send(server, "book", {"seats": 2}, idempotency_key=key, attempt=1)
    again = await send(server, "book", {"seats": 2}, idempotency_key=key, attempt=2)
    assert first.status.state == again.status.state == TaskState.TASK_STATE_COMPLETED
    assert output(first) == output(again) == {"booked": 2.0, "attempt": 1.0}
    assert b.runs.count(("book", key)) == 1  # the second message replayed the stored result


async def test_handler_failures_end_the_task(served: tuple[Booking, A2AServer]) -> None:
    _, server = served
    failed = await send(server, "explode", {})
    assert failed.status.state == TaskState.TASK_STATE_FAILED
    assert "the booking system is down" in status_text(failed)
    rejected = await send(server, "picky", {})
    assert rejected.status.state == TaskState.TASK_STATE_REJECTED
    assert "seats must be positive" in status_text(rejected)
    unknown = await send(server, "fly", {})
    assert unknown.status.state == TaskState.TASK_STATE_REJECTED
    assert "unknown skill 'fly'" in status_text(unknown)


async def test_the_mesh_a2a_caller_executes_and_compensates(
    served: tuple[Booking, A2AServer],
) -> None:
    b, server = served
    caller = A2ACaller()
    try:
        key = uuid.uuid4().hex
        req = agent_pb2.ExecuteRequest(action="book", idempotency_key=key, attempt=1)
        req.input.update({"seats": 3})
        ok = await caller.call(server.card_url, "Execute", req, agent_id="agent-a2a-sdk",
                               timeout_s=5)
        assert ok.code == grpc.StatusCode.OK
        assert json_format.MessageToDict(ok.response.output) == {"booked": 3.0, "attempt": 1.0}
        comp = agent_pb2.CompensateRequest(
            action="book", idempotency_key=f"{key}/compensate", attempt=1,
            compensated_idempotency_key=key, original_output=ok.response.output,
        )
        undone = await caller.call(server.card_url, "Compensate", comp,
                                   agent_id="agent-a2a-sdk", timeout_s=5)
        assert undone.code == grpc.StatusCode.OK
        assert json_format.MessageToDict(undone.response.output) == {"released": 3.0}
        assert ("unbook", key) in b.runs
        bad = await caller.call(server.card_url, "Execute",
                                agent_pb2.ExecuteRequest(action="explode"),
                                agent_id="agent-a2a-sdk", timeout_s=5)
        assert bad.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "the booking system is down" in bad.message
    finally:
        await caller.close()
