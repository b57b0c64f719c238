"""Defect 5 of issue 20: the registry after Redis comes back empty (a
restart without persistence) under a running registry. The registry detects
the reset (its epoch key is gone), says so in a WARNING and the
registry_catalog_resets_total metric, and rebuilds its discovery mirror: the
30 lost agents are no longer discovered, a newly registered one is, and SDK
agents re-register on their next heartbeat (the registry answers NOT_FOUND),
and the Go agent (clients/go) re-register on their next heartbeat (the
registry answers NOT_FOUND), so the catalog refills within about one
heartbeat interval."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.hardening import errors_in_log, log_docs
from tests.infra import RedisServer
from tests.integration.registry.helpers import agent
from tests.procs import ROOT, DaemonProcess, ProcessGroup, daemon, scrape_metrics, testing_agent
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HEARTBEAT_S = 0.5
GO_CAPABILITY = "carbon.reset"
EXEC_SHIM = "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"


@pytest.fixture(scope="module")
def go_agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go/cmd/carbon-agent, built with the committed go.mod/go.sum."""
    go = shutil.which("go")
    if go is None:
        if any(os.environ.get(v, "") not in ("", "0") for v in ("CI", "AGENTMESH_REQUIRE_INFRA")):
            pytest.fail("go is not on PATH; install Go >= 1.24 to build clients/go")
        pytest.skip("go is not on PATH")
    out = tmp_path_factory.mktemp("go") / "carbon-agent"
    done = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(out), "./cmd/carbon-agent"],
        cwd=ROOT / "clients/go", capture_output=True, text=True, timeout=540,
    )
    assert done.returncode == 0, f"go build failed:\n{done.stderr}"
    return out


async def discover(stub: registry_pb2_grpc.RegistryServiceStub, cap: str) -> set[str]:
    resp = await stub.DiscoverAgents(
        registry_pb2.DiscoverAgentsRequest(
            selector=common_pb2.AgentSelector(capabilities=[cap]), max_results=100
        ),
        timeout=5,
    )
    return {a.agent_id for a in resp.agents}


async def test_registry_rebuilds_after_redis_comes_back_empty(
    tmp_path: Path, go_agent_binary: Path
) -> None:
    redis = RedisServer(workdir=tmp_path / "redis").start()
    group = ProcessGroup()
    try:
        reg = group.start(
            daemon(
                "registry", tmp_path, "--redis-url", redis.url, "--health-interval-s", "0.3",
                "--discovery-cache-ttl-ms", "60000", "--deregistration-timeout-ms", "60000",
            )
        )
        sdk_agents = [
            group.start(
                testing_agent(
                    "noop", tmp_path, "--registry-target", reg.target,
                    "--heartbeat-interval-s", str(HEARTBEAT_S), agent_id=f"agent-sdk-{i}",
                )
            )
            for i in range(2)
        ]
        sdk_ids = {a.agent_id for a in sdk_agents}
        group.start(
            DaemonProcess(
                ["-c", EXEC_SHIM, str(go_agent_binary), "--agent-id", "agent-go-reset",
                 "--listen", "127.0.0.1:0", "--registry-target", reg.target,
                 "--capabilities", GO_CAPABILITY, "--heartbeat-interval", "500ms",
                 "--grace-period", "1s"],
                tmp_path / "go-agent.log",
            )
        )
        lost = {f"agent-lost-{i:02d}" for i in range(30)}
        async with grpc.aio.insecure_channel(reg.target) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            for agent_id in sorted(lost):
                await stub.RegisterAgent(
                    registry_pb2.RegisterAgentRequest(agent=agent(agent_id)), timeout=5
                )
            assert await discover(stub, "calc") == lost
            assert await eventually(lambda: discover(stub, "noop"), timeout_s=10) == sdk_ids
            assert await eventually(lambda: discover(stub, GO_CAPABILITY), timeout_s=10) == {
                "agent-go-reset"
            }

            redis.restart()  # no persistence: it comes back empty

            # New registrations carry the new dataset's revision past the old
            # one, so the revision alone no longer tells that Redis was reset.
            new = {f"agent-new-{i:02d}" for i in range(40)}

            async def register_new() -> bool:
                try:
                    for agent_id in sorted(new):
                        await stub.RegisterAgent(
                            registry_pb2.RegisterAgentRequest(agent=agent(agent_id)), timeout=5
                        )
                except grpc.aio.AioRpcError:
                    return False  # UNAVAILABLE while Redis restarts
                return True

            await eventually(register_new, timeout_s=10, every_s=0.1, what="registered again")

            async def only_new() -> bool:
                try:
                    return await discover(stub, "calc") == new
                except grpc.aio.AioRpcError:
                    return False  # the pool still reconnecting to Redis

            await eventually(only_new, timeout_s=5, every_s=0.1, what="lost agents forgotten")

            async def refilled() -> bool:
                try:
                    return await discover(stub, "noop") == sdk_ids and await discover(
                        stub, GO_CAPABILITY
                    ) == {"agent-go-reset"}
                except grpc.aio.AioRpcError:
                    return False

            await eventually(
                refilled, timeout_s=4 * HEARTBEAT_S + 2, every_s=0.1, what="SDK agents back"
            )
        warned = [d for d in log_docs(reg) if d.get("msg", "").startswith("redis catalog reset")]
        assert len(warned) == 1 and warned[0]["level"] == "WARNING"
        body = await asyncio.to_thread(scrape_metrics, reg.metrics_port)
        assert "registry_catalog_resets_total 1.0" in body
        assert errors_in_log(reg) == []
    finally:
        group.stop_all()
        redis.stop()
