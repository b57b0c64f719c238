"""A small A2A agent built only with the official `a2a-sdk`, run as a process.

It stands for an agent from another framework: it knows nothing of
AgentMesh. Its skills (the skill id is read from the message metadata
"skill_id", the input from the first data part):

* `quote`: completes with a data artifact {"quote": <input>, "agent": <name>}.
* `book_fail`: the task FAILS with the agent message "no seats left".
* `reject`: the task is REJECTED with "not allowed here".
* `cancel_me`: the task is CANCELED.
* `slow`: WORKING for input["seconds"], then completes like `quote`.
* `undo`: completes (a compensation).
* `calls`: completes with {"calls": [[skill_id, idempotency_key], ...]}, every
  call this process received before it.
* `traceparent`: completes with {"traceparent": ...}, the W3C traceparent
  header of the call with idempotency key input["key"] ("" when none).

    python tests/a2a_agent.py --name booking        # logs {"msg": "serving", "port": N}

The card is served at http://127.0.0.1:N/.well-known/agent-card.json and
JSON-RPC at http://127.0.0.1:N/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Task,
    TaskState,
    TaskStatus,
)
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

SKILLS = ("quote", "book_fail", "reject", "cancel_me", "slow", "undo", "calls", "traceparent")


class TestExecutor(AgentExecutor):
    """Runs the skills above; records every call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[list[str]] = []
        self.traceparents: dict[str, str] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """One message: one task, driven to a terminal state."""
        msg = context.message
        assert msg is not None and context.task_id and context.context_id
        meta: dict[str, Any] = MessageToDict(msg.metadata) if msg.HasField("metadata") else {}
        skill = str(meta.get("skill_id", ""))
        key = str(meta.get("idempotency_key", ""))
        data = next(iter(get_data_parts(msg.parts)), {})
        if skill not in ("calls", "traceparent"):
            self.calls.append([skill, key])
            headers = context.call_context.state.get("headers", {})
            self.traceparents[key] = str(headers.get("traceparent", ""))
        await event_queue.enqueue_event(
            Task(
                id=context.task_id,
                context_id=context.context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[msg],
            )
        )
        up = TaskUpdater(event_queue, context.task_id, context.context_id)
        await up.start_work()
        if skill == "book_fail":
            await up.failed(up.new_agent_message([new_text_part("no seats left")]))
        elif skill == "reject":
            await up.reject(up.new_agent_message([new_text_part("not allowed here")]))
        elif skill == "cancel_me":
            await up.cancel(up.new_agent_message([new_text_part("canceled by the agent")]))
        elif skill in ("quote", "slow", "undo", "calls", "traceparent"):
            if skill == "slow":
                await asyncio.sleep(float(data.get("seconds", 0.5)))
            out: dict[str, Any] = {"quote": data, "agent": self.name}
            if skill == "calls":
                out = {"calls": list(self.calls)}
            elif skill == "traceparent":
                out = {"traceparent": self.traceparents.get(str(data.get("key")), "")}
            await up.add_artifact([new_data_part(out)], name="result")
            await up.complete()
        else:
            await up.reject(up.new_agent_message([new_text_part(f"unknown skill {skill!r}")]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Cancel on request."""
        assert context.task_id and context.context_id
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def card(name: str, url: str) -> AgentCard:
    """This agent's card."""
    return AgentCard(
        name=name,
        description="a test A2A agent",
        version="1.4",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False),
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[AgentSkill(id=s, name=s, description=f"the {s} skill", tags=["test"])
                for s in SKILLS],
    )


async def serve(name: str) -> None:
    """Bind a free port, log it, serve until killed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    agent_card = card(name, url)
    handler = DefaultRequestHandler(
        agent_executor=TestExecutor(name), task_store=InMemoryTaskStore(), agent_card=agent_card
    )
    app = Starlette(
        routes=[*create_agent_card_routes(agent_card), *create_jsonrpc_routes(handler, "/")]
    )
    # tests stop it while slow tasks run: do not wait for them on SIGTERM
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    print(json.dumps({"msg": "serving", "port": port}), file=sys.stderr, flush=True)
    await server.serve(sockets=[sock])


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="test-a2a-agent")
    asyncio.run(serve(ap.parse_args().name))


if __name__ == "__main__":
    main()
