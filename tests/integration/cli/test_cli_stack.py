"""`agentmesh` against a real stack it started itself with `up` on free ports:
status, agents, route, invoke, bus, saga, swarm, down; nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentmesh.cli.stack import pid_alive
from tests.integration.cli.conftest import Stack, cli, free_port_block, up_args
from tests.procs import ROOT, DaemonProcess, testing_agent

pytestmark = pytest.mark.integration

DAEMONS = ["bus", "router", "registry", "saga", "swarm"]


@pytest.fixture(scope="module")
def agent(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with testing_agent(
        "counting", tmp_path_factory.mktemp("agent"),
        "--registry-target", stack.target("registry"), "--redis-url", stack.redis_url,
        "--heartbeat-interval-s", "0.5", "--capabilities", "cli_test",
        agent_id=f"agent-cli-{uuid.uuid4().hex[:8]}",
    ) as p:
        yield p


def test_status_shows_every_daemon_serving(stack: Stack) -> None:
    res = stack.cli("status", "-o", "json", check=True)
    rows = {r["daemon"]: r for r in json.loads(res.stdout)}
    assert set(rows) == set(DAEMONS)
    for i, d in enumerate(DAEMONS):
        assert rows[d]["health"] == "SERVING"
        assert rows[d]["target"] == f"127.0.0.1:{stack.base + i}"
        assert rows[d]["pid"] in stack.pids
    human = stack.cli("status", check=True)
    assert "SERVING" in human.stdout and "registry" in human.stdout


def test_second_up_on_a_running_stack_is_refused(stack: Stack) -> None:
    res = cli(*up_args(stack.run_dir, stack.base))
    assert res.returncode == 1
    assert "still running" in res.stderr


def test_agents_commands(stack: Stack, agent: Any) -> None:
    listed = json.loads(stack.cli("agents", "list", "-o", "json", check=True).stdout)
    assert agent.agent_id in [a["agent_id"] for a in listed]
    got = json.loads(stack.cli("agents", "get", agent.agent_id, "-o", "json", check=True).stdout)
    assert got["endpoint"] == agent.target and got["status"] == "AGENT_STATUS_ACTIVE"
    found = json.loads(stack.cli("agents", "discover", "-c", "cli_test", "-o", "json",
                                 check=True).stdout)
    assert [a["agent_id"] for a in found["agents"]] == [agent.agent_id]
    missing = stack.cli("agents", "get", "agent-does-not-exist")
    assert missing.returncode == 4
    assert "NOT_FOUND" in missing.stderr


def test_route_and_invoke(stack: Stack, agent: Any) -> None:
    routed = json.loads(stack.cli("route", "-c", "cli_test", "-o", "json", check=True).stdout)
    assert [t["agent_id"] for t in routed["targets"]] == [agent.agent_id]
    key = f"cli-{uuid.uuid4().hex}"
    args = ["invoke", "tally", "-c", "cli_test", "-i", '{"x": 2}', "--idempotency-key", key,
            "-o", "json"]
    first = json.loads(stack.cli(*args, check=True).stdout)
    again = json.loads(stack.cli(*args, check=True).stdout)
    assert first["agent_id"] == agent.agent_id
    assert first["output"]["input"] == {"x": 2.0} and first["output"]["count"] == 1.0
    assert (first["deduplicated"], again["deduplicated"]) == (False, True)
    direct = json.loads(stack.cli("invoke", "tally", "--endpoint", agent.target, "-o", "json",
                                  check=True).stdout)
    assert direct["agent_id"] == agent.agent_id
    none = stack.cli("invoke", "tally", "-c", "no_such_capability")
    assert none.returncode != 0 and "error:" in none.stderr


def test_bus_publish_then_subscribe(stack: Stack) -> None:
    topic = f"cli.test.{uuid.uuid4().hex[:8]}"
    pub = json.loads(stack.cli("bus", "publish", topic, "-d", '{"n": 7}', "--key", "k1",
                               "-o", "json", check=True).stdout)
    assert pub["topic"] == topic and pub["id"]
    sub = stack.cli("bus", "subscribe", topic, "--earliest", "--max", "1", "--timeout-s", "20",
                    "-o", "json", check=True)
    lines = [json.loads(x) for x in sub.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1
    assert lines[0]["data"] == {"n": 7.0} and lines[0]["key"] == "k1"
    assert lines[0]["id"] == pub["id"]


def test_saga_start_watch_get_list(stack: Stack, agent: Any, tmp_path: Path) -> None:
    definition = tmp_path / "saga.yaml"
    definition.write_text(
        "definition:\n"
        "  name: cli-test\n"
        "  steps:\n"
        f"    - {{name: collect, agent_id: {agent.agent_id}, action: collect,"
        " compensation_action: collect}\n"
        f"    - {{name: publish, agent_id: {agent.agent_id}, action: publish,"
        " depends_on: [collect]}\n"
        "input: {year: 2024}\n"
    )
    res = stack.cli("saga", "start", "-f", str(definition), "--watch", "-o", "json",
                    timeout_s=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    saga = lines[-1]["saga"]
    assert saga["state"] == "SAGA_STATE_COMPLETED"
    kinds = [x.get("type") for x in lines[:-1]]
    assert "SAGA_EVENT_TYPE_STEP_COMPLETED" in kinds
    got = json.loads(stack.cli("saga", "get", saga["saga_id"], "-o", "json", check=True).stdout)
    assert [s["name"] for s in got["steps"]] == ["collect", "publish"]
    listed = json.loads(stack.cli("saga", "list", "-o", "json", check=True).stdout)
    assert saga["saga_id"] in [s["saga_id"] for s in listed]
    missing = stack.cli("saga", "get", "saga-nope")
    assert missing.returncode in (4, 5)


def test_swarm_deploy_watch(stack: Stack, tmp_path: Path) -> None:
    """The README's swarm example file, as shipped."""
    task = ROOT / "examples" / "swarm_sphere.yaml"
    res = stack.cli("swarm", "deploy", "-f", str(task), "--watch", "-o", "json", timeout_s=120)
    assert res.returncode == 0, res.stdout + res.stderr
    final = json.loads(res.stdout.splitlines()[-1])["swarm"]
    assert final["state"] == "SWARM_STATE_COMPLETED"
    assert final["task"]["seed"] == "7" and final["optimization"]["best_fitness"] < 1e-2


