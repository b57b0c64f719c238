"""`agentmesh mcp serve` against real daemons: the official MCP client
(`mcp.ClientSession`) over stdio (spawning the CLI) and over streamable HTTP
lists the mesh's tools and calls `invoke`, `run_saga` and `get_saga_history`
on a real registry, router and saga coordinator with bearer auth on, and a
real SDK agent. A bad argument is an error result naming the field; a caller
without a token gets the mesh's UNAUTHENTICATED as an error result."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from agentmesh.client import Client
from agentmesh.mcp.schema import message_schema
from agentmesh.router.v1 import router_pb2
from tests.agents import forget_agent_keys
from tests.procs import ROOT, AgentProcess, DaemonProcess, ProcessGroup, daemon, testing_agent
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: Logical Redis DB of these tests (not flushed: every id and capability is unique).
MCP_DB = 8
TOKEN = "tok-mcp-user"
TOOLS = {"discover_agents", "invoke", "run_saga", "schedule_task", "get_task", "publish",
         "get_saga_history"}


@dataclass
class Mesh:
    daemons: dict[str, DaemonProcess]
    agent: AgentProcess
    capability: str
    http_url: str

    def target_flags(self) -> list[str]:
        return [f"--{name}={p.target}" for name, p in self.daemons.items()]


@pytest.fixture(scope="module")
def mesh(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Registry, router and saga coordinator with auth on, one noop agent with a
    unique capability (its action `refuse` fails), and `agentmesh mcp serve
    --transport http` on a free loopback port."""
    tmp = tmp_path_factory.mktemp("mcp")
    url = redis_server.url_for_db(MCP_DB)
    agent_id = f"agent-mcp-{uuid.uuid4().hex[:10]}"
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps({
        TOKEN: {"identity": "mcp-user", "roles": ["admin"]},
        "tok-mesh": {"identity": "mesh", "roles": ["admin"]},
        "tok-agent": agent_id,
    }))
    auth = ["--auth-tokens-file", str(tokens), "--auth-token", "tok-mesh"]
    fast = ["--state-ttl-ms", "100", "--gen-poll-ms", "50"]
    group = ProcessGroup()
    procs = {
        "registry": daemon("registry", tmp, "--redis-url", url, *auth),
        "router": daemon("router", tmp, "--redis-url", url, *auth, *fast),
        "saga": daemon("saga", tmp, "--redis-url", url, *auth, *fast),
        "bus": daemon("bus", tmp, "--redis-url", url, *auth),  # in-memory log backend
    }
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(group.start, procs.values()))
        cap = f"mcp-{uuid.uuid4().hex[:8]}"
        agent = group.start(testing_agent(
            "noop", tmp, "--redis-url", url, "--registry-target", procs["registry"].target,
            "--token", "tok-agent", "--capabilities", cap, "--fail-actions", "refuse",
            agent_id=agent_id,
        ))
        targets = [f"--{name}={p.target}" for name, p in procs.items()]
        http = group.start(DaemonProcess(
            ["-m", "agentmesh.cli.main", *targets, "mcp", "serve", "--transport", "http",
             "--port", "0", "--call-timeout-s", "10", "--saga-timeout-s", "30"],
            tmp / "mcp-http.log", env={"AGENTMESH_AUTH_TOKEN": ""},
        ))
        yield Mesh(procs, agent, cap, f"http://127.0.0.1:{http.port}/mcp")
    finally:
        group.stop_all(timeout_s=5)
        forget_agent_keys(url, agent_id)


def invoke_args(mesh: Mesh, **payload: Any) -> dict[str, Any]:
    return {
        "action": "calculate",
        "message": {"selector": {"capabilities": [mesh.capability]},
                    "payload": {"struct_value": payload}},
        "idempotency_key": uuid.uuid4().hex,
    }


def saga_args(mesh: Mesh, *actions: str) -> dict[str, Any]:
    """An inline saga: one step per action, each after the previous, each compensable."""
    steps = []
    for i, action in enumerate(actions):
        step: dict[str, Any] = {
            "name": f"s{i}", "action": action, "compensation_action": f"undo_{action}",
            "selector": {"capabilities": [mesh.capability]},
            "retry_policy": {"max_attempts": 1},
        }
        if i:
            step["depends_on"] = [f"s{i - 1}"]
        steps.append(step)
    return {"definition": {"name": "mcp-test", "steps": steps}, "input": {"order": 7},
            "idempotency_key": uuid.uuid4().hex, "wait_timeout_s": 30}


