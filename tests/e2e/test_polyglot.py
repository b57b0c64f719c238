"""Polyglot end to end: the Go agent (clients/go) and the Node client
(clients/node) against real registry, router and saga daemons on a real Redis.

* A saga whose two steps are routed by capability to the Go agent completes;
  the Go agent's JSON log shows each Execute once, keyed `<saga_id>/<step>`.
* A saga whose second step fails on the Go agent (an unknown NAICS code is
  INVALID_ARGUMENT) ends COMPENSATED: the Go agent voids step a's emissions,
  and answers the compensation of the never-completed step b as a no-op.
* The Node client discovers the Go agent in the registry and its Invoke
  through the router reaches it.
* The Go agent serves grpc.health.v1 and deregisters on SIGTERM.

The Go agent is built here with `go build` (module download from the Go
proxy, then the build cache); `npm ci` runs if clients/node has no
node_modules. Without `go` or `node` the tests skip (fail under CI or
AGENTMESH_REQUIRE_INFRA=1). The Kafka bus is not needed: the saga
coordinator calls agents over gRPC.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.health import wait_health
from tests.infra import flush_db
from tests.procs import DaemonProcess, daemon
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "clients/go"
NODE_DIR = ROOT / "clients/node"
FACTORS = (ROOT / "libs/agentmesh/demo/data"
           / "SupplyChainGHGEmissionFactors_v1.2_NAICS_CO2e_USD2021.csv")
#: Logical Redis DB of these tests (registry catalog, router state, saga log).
POLYGLOT_DB = 12
#: Unique per run, so nothing else in the DB can answer for the Go agent.
CAPABILITY = f"carbon.factor.e2e-{uuid.uuid4().hex[:6]}"
GO_AGENT_ID = f"agent-go-e2e-{uuid.uuid4().hex[:6]}"
#: Runs the Go binary in place of the interpreter (same PID), so tests.procs'
#: DaemonProcess (which starts `python ...`) waits for its serving line and
#: signals it like any daemon.
EXEC_SHIM = "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"
S = saga_pb2


def _required_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"'{name}' is not on PATH; {why}"
        if any(os.environ.get(v, "") not in ("", "0") for v in ("CI", "AGENTMESH_REQUIRE_INFRA")):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def _epa_factor(naics: str) -> float:
    """kg CO2e per USD with margins for `naics`, read from the EPA file itself."""
    with FACTORS.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            if row["NAICS Code 2017"] == naics:
                return float(row["Supply Chain Emission Factors with Margins"])
    raise KeyError(naics)


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go agent built from clients/go with the committed go.mod/go.sum."""
    go = _required_tool("go", "install Go >= 1.24 to build clients/go")
    out = tmp_path_factory.mktemp("go") / "carbon-agent"
    # -mod=readonly: a go.sum that does not match go.mod fails instead of being rewritten.
    done = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(out), "./cmd/carbon-agent"],
        cwd=GO_DIR, capture_output=True, text=True, timeout=540,
    )
    assert done.returncode == 0, f"go build failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def node_client() -> Path:
    """clients/node/invoke.js with its pinned dependencies installed."""
    _required_tool("node", "install Node.js >= 20 to run clients/node")
    if not (NODE_DIR / "node_modules/@grpc/grpc-js").is_dir():
        npm = _required_tool("npm", "install npm to fetch clients/node's dependencies")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR / "invoke.js"


@pytest.fixture(scope="module")
def mesh(
    redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonProcess]]:
    """Registry, router and saga coordinator on DB 12."""
    url = flush_db(redis_server.url_for_db(POLYGLOT_DB))
    logs = tmp_path_factory.mktemp("mesh")
    procs: dict[str, DaemonProcess] = {}
    try:
        procs["registry"] = daemon("registry", logs, "--redis-url", url).start()
        procs["router"] = daemon(
            "router", logs, "--redis-url", url, "--registry-target", procs["registry"].target
        ).start()
        procs["saga"] = daemon(
            "saga", logs, "--redis-url", url,
            "--registry-target", procs["registry"].target,
            "--router-target", procs["router"].target,
        ).start()
        yield procs
    finally:
        for p in reversed(procs.values()):
            p.stop()


