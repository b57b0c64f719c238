"""CLI behaviour that needs no running daemons: help, option validation, error
exits, JSON output, definition files, and the stack's process bookkeeping."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentmesh.cli import stack
from agentmesh.cli.commands import load_saga_file
from agentmesh.cli.main import app
from agentmesh.saga.v1 import saga_pb2

runner = CliRunner()

#: Nothing listens on port 1, so every daemon is unreachable.
DEAD = ["--registry", "127.0.0.1:1", "--router", "127.0.0.1:1", "--bus", "127.0.0.1:1",
        "--saga", "127.0.0.1:1", "--swarm", "127.0.0.1:1", "--timeout-s", "1"]


def _plain(text: str) -> str:
    """Rich's error box without its borders and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_help_lists_every_command() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("up", "down", "status", "agents", "route", "invoke", "bus", "saga", "swarm",
                "demo"):
        assert cmd in res.output
    for group, subs in {"agents": ["list", "get", "discover"], "bus": ["publish", "subscribe"],
                        "saga": ["start", "get", "list", "watch", "cancel"],
                        "swarm": ["deploy", "watch"]}.items():
        res = runner.invoke(app, [group, "--help"])
        assert res.exit_code == 0, res.output
        for s in subs:
            assert s in res.output


def test_module_entry_point_runs() -> None:
    res = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "agents" in res.stdout


def test_status_json_parses_and_exits_3_when_down(tmp_path: Path) -> None:
    res = runner.invoke(app, [*DEAD, "--run-dir", str(tmp_path), "status", "--output", "json"])
    assert res.exit_code == 3
    rows = json.loads(res.stdout)
    assert [r["daemon"] for r in rows] == ["bus", "router", "registry", "saga", "swarm"]
    assert {r["health"] for r in rows} == {"UNREACHABLE"}


def test_unreachable_daemon_is_a_clear_error_with_exit_3(tmp_path: Path) -> None:
    res = runner.invoke(app, [*DEAD, "--run-dir", str(tmp_path), "agents", "get", "agent-x"])
    assert res.exit_code == 3
    assert "error: UNAVAILABLE" in res.stderr
    assert "agentmesh status" in res.stderr


def test_bad_output_format_is_a_usage_error() -> None:
    res = runner.invoke(app, ["--output", "yaml", "status"])
    assert res.exit_code == 2


def test_bad_json_input_is_a_usage_error(tmp_path: Path) -> None:
    res = runner.invoke(app, [*DEAD, "invoke", "calc", "--input", "{not json"])
    assert res.exit_code == 2
    assert "--input" in _plain(res.output)


def test_demo_without_module_says_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "agentmesh.demo" else real(name, *a))
    res = runner.invoke(app, ["demo"])
    assert res.exit_code == 1
    assert "not available" in res.stderr


def test_saga_file_forms(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: report\nsteps:\n  - name: collect\n")
    d, inp = load_saga_file(plain)
    assert isinstance(d, saga_pb2.SagaDefinition) and d.name == "report" and inp == {}
    assert [s.name for s in d.steps] == ["collect"]
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("definition:\n  name: report\ninput:\n  year: 2024\n")
    d, inp = load_saga_file(wrapped)
    assert d.name == "report" and inp == {"year": 2024}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nno_such_field: 1\n")
    res = runner.invoke(app, [*DEAD, "saga", "start", "-f", str(bad)])
    assert res.exit_code == 2
    assert "not a SagaDefinition" in _plain(res.output)


def test_down_with_nothing_running(tmp_path: Path) -> None:
    res = runner.invoke(app, ["down", "--run-dir", str(tmp_path), "-o", "json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"stopped": []}


def test_down_never_signals_a_pid_that_is_not_our_daemon(tmp_path: Path) -> None:
    # A stale PID file pointing at an unrelated live process (a recycled PID).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "router.pid").write_text(f"{other.pid}\n")
        results = stack.down(tmp_path, grace_s=1)
        assert dict(results)["router"].startswith("skipped")
        assert other.poll() is None  # still alive
    finally:
        other.kill()
        other.wait()


def test_up_options_ports_follow_design_order(tmp_path: Path) -> None:
    opts = stack.UpOptions(run_dir=tmp_path, base_port=30000, metrics_base_port=31000)
    assert opts.ports("bus") == (30000, 31000)
    assert opts.ports("registry") == (30002, 31002)
    assert opts.ports("swarm") == (30004, 31004)
    env = stack.daemon_env(opts, "redis://127.0.0.1:1/0")
    assert env["AGENTMESH_REGISTRY_TARGET"] == "127.0.0.1:30002"
    assert env["AGENTMESH_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert os.environ.get("AGENTMESH_PORT") is None or "AGENTMESH_PORT" not in env