async def call_ok(session: ClientSession, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await session.call_tool(tool, args)
    assert not res.is_error, res.content[0].text
    assert isinstance(res.structured_content, dict)
    # The text content is the same JSON, for clients that read only text.
    assert json.loads(res.content[0].text) == res.structured_content
    return res.structured_content


async def invoke_when_routable(session: ClientSession, mesh: Mesh) -> dict[str, Any]:
    """The first invoke, once the router's candidate snapshot holds the new agent."""
    async def attempt() -> dict[str, Any] | None:
        res = await session.call_tool("invoke", invoke_args(mesh, x=1))
        if res.is_error:
            assert "UNAVAILABLE" in res.content[0].text, res.content[0].text
            return None
        return res.structured_content

    return await eventually(attempt, timeout_s=15, every_s=0.2, what="agent routable")


async def test_stdio_tools_invoke_run_saga_and_bad_arguments(mesh: Mesh) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agentmesh.cli.main", *mesh.target_flags(), "--token", TOKEN, "mcp",
              "serve", "--call-timeout-s", "10", "--saga-timeout-s", "30"],
        cwd=str(ROOT),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        # Schemas come from the contract: InvokeRequest's descriptor, enums by value name.
        schema = tools["invoke"].input_schema
        assert schema == json.loads(json.dumps(message_schema(router_pb2.InvokeRequest.DESCRIPTOR)))
        assert schema["properties"]["strategy"]["enum"] == [
            v.name for v in router_pb2.Strategy.DESCRIPTOR.values
        ]
        assert tools["get_saga_history"].annotations.read_only_hint is True
        assert tools["run_saga"].input_schema["properties"]["definition"]["properties"]["steps"]

        out = await invoke_when_routable(session, mesh)
        assert out["agent_id"] == mesh.agent.agent_id
        assert out["output"]["input"] == {"x": 1}
        assert out["output"]["action"] == "calculate"

        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total, message))

        res = await session.call_tool("run_saga", saga_args(mesh, "book", "pay"),
                                      progress_callback=on_progress)
        assert not res.is_error, res.content[0].text
        done = res.structured_content
        # One progress report per saga event; the last counts both steps done.
        assert progress[-1] == (2.0, 2.0, f"#{done['saga']['last_sequence']} SAGA_COMPLETED")
        assert any("STEP_COMPLETED s0" in (m or "") for _, _, m in progress)
        saga = done["saga"]
        assert saga["state"] == "SAGA_STATE_COMPLETED"
        assert saga["output"]["s1"]["action"] == "pay"
        assert saga["output"]["s0"]["input"]["order"] == 7

        # A failing step: the saga compensates s0 and the tool says so as an error.
        res = await session.call_tool("run_saga", saga_args(mesh, "book", "refuse"))
        assert res.is_error
        assert "SAGA_STATE_COMPENSATED" in res.content[0].text
        assert "FAILED_PRECONDITION" in res.content[0].text
        failed = res.structured_content["saga"]
        assert failed["state"] == "SAGA_STATE_COMPENSATED"

        history = await call_ok(session, "get_saga_history",
                                {"saga_id": failed["saga_id"], "page_size": 100})
        kinds = [e["type"] for e in history["events"]]
        assert kinds[0] == "SAGA_EVENT_TYPE_SAGA_STARTED"
        assert "SAGA_EVENT_TYPE_STEP_FAILED" in kinds
        assert "SAGA_EVENT_TYPE_STEP_COMPENSATED" in kinds
        assert kinds[-1] == "SAGA_EVENT_TYPE_SAGA_COMPENSATED"

        # Bad arguments are error results that name the field, checked by the schema...
        res = await session.call_tool("invoke", {**invoke_args(mesh), "action": 5})
        assert res.is_error
        err = res.structured_content["error"]
        assert err["code"] == "INVALID_ARGUMENT"
        assert [v["field"] for v in err["field_violations"]] == ["action"]
        res = await session.call_tool("invoke", {**invoke_args(mesh), "strategy": "FASTEST"})
        assert res.structured_content["error"]["field_violations"][0]["field"] == "strategy"
        res = await session.call_tool("publish", {"message": {"topic": "t", "colour": "red"}})
        assert res.structured_content["error"]["field_violations"][0]["field"] == \
            "message.colour"
        # ... and by the mesh itself (the router's INVALID_ARGUMENT with its field violations).
        res = await session.call_tool("invoke", {**invoke_args(mesh), "action": ""})
        assert res.is_error
        err = res.structured_content["error"]
        assert err["code"] == "INVALID_ARGUMENT", err
        assert "action" in {v["field"] for v in err["field_violations"]}
        # The session survives every error: the next call still works.
        found = await call_ok(session, "discover_agents",
                              {"selector": {"capabilities": [mesh.capability]}})
        assert [a["agent_id"] for a in found["agents"]] == [mesh.agent.agent_id]


