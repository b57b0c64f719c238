"""Client call behaviour (deadlines, retries, error mapping, request building)
against a real grpc.aio server on loopback that scripts its answers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentmesh import Client
from agentmesh.agent.structs import struct_to_dict
from agentmesh.client.base import _build
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.router.v1 import router_pb2, router_pb2_grpc
from agentmesh.runtime.errors import (
    DeadlineExceeded,
    ErrorReason,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from agentmesh.runtime.interceptors import RuntimeInterceptor
from agentmesh.saga.v1 import saga_pb2


class ScriptedRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """Fails the first `fail` calls of each method with `error`, then answers."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fail = 0
        self.error: Exception = Unavailable("scripted outage", reason="TEST")
        self.delay_s = 0.0

    async def _enter(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.calls[name] <= self.fail:
            raise self.error

    async def GetAgent(self, request: Any, context: Any) -> registry_pb2.GetAgentResponse:
        await self._enter("GetAgent")
        if request.agent_id == "agent-missing":
            raise NotFound("no such agent", resource_type="agent", resource_name="agent-missing")
        return registry_pb2.GetAgentResponse(agent=registry_pb2.Agent(agent_id=request.agent_id))

    async def DeregisterAgent(self, request: Any, context: Any) -> Any:
        await self._enter("DeregisterAgent")
        return registry_pb2.DeregisterAgentResponse()

    async def ListAgents(self, request: Any, context: Any) -> registry_pb2.ListAgentsResponse:
        await self._enter("ListAgents")
        start = int(request.page_token or 0)
        ids = [f"agent-{i}" for i in range(5)][start : start + request.page_size]
        nxt = start + request.page_size
        return registry_pb2.ListAgentsResponse(
            agents=[registry_pb2.Agent(agent_id=i) for i in ids],
            next_page_token=str(nxt) if nxt < 5 else "",
        )

    async def DiscoverAgents(self, request: Any, context: Any) -> Any:
        await self._enter("DiscoverAgents")
        if request.selector.min_health_score > 1:
            raise InvalidArgument("bad", field_violations={"selector.min_health_score": "<= 1"})
        return registry_pb2.DiscoverAgentsResponse(
            agents=[
                registry_pb2.Agent(agent_id="agent-" + c) for c in request.selector.capabilities
            ]
        )


class ScriptedRouter(router_pb2_grpc.RouterServiceServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.reason: ErrorReason.ValueType | str = ""

    async def Invoke(self, request: Any, context: Any) -> router_pb2.InvokeResponse:
        self.calls += 1
        if self.calls <= 2:
            raise Unavailable("the first two calls fail", reason=self.reason)
        return router_pb2.InvokeResponse(output=request.message.payload.struct_value,
                                         agent_id="agent-x")


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ScriptedRegistry, ScriptedRouter, Client]]:
    server = grpc.aio.server(interceptors=[RuntimeInterceptor(None)])
    reg, rt = ScriptedRegistry(), ScriptedRouter()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(reg, server)
    router_pb2_grpc.add_RouterServiceServicer_to_server(rt, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    client = Client(registry=target, router=target, default_timeout_s=5.0)
    try:
        yield reg, rt, client
    finally:
        await client.close()
        await server.stop(0)


async def test_idempotent_call_is_retried_on_unavailable(servers: Any) -> None:
    reg, _, c = servers
    reg.fail = 2
    resp = await c.get_agent(agent_id="agent-a")
    assert resp.agent.agent_id == "agent-a"
    assert reg.calls["GetAgent"] == 3


async def test_retries_give_up_with_the_mesh_error(servers: Any) -> None:
    reg, _, c = servers
    reg.fail = 100
    with pytest.raises(Unavailable) as ei:
        await c.get_agent(agent_id="agent-a")
    assert ei.value.reason == "TEST"
    assert reg.calls["GetAgent"] == c.retry_attempts


async def test_a_call_the_contract_marks_idempotent_is_retried(servers: Any) -> None:
    # DeregisterAgent is `idempotency_level = IDEMPOTENT` in registry.proto.
    reg, _, c = servers
    reg.fail = 1
    await c.deregister_agent(agent_id="agent-a")
    assert reg.calls["DeregisterAgent"] == 2


async def test_unknown_call_is_retried_when_nothing_was_applied(servers: Any) -> None:
    # Invoke without a key is IDEMPOTENCY_UNKNOWN, but NO_HEALTHY_TARGET says
    # the router called no agent, so sending it again is safe.
    _, rt, c = servers
    rt.reason = ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET
    resp = await c.invoke(message={"payload": {"struct_value": {"a": 1}}}, action="x")
    assert rt.calls == 3
    assert struct_to_dict(resp.output) == {"a": 1}


async def test_keyed_call_is_retried_only_with_a_key(servers: Any) -> None:
    _, rt, c = servers
    with pytest.raises(Unavailable):
        await c.invoke(message={"payload": {"struct_value": {"a": 1}}}, action="x")
    assert rt.calls == 1
    resp = await c.invoke(message={"payload": {"struct_value": {"a": 1}}}, action="x",
                          idempotency_key="req-1")
    assert rt.calls == 3
    assert struct_to_dict(resp.output) == {"a": 1}


async def test_other_codes_are_not_retried_and_keep_details(servers: Any) -> None:
    reg, _, c = servers
    with pytest.raises(NotFound):
        await c.get_agent(agent_id="agent-missing")
    assert reg.calls["GetAgent"] == 1
    with pytest.raises(InvalidArgument) as ei:
        await c.discover_agents(selector={"min_health_score": 2})
    assert ei.value.field_violations == [("selector.min_health_score", "<= 1")]


async def test_deadline_applies(servers: Any) -> None:
    reg, _, c = servers
    reg.delay_s = 2.0
    with pytest.raises(DeadlineExceeded):
        await c.get_agent(agent_id="agent-a", timeout_s=0.2)


async def test_helpers_page_and_discover(servers: Any) -> None:
    _, _, c = servers
    ids = [a.agent_id async for a in c.iter_agents(page_size=2)]
    assert ids == [f"agent-{i}" for i in range(5)]
    found = await c.discover(capabilities=["a", "b"])
    assert [a.agent_id for a in found] == ["agent-a", "agent-b"]


async def test_unreachable_daemon_is_unavailable() -> None:
    async with Client(registry="127.0.0.1:1", default_timeout_s=1.0, retry_attempts=2) as c:
        with pytest.raises(Unavailable):
            await c.get_agent(agent_id="agent-a")
        assert await c.health("registry") == "UNREACHABLE"


def test_build_converts_friendly_values() -> None:
    req = _build(saga_pb2.ListSagasRequest, None, {"page_size": 3})
    assert req.page_size == 3
    d = _build(registry_pb2.DiscoverAgentsRequest, None,
               {"selector": {"capabilities": ["x"], "min_health_score": 0.5}})
    assert list(d.selector.capabilities) == ["x"] and d.selector.min_health_score == 0.5
    ls = _build(registry_pb2.ListAgentsRequest, None, {"status": "AGENT_STATUS_ACTIVE"})
    assert ls.status == registry_pb2.AGENT_STATUS_ACTIVE
    with pytest.raises(TypeError):
        _build(registry_pb2.GetAgentRequest, None, {"nope": 1})
    with pytest.raises(TypeError):
        _build(registry_pb2.GetAgentRequest, registry_pb2.GetAgentRequest(), {"agent_id": "a"})


def test_generated_wrappers_are_fresh() -> None:
    rc = subprocess.run([sys.executable, "-m", "agentmesh.client._codegen", "--check"]).returncode
    assert rc == 0, "run `python -m agentmesh.client._codegen` after a proto change"