def go_agent_process(
    binary: Path, registry: DaemonProcess, log_dir: Path, agent_id: str
) -> DaemonProcess:
    """A Go agent process (not started) registering `agent_id` with CAPABILITY."""
    return DaemonProcess(
        ["-c", EXEC_SHIM, str(binary), "--agent-id", agent_id, "--listen", "127.0.0.1:0",
         "--registry-target", registry.target, "--capabilities", CAPABILITY,
         "--heartbeat-interval", "1s", "--grace-period", "5s"],
        log_dir / f"{agent_id}.log",
    )


@pytest.fixture(scope="module")
def go_agent(
    go_binary: Path, mesh: dict[str, DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """The Go agent GO_AGENT_ID, registered (its serving line comes after RegisterAgent)."""
    with go_agent_process(
        go_binary, mesh["registry"], tmp_path_factory.mktemp("go-agent"), GO_AGENT_ID
    ).start() as p:
        yield p


@pytest.fixture
async def saga_stub(mesh: dict[str, DaemonProcess]) -> AsyncIterator[saga_pb2_grpc.SagaServiceStub]:
    async with grpc.aio.insecure_channel(mesh["saga"].target) as ch:
        yield saga_pb2_grpc.SagaServiceStub(ch)


def log_lines(agent: DaemonProcess) -> list[dict[str, Any]]:
    """The JSON lines the Go agent logged on stderr, in order."""
    text = agent.log_path.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def go_calls(agent: DaemonProcess, kind: str, saga_id: str) -> list[dict[str, Any]]:
    """The Go agent's `execute`/`compensate` log lines for one saga's keys, in log order."""
    return [d for d in log_lines(agent)
            if d.get("msg") == kind and d.get("idempotency_key", "").startswith(saga_id + "/")]


def step(name: str, *, deps: tuple[str, ...] = (), mapping: dict[str, str] | None = None) -> S.Step:
    """A step routed by capability to the Go agent, with its compensation."""
    return S.Step(
        name=name,
        selector=common_pb2.AgentSelector(capabilities=[CAPABILITY]),
        action="calculate_emissions",
        compensation_action="void_emissions",
        depends_on=list(deps),
        input_mapping=mapping or {},
    )


async def run_saga(
    stub: saga_pb2_grpc.SagaServiceStub, steps: list[S.Step], saga_input: dict[str, Any]
) -> S.Saga:
    """Start an inline saga and wait (GetSaga polling) for its final state."""
    req = S.StartSagaRequest(definition=S.SagaDefinition(
        steps=steps, compensation_strategy=S.COMPENSATION_STRATEGY_BACKWARD))
    req.input.update(saga_input)
    saga_id = (await stub.StartSaga(req, timeout=10)).saga.saga_id
    final = {S.SAGA_STATE_COMPLETED, S.SAGA_STATE_COMPENSATED, S.SAGA_STATE_FAILED,
             S.SAGA_STATE_CANCELLED}

    async def done() -> S.Saga | None:
        s = (await stub.GetSaga(S.GetSagaRequest(saga_id=saga_id), timeout=10)).saga
        return s if s.state in final else None

    saga: S.Saga = await eventually(done, timeout_s=60, every_s=0.1, what=f"saga {saga_id} final")
    return saga


async def test_saga_steps_run_on_the_go_agent(go_agent: DaemonProcess, saga_stub: Any) -> None:
    saga = await run_saga(
        saga_stub,
        [step("a"), step("b", deps=("a",),
                         mapping={"naics": "'541511'", "spend_usd": "input.spend_usd"})],
        {"naics": "334111", "spend_usd": 1000},
    )
    assert saga.state == S.SAGA_STATE_COMPLETED, saga
    out = json_format.MessageToDict(saga.output)
    assert out["a"]["agent_id"] == GO_AGENT_ID and out["a"]["language"] == "go"
    assert out["a"]["kg_co2e"] == pytest.approx(1000 * _epa_factor("334111"))
    assert out["b"]["naics"] == "541511"
    assert out["b"]["kg_co2e"] == pytest.approx(1000 * _epa_factor("541511"))
    execs = go_calls(go_agent, "execute", saga.saga_id)
    assert [d["idempotency_key"] for d in execs] == [f"{saga.saga_id}/a", f"{saga.saga_id}/b"]
    assert all(d["code"] == "OK" and not d["deduplicated"] for d in execs)
    assert go_calls(go_agent, "compensate", saga.saga_id) == []


async def test_failed_step_compensates_on_the_go_agent(
    go_agent: DaemonProcess, saga_stub: Any
) -> None:
    saga = await run_saga(
        saga_stub,
        [step("a"), step("b", deps=("a",),
                         mapping={"naics": "'999999'", "spend_usd": "input.spend_usd"})],
        {"naics": "481111", "spend_usd": 250},
    )
    assert saga.state == S.SAGA_STATE_COMPENSATED, saga
    assert saga.error.step_name == "b" and saga.error.code == "INVALID_ARGUMENT"
    assert {s.name: s.status for s in saga.steps}["a"] == S.STEP_STATUS_COMPENSATED
    execs = go_calls(go_agent, "execute", saga.saga_id)
    assert [(d["idempotency_key"].rsplit("/", 1)[1], d["code"]) for d in execs] == [
        ("a", "OK"), ("b", "INVALID_ARGUMENT")]
    comps = {d["idempotency_key"]: d for d in go_calls(go_agent, "compensate", saga.saga_id)}
    # BACKWARD undoes every attempted step, the failed one included, last first.
    assert list(comps) == [f"{saga.saga_id}/b/compensate", f"{saga.saga_id}/a/compensate"]
    a = comps[f"{saga.saga_id}/a/compensate"]
    assert a["code"] == "OK" and a["output"]["voided"] is True
    assert a["output"]["kg_co2e"] == pytest.approx(250 * _epa_factor("481111"))
    b = comps[f"{saga.saga_id}/b/compensate"]
    assert b["code"] == "OK"
    assert b["output"]["voided"] is False and b["output"]["executed"] is False


def test_node_client_invokes_the_go_agent_through_the_router(
    go_agent: DaemonProcess, mesh: dict[str, DaemonProcess], node_client: Path
) -> None:
    key = f"node-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        ["node", str(node_client), "--registry", mesh["registry"].target,
         "--router", mesh["router"].target, "--capability", CAPABILITY,
         "--action", "calculate_emissions", "--input", '{"naics": 562111, "spend_usd": 40}',
         "--idempotency-key", key],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(a["agent_id"], a["language"]) for a in result["discovered"]] == [(GO_AGENT_ID, "go")]
    assert result["agent_id"] == GO_AGENT_ID
    assert result["output"]["language"] == "go" and result["output"]["naics"] == "562111"
    assert result["output"]["kg_co2e"] == pytest.approx(40 * _epa_factor("562111"))
    # The call reached the Go process itself, with the client's key.
    assert [d["code"] for d in log_lines(go_agent)
            if d.get("msg") == "execute" and d.get("idempotency_key") == key] == ["OK"]