async def test_http_carries_the_callers_token(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(mesh.http_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        assert {t.name for t in (await session.list_tools()).tools} == TOOLS
        out = await invoke_when_routable(session, mesh)
        assert out["agent_id"] == mesh.agent.agent_id
        done = await call_ok(session, "run_saga", saga_args(mesh, "ship"))
        assert done["saga"]["state"] == "SAGA_STATE_COMPLETED"
        assert done["saga"]["output"]["s0"]["action"] == "ship"

    # Without a header the server sends no token (never its own): the mesh refuses.
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        streamable_http_client(mesh.http_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        res = await session.call_tool("invoke", invoke_args(mesh, x=2))
        assert res.is_error
        assert res.structured_content["error"]["code"] == "UNAUTHENTICATED", res.content[0].text
        res = await session.call_tool("run_saga", saga_args(mesh, "ship"))
        assert res.structured_content["error"]["code"] == "UNAUTHENTICATED"


async def test_http_publish_and_schedule_task(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(mesh.http_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        topic = f"mcp.test.{uuid.uuid4().hex[:8]}"
        pub = await call_ok(session, "publish", {"message": {
            "topic": topic, "id": uuid.uuid4().hex,
            "payload": {"struct_value": {"hello": "mesh"}}}})
        assert pub["id"] and pub["position"]["topic"] == topic
        # The bus's own validation, as an error result naming the field.
        res = await session.call_tool("publish", {"message": {"topic": topic}})
        assert res.is_error
        assert "message.payload" in {
            v["field"] for v in res.structured_content["error"]["field_violations"]}

        queued = await call_ok(session, "schedule_task", {
            "task_type": "reconcile", "agent_id": mesh.agent.agent_id,
            "payload": {"batch": 3}, "idempotency_key": uuid.uuid4().hex})
        task_id = queued["task"]["task_id"]

        async def finished() -> dict[str, Any] | None:
            task = (await call_ok(session, "get_task", {"task_id": task_id}))["task"]
            return task if task["state"] == "TASK_STATE_COMPLETED" else None

        task = await eventually(finished, timeout_s=20, every_s=0.2, what="task completed")
        assert task["result"]["action"] == "reconcile"
        assert task["result"]["input"] == {"batch": 3}


async def test_guardrails_apply_to_mcp_calls(mesh: Mesh) -> None:
    """A CRITICAL safety rule on the router blocks an MCP invoke whose payload
    breaks it (FAILED_PRECONDITION with the violation, as an error result)."""
    kind = f"mcp-guard-{uuid.uuid4().hex[:8]}"
    async with Client(router=mesh.daemons["router"].target, token=TOKEN) as admin:
        await admin.create_safety_rule(rule={
            "name": kind, "condition": "!has(payload.spend) || payload.spend <= 100.0",
            "level": "SAFETY_LEVEL_CRITICAL", "message_types": [kind],
            "description": "spend cap"})
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                streamable_http_client(mesh.http_url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()

                def guarded(spend: float) -> dict[str, Any]:
                    args = invoke_args(mesh, spend=spend)
                    args["message"]["message_type"] = kind
                    return args

                async def blocked() -> Any:
                    res = await session.call_tool("invoke", guarded(500.0))
                    return res if res.is_error else None

                res = await eventually(blocked, timeout_s=10, every_s=0.1, what="rule applied")
                assert res.structured_content["error"]["code"] == "FAILED_PRECONDITION"
                assert kind in res.content[0].text
                out = await call_ok(session, "invoke", guarded(50.0))
                assert out["output"]["input"] == {"spend": 50.0}
        finally:
            await admin.delete_safety_rule(name=kind)


def test_serve_log_names_the_url(mesh: Mesh) -> None:
    """The http server's serving line says where it listens (what scripts wait for)."""
    logs = Path(mesh.daemons["registry"].log_path).parent / "mcp-http.log"
    docs = [json.loads(line) for line in logs.read_text().splitlines() if line.startswith("{")]
    assert {"msg": "serving", "url": mesh.http_url}.items() <= next(
        d for d in docs if d.get("msg") == "serving").items()
