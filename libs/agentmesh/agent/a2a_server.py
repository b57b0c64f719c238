"""Serve an SDK agent's actions over A2A (Agent2Agent protocol) beside gRPC.

    agent = Agent("agent-quotes", agent_type="quotes", capabilities=["quote"])

    @agent.action("quote")
    async def quote(input: dict, ctx: ActionContext) -> dict: ...

    async with agent, A2AServer(agent, port=8081) as a2a:
        print(a2a.card_url)   # http://127.0.0.1:8081/.well-known/agent-card.json

Built on the official SDK (`a2a-sdk` 1.x: `DefaultRequestHandler`, the
JSON-RPC and agent card Starlette routes, served by uvicorn). The card is
generated from the agent: name = agent_type, version = the agent's version,
one skill per action (tags = the agent's capabilities) and per compensation
(tagged "compensation"). A message is one call, the mirror image of
`agentmesh.runtime.a2a_call`: the skill comes from message metadata
`skill_id` (optional when the agent has exactly one action), the input from
the first data part (else the text, as {"text": ...}), and metadata
`idempotency_key` / `attempt` / `agentmesh` / `kind` ("compensate") /
`compensated_idempotency_key` / `original_output` are honoured, so calls run through the agent's
`IdempotentExecutor` exactly as over gRPC: a keyed call runs once, a
compensation fences its Execute. The result is a data artifact and the task
COMPLETED; a bad input or unknown skill REJECTS the task; any other handler
failure FAILS it, with the error as the agent message.

A2A requests carry no deadline, so handlers see none.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn
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
    Part,
    Task,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, TransportProtocol
from google.protobuf import json_format
from starlette.applications import Starlette

from agentmesh.agent.context import ActionContext
from agentmesh.agent.executor import COMPENSATE, EXECUTE, call_handler, map_exception
from agentmesh.runtime.errors import AgentMeshError

if TYPE_CHECKING:
    from agentmesh.agent.sdk import Agent

#: Codes of handler errors that REJECT the task (the request was wrong) rather than FAIL it.
REJECTED_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})
#: Skill tag marking a compensation.
COMPENSATION_TAG = "compensation"


def agent_card(agent: Agent, *, url: str) -> AgentCard:
    """The A2A agent card of `agent`, served with its JSON-RPC interface at `url`."""
    skills = [
        AgentSkill(id=name, name=name, description=f"action {name} of {agent.agent_id}",
                   tags=list(agent.capabilities) or ["action"])
        for name in agent.actions
    ] + [
        AgentSkill(id=name, name=name, description=f"compensation {name} of {agent.agent_id}",
                   tags=[COMPENSATION_TAG])
        for name in agent.compensations
        if name not in agent.actions
    ]
    return AgentCard(
        name=agent.agent_type or agent.agent_id,
        description=f"AgentMesh agent {agent.agent_id}",
        version=agent.version,
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding=TransportProtocol.JSONRPC,
                           protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json"],
        skills=skills,
    )


class MeshAgentExecutor(AgentExecutor):
    """Runs one A2A message as one call of an SDK agent's handler.

    Args:
        agent: the SDK agent (started: its executor is open).
    """

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Drive the message's task to COMPLETED, REJECTED or FAILED."""
        msg = context.message
        assert msg is not None and context.task_id and context.context_id
        await event_queue.enqueue_event(Task(
            id=context.task_id, context_id=context.context_id,
            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED), history=[msg],
        ))
        up = TaskUpdater(event_queue, context.task_id, context.context_id)
        meta: dict[str, Any] = (
            json_format.MessageToDict(msg.metadata) if msg.HasField("metadata") else {}
        )
        a = self._agent
        skill = str(meta.get("skill_id") or "")
        if not skill and len(a.actions) == 1:
            skill = a.actions[0]
        # kind "compensate" picks the compensation of a skill that is also an action
        execute = None if meta.get("kind") == "compensate" else a.action_handler(skill)
        compensate = a.compensation_handler(skill) if execute is None else None
        handler = execute or compensate
        if handler is None:
            why = f"unknown skill {skill!r}; {a.agent_id} serves {a.actions + a.compensations}"
            await up.reject(up.new_agent_message([Part(text=why)]))
            return
        ctx = ActionContext(
            agent_id=a.agent_id,
            action=skill,
            kind="execute" if execute is not None else "compensate",
            idempotency_key=str(meta.get("idempotency_key") or ""),
            attempt=int(meta.get("attempt") or 1),
            metadata={str(k): str(v) for k, v in (meta.get("agentmesh") or {}).items()},
            original_output=meta.get("original_output"),
            compensated_idempotency_key=str(meta.get("compensated_idempotency_key") or ""),
            safety=a.safety,
        )
        inp = _input(list(msg.parts))
        await up.start_work()
        try:
            out = await a.executor.run(
                EXECUTE if execute is not None else COMPENSATE, ctx,
                lambda c: call_handler(handler, inp, c),
            )
        except Exception as exc:  # every handler failure ends the task, never the server
            err = exc if isinstance(exc, AgentMeshError) else map_exception(exc, skill)
            reply = up.new_agent_message([Part(text=err.message)])
            if err.code in REJECTED_CODES:
                await up.reject(reply)
            else:
                await up.failed(reply)
            return
        part = Part()
        part.data.struct_value.CopyFrom(out.output)
        await up.add_artifact([part], name="output")
        await up.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Mark the task CANCELED (the framework has cancelled `execute`)."""
        assert context.task_id and context.context_id
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def _input(parts: list[Part]) -> dict[str, Any]:
    for p in parts:
        if p.HasField("data"):
            value = json_format.MessageToDict(p.data)
            return value if isinstance(value, dict) else {"value": value}
    text = "\n".join(p.text for p in parts if p.text)
    return {"text": text} if text else {}


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to the agent
    process (Agent.serve stops the agent, then this server)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class A2AServer:
    """An SDK agent's A2A endpoint: the agent card and JSON-RPC over HTTP.

    Args:
        agent: the SDK agent; start it first (its executor must be open).
        host: interface to bind.
        port: port to bind; 0 picks a free one.
        advertise_host: host put in the card's URL; defaults to `host`.
        public_url: the URL clients use, when not http://<host>:<port>/ (a proxy).
    """

    def __init__(
        self, agent: Agent, *, host: str = "127.0.0.1", port: int = 0,
        advertise_host: str = "", public_url: str = "",
    ) -> None:
        self.agent = agent
        self.host = host
        self.advertise_host = advertise_host
        self.port = port
        self.public_url = public_url
        self.card: AgentCard | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The JSON-RPC URL (valid after `start`)."""
        host = self.advertise_host or self.host
        if ":" in host:
            host = f"[{host}]"  # IPv6 literal
        return self.public_url or f"http://{host}:{self.port}/"

    @property
    def card_url(self) -> str:
        """Where the agent card is served (valid after `start`); register it
        with RegistryService.RegisterA2AAgent to put the agent in a catalog
        as an A2A agent."""
        return self.url.rstrip("/") + AGENT_CARD_WELL_KNOWN_PATH

    async def start(self) -> int:
        """Bind and serve in the background.

        Returns:
            The bound port.

        Raises:
            OSError: when the port cannot be bound.
        """
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self.card = agent_card(self.agent, url=self.url)
        handler = DefaultRequestHandler(
            agent_executor=MeshAgentExecutor(self.agent), task_store=InMemoryTaskStore(),
            agent_card=self.card,
        )
        app = Starlette(routes=[
            *create_agent_card_routes(self.card), *create_jsonrpc_routes(handler, "/"),
        ])
        self._server = _Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="a2a-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, close."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._task = None

    async def __aenter__(self) -> A2AServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