async def test_go_agent_serves_health_and_deregisters_on_sigterm(
    go_binary: Path, mesh: dict[str, DaemonProcess], tmp_path: Path
) -> None:
    agent_id = f"agent-go-e2e-{uuid.uuid4().hex[:6]}"
    p = go_agent_process(go_binary, mesh["registry"], tmp_path, agent_id).start()
    try:
        await wait_health(p.target, health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(mesh["registry"].target) as ch:
            reg = registry_pb2_grpc.RegistryServiceStub(ch)
            got = (await reg.GetAgent(registry_pb2.GetAgentRequest(agent_id=agent_id))).agent
            assert got.endpoint == p.target
            assert got.metadata["language"] == "go"
            assert got.metadata["actions"] == "calculate_emissions"
            # Heartbeats arrive (every 1 s): the registry's count of them moves.
            first = got.last_heartbeat_time.ToNanoseconds()

            async def heartbeat_seen() -> bool:
                a = (await reg.GetAgent(registry_pb2.GetAgentRequest(agent_id=agent_id))).agent
                return a.last_heartbeat_time.ToNanoseconds() > first

            await eventually(heartbeat_seen, timeout_s=15, every_s=0.2, what="a heartbeat")
            assert p.stop() == 0
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await reg.GetAgent(registry_pb2.GetAgentRequest(agent_id=agent_id))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        p.stop()
    assert any(d.get("msg") == "deregistered" for d in log_lines(p))

