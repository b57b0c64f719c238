"""Agent SDK and Client against a real registry daemon process and real Redis:
registration before `serving`, heartbeats carrying real load, deregistration on
SIGTERM, and the Client's typed registry methods."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh import Client
from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.errors import InvalidArgument, NotFound
from tests.procs import DaemonProcess, daemon, testing_agent
from tests.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs: Path = tmp_path_factory.mktemp("sdk-registry")
    proc: DaemonProcess = daemon(
        "registry", logs, "--redis-url", redis_server.url_for_db(6), "--metrics-port", "-1",
        "--sweep-interval-ms", "200",
    )
    with proc:
        yield proc.target


async def test_agent_registers_heartbeats_with_load_and_deregisters(
    registry: str, spawn_agent: Any
) -> None:
    agent_id = f"agent-reg-{uuid.uuid4().hex[:8]}"
    p = spawn_agent("noop", "--registry-target", registry, "--heartbeat-interval-s", "0.3",
                    "--capabilities", "sdk_test,noop", "--tags", "itest", agent_id=agent_id)
    async with Client(registry=registry) as c:
        # `serving` was logged, so the registration already happened.
        a = (await c.get_agent(agent_id=agent_id)).agent
        assert a.endpoint == p.target
        assert set(a.capabilities) == {"sdk_test", "noop"}
        assert a.status == registry_pb2.AGENT_STATUS_ACTIVE
        assert "sphere" in a.metadata["objectives"].split(",")

        out, resp = await c.execute(p.target, "work", {"n": 1}, idempotency_key="k1")
        assert out["input"] == {"n": 1.0} and resp.agent_id == agent_id

        async def load_reported() -> Any:
            agent = (await c.get_agent(agent_id=agent_id)).agent
            return agent if agent.load.processing_time_ms > 0 else None

        agent = await eventually(load_reported, timeout_s=15, every_s=0.1)
        assert agent.load.response_time_ms >= agent.load.processing_time_ms
        assert agent.load.error_rate == 0.0
        assert agent.load.memory_percent > 0

        found = await c.discover(capabilities=["sdk_test"], tags=["itest"])
        assert agent_id in [x.agent_id for x in found]

        assert p.stop() == 0
        with pytest.raises(NotFound):
            await c.get_agent(agent_id=agent_id)


async def test_agent_with_bad_registration_fails_to_start(registry: str, tmp_path: Path) -> None:
    p = testing_agent("noop", tmp_path, "--registry-target", registry, agent_id="Not_A_Valid_Id")
    with pytest.raises(RuntimeError) as ei:
        p.start(timeout_s=30)
    assert "agent failed to start" in str(ei.value)
    assert p.wait(10) == 1


async def test_client_registry_methods(registry: str) -> None:
    agent_id = f"agent-cl-{uuid.uuid4().hex[:8]}"
    async with Client(registry=registry) as c:
        created = await c.register_agent(agent={
            "agent_id": agent_id, "agent_type": "client-test", "version": "2.1.0",
            "capabilities": ["client_test"], "endpoint": "127.0.0.1:1",
        })
        assert created.created
        hb = await c.heartbeat(agent_id=agent_id, load={"queue_size": 3, "cpu_percent": 10})
        assert 0.0 <= hb.health_score <= 1.0
        ids = [a.agent_id async for a in c.iter_agents(page_size=1)]
        assert agent_id in ids
        resp = await c.discover_agents(selector={"capabilities": ["client_test"],
                                                 "version_constraint": ">=2.0.0"})
        assert [a.agent_id for a in resp.agents] == [agent_id]
        with pytest.raises(InvalidArgument) as ei:
            await c.discover_agents(selector={"version_constraint": "not a constraint"})
        assert ei.value.field_violations
        gone = await c.deregister_agent(agent_id=agent_id, reason="test")
        assert gone.agent.status == registry_pb2.AGENT_STATUS_DECOMMISSIONED
        with pytest.raises(NotFound):
            await c.deregister_agent(agent_id=agent_id)