def test_examples_run(stack: Stack, tmp_path: Path) -> None:
    examples = ROOT / "examples"
    calc = DaemonProcess(
        [str(examples / "carbon_calculator_agent.py"), "--agent-id", "agent-calc-example",
         "--port", "0", "--registry-target", stack.target("registry")],
        tmp_path / "calc.log",
    )
    csrd = testing_agent(
        "noop", tmp_path, "--capabilities", "csrd", "--registry-target", stack.target("registry"),
        agent_id="agent-csrd-example",
    )
    with calc, csrd:
        records = [{"spend_usd": 100, "factor": 0.5}, {"spend_usd": 10, "factor": 2}]
        res = json.loads(stack.cli(
            "invoke", "calculate", "-c", "carbon_calculation", "-o", "json",
            "-i", json.dumps({"records": records}), check=True).stdout)
        assert res["output"] == {"kg_co2e": 70.0, "records": 2.0}
        bad = stack.cli("invoke", "calculate", "-c", "carbon_calculation",
                        "-i", '{"spend_usd": -1, "factor": 1}')
        assert bad.returncode == 5 and "INVALID_ARGUMENT" in bad.stderr
        saga = stack.cli("saga", "start", "-f", str(examples / "csrd_saga.yaml"), "--watch",
                         "-o", "json", timeout_s=120)
        assert saga.returncode == 0, saga.stdout + saga.stderr
        final = json.loads(saga.stdout.splitlines()[-1])["saga"]
        assert [s["status"] for s in final["steps"]] == ["STEP_STATUS_COMPLETED"] * 5
        # The client quick start: lock and run_saga against the same stack.
        env = {**os.environ, **{f"AGENTMESH_{d.upper()}_TARGET": stack.target(d)
                                for d in DAEMONS}}
        quick = subprocess.run([sys.executable, str(examples / "client_quickstart.py")],
                               capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        assert quick.returncode == 0, quick.stdout + quick.stderr
        assert "lock held, fencing token " in quick.stdout
        assert "saga output: {'audit': 315.0, 'current': 350.0}" in quick.stdout
        assert ("saga compensated: step 'audit' failed (INVALID_ARGUMENT); "
                "compensations run: ['audit', 'current']") in quick.stdout, quick.stdout


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    # Runs last in this module: stops the stack, the fixture's down is then a no-op.
    redis_pid = int((stack.run_dir / "redis" / "redis.pid").read_text())
    res = stack.cli("down", "-o", "json", check=True)
    outcomes = {x["component"]: x["outcome"] for x in json.loads(res.stdout)["stopped"]}
    assert set(outcomes) == {*DAEMONS, "redis"}
    for pid in [*stack.pids, redis_pid]:
        assert not pid_alive(pid), f"pid {pid} survived down"
    assert not list(stack.run_dir.glob("*.pid"))
    status = stack.cli("status", "-o", "json")
    assert status.returncode == 3


def test_up_fails_cleanly_when_a_port_is_taken(tmp_path: Path) -> None:
    base = free_port_block()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", base + 2))  # the registry's port
    blocker.listen()
    try:
        res = cli(*up_args(tmp_path, base), timeout_s=150)
    finally:
        blocker.close()
    assert res.returncode == 1
    assert "registry" in res.stderr
    assert not list(tmp_path.glob("*.pid"))
    assert not (tmp_path / "stack.json").exists()
    redis_pidfile = tmp_path / "redis" / "redis.pid"
    assert not redis_pidfile.exists()
    # Nothing listens on the stack's other ports any more.
    for port in (base, base + 1, base + 3, base + 4, base + 10):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"
