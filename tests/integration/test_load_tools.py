"""The load-test tooling against a real stack: the ghz driver (perf/ghz/run.py) runs
every config with tiny totals without errors and writes its table; it fails loudly
on a config whose requests fail and on a stack that is not running; the locust
driver (perf/locust/run.py) runs all three user classes headless without failures.

The stack is `agentmesh up` (Redis from the test fixture, the five daemons on
free ports); the drivers start their own agents (ghz: testing agents; locust:
in-process AgentService users).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh.cli import stack
from tests.infra import flush_db, free_port

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
GHZ_CONFIGS = sorted(p.name for p in (ROOT / "perf" / "ghz").glob("*.json"))
#: A logical DB of this module's own (flushed at start).
LOAD_TOOLS_DB = 13
#: Every request name the locust users report.
LOCUST_NAMES = {"RegisterAgent", "Heartbeat", "DiscoverAgents", "Invoke", "ScatterGather",
                "StartSaga", "WatchSaga", "SagaCompleted"}


def _ghz_or_skip() -> None:
    gobin = Path(os.path.expanduser("~/go/bin/ghz"))
    if shutil.which("ghz") is None and not gobin.exists():
        if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail("ghz is not installed: run `bash deploy/local/tools.sh`")
        pytest.skip("ghz not installed (bash deploy/local/tools.sh)")


@pytest.fixture(scope="module")
def stack_dir(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    run_dir = tmp_path_factory.mktemp("load-stack")
    base = stack.free_port_block(5)
    metrics = stack.free_port_block(5)
    while abs(metrics - base) < 5:
        metrics = stack.free_port_block(5)
    opts = stack.UpOptions(
        run_dir=run_dir, redis_url=flush_db(redis_server.url_for_db(LOAD_TOOLS_DB)),
        base_port=base, metrics_base_port=metrics, timeout_s=90.0,
    )
    stack.up(opts)
    try:
        yield run_dir
    finally:
        stack.down(run_dir, grace_s=10.0)


def _run(args: list[str], *, timeout_s: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, **(env or {})})


def test_ghz_driver_runs_every_config_without_errors(stack_dir: Path, tmp_path: Path) -> None:
    _ghz_or_skip()
    md, js = tmp_path / "RESULTS.md", tmp_path / "ghz.json"
    res = _run(["perf/ghz/run.py", "--run-dir", str(stack_dir), "--total", "30",
                "--concurrency", "2", "--results-md", str(md), "--results-json", str(js)],
               timeout_s=240)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["config"]: r for r in json.loads(js.read_text())["rows"]}
    assert sorted(rows) == GHZ_CONFIGS
    assert len(GHZ_CONFIGS) >= 7
    for name, row in rows.items():
        assert row["requests"] == 30, (name, row)
        assert row["errors"] == 0, (name, row)
        assert row["codes"] == {"OK": 30}, (name, row)
        assert row["rps"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0, (name, row)
    # The sagas StartSaga accepted also ran to completion on the testing agents.
    assert rows["saga_start.json"]["outcomes"] == {"COMPLETED": 30}
    table = md.read_text()
    for name in GHZ_CONFIGS:
        assert f"| {name} |" in table


def test_ghz_driver_fails_on_a_config_whose_requests_fail(
    stack_dir: Path, tmp_path: Path
) -> None:
    _ghz_or_skip()
    doc = json.loads((ROOT / "perf" / "ghz" / "router_invoke.json").read_text())
    doc["data"]["message"]["selector"]["capabilities"] = ["nobody-has-this"]
    bad = tmp_path / "bad_invoke.json"
    bad.write_text(json.dumps(doc))
    res = _run(["perf/ghz/run.py", str(bad), "--run-dir", str(stack_dir), "--total", "10",
                "--results-md", str(tmp_path / "R.md"), "--results-json", str(tmp_path / "g.json")],
               timeout_s=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "bad_invoke.json" in res.stderr
    assert "10/10 failed" in res.stderr and "Unavailable" in res.stderr


def test_drivers_say_what_to_run_without_a_stack(tmp_path: Path) -> None:
    # Ports nothing listens on, and a run directory without a stack.
    env = {f"AGENTMESH_{d.upper()}_TARGET": f"127.0.0.1:{free_port()}" for d in stack.DAEMONS}
    for driver in ("perf/ghz/run.py", "perf/locust/run.py"):
        res = _run([driver, "--run-dir", str(tmp_path)], timeout_s=60, env=env)
        assert res.returncode == 2, (driver, res.stdout + res.stderr)
        assert "make up" in res.stderr and "UNREACHABLE" in res.stderr, res.stderr


def test_locust_users_run_without_failures(stack_dir: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    res = _run(["perf/locust/run.py", "--run-dir", str(stack_dir), "--run-time", "12s",
                "--users", "8", "--spawn-rate", "8", "--csv-prefix", str(prefix),
                "AgentUser", "CallerUser", "WorkflowUser"], timeout_s=180)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        stats = {r["Name"]: r for r in csv.DictReader(f)}
    for name in LOCUST_NAMES:
        assert name in stats, (name, sorted(stats))
        assert int(stats[name]["Request Count"]) > 0, stats[name]
        assert int(stats[name]["Failure Count"]) == 0, stats[name]
    assert "Invoke" in res.stdout  # the driver's compact table
