"""`agentmesh demo` end to end at small scale, as a newcomer runs it: the CLI
starts Redis, the five daemons and the agent fleet itself, runs the scenario,
stops everything and checks its own total. Once with the in-memory bus, once
with the bus on the real Kafka broker.

The test recomputes the total from suppliers.csv on its own (csv module and
the EPA file, not the demo's code) and checks that no process the demo
started is left running.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTORS = (ROOT / "libs/agentmesh/demo/data"
           / "SupplyChainGHGEmissionFactors_v1.2_NAICS_CO2e_USD2021.csv")
SMALL = ["--suppliers", "5000", "--agents", "10", "--partitions", "50",
         "--agents-per-process", "5", "--samples", "8", "--heartbeat-interval-s", "2"]

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(280)]


def _run_demo(out: Path, *extra: str, env: dict[str, str], output: str = "table"
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", "--output", output, "demo", *SMALL,
         "--out", str(out), *extra],
        cwd=out.parent, env=env, capture_output=True, text=True, timeout=240,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AGENTMESH_") or k.startswith("AGENTMESH_TEST_")}
    env.update(extra)
    return env


def _direct_total(suppliers_csv: Path) -> tuple[float, int, dict[str, float]]:
    """(total kg CO2e, records, kg by NAICS) computed independently of the demo."""
    with FACTORS.open(newline="", encoding="utf-8-sig") as f:
        factor = {r["NAICS Code 2017"]: float(r["Supply Chain Emission Factors with Margins"])
                  for r in csv.DictReader(f)}
    with suppliers_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["supplier_id", "naics_code", "spend_usd"]
    spend = np.array([float(r["spend_usd"]) for r in rows])
    fac = np.array([factor[r["naics_code"]] for r in rows])  # KeyError = unknown code
    kg = spend * fac
    by: dict[str, list[float]] = {}
    for r, v in zip(rows, kg.tolist(), strict=True):
        by.setdefault(r["naics_code"], []).append(v)
    return math.fsum(kg.tolist()), len(rows), {c: math.fsum(v) for c, v in by.items()}


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "")
    return state != "Z"


def _procs_mentioning(text: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and _alive(int(p.name)):
            out.append(int(p.name))
    return out


def _check_outputs(out: Path, report: dict[str, Any], *, backend: str) -> None:
    total, records, by_naics = _direct_total(out / "suppliers.csv")
    assert records == 5000
    assert report["total_kg_co2e"] == pytest.approx(total, rel=1e-9, abs=0)
    assert abs(report["total_kg_co2e"] - total) / total <= 1e-9
    assert report["verification"]["ok"] is True
    assert all(report["verification"]["checks"].values()), report["verification"]["checks"]

    sc = report["scenario"]
    assert (sc["suppliers"], sc["agents"], sc["partitions"]) == (5000, 10, 50)
    assert sc["bus_backend"] == backend
    assert sc["calculator_processes"] == 2  # 10 agents, 5 per process

    top = report["top_naics"]
    assert [t["rank"] for t in top] == list(range(1, 11))
    want = sorted(by_naics.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [t["naics_code"] for t in top] == [c for c, _ in want]
    for t, (_, v) in zip(top, want, strict=True):
        assert abs(t["kg_co2e"] - v) <= 1e-9 * v

    counts = report["partitions_by_agent"]
    assert sum(counts.values()) == 50
    assert set(counts) <= {f"agent-calc-{i:03d}" for i in range(10)}
    assert report["swarm"]["partitions_done"] == report["swarm"]["partitions_total"] == 50
    assert report["discovery"]["found"] == 10
    fleet = {f["process"]: f for f in report["fleet"]}
    assert sorted(fleet) == ["calculators-0", "calculators-1", "csrd"]
    assert [len(fleet[p]["agents"]) for p in sorted(fleet)] == [5, 5, 5]
    assert sum(f["partitions"] for f in fleet.values()) == 50 and fleet["csrd"]["partitions"] == 0
    assert len({f["pid"] for f in fleet.values()}) == 3

    xc = report["cross_check"]
    assert xc["samples"] == 8 and xc["unanimous"] == 8 and xc["matches_direct"] == 8
    ok_saga, failed = report["sagas"]
    assert ok_saga["state"] == "COMPLETED" and ok_saga["compensation_order"] == []
    assert [s["status"] for s in ok_saga["steps"]] == ["COMPLETED"] * 5
    assert failed["state"] == "COMPENSATED"
    assert failed["compensation_order"] == ["calculate", "validate", "collect"]
    assert failed["staging_left"] == []
    types = [e["type"] for e in failed["events"]]
    assert types.index("STEP_FAILED") < types.index("COMPENSATION_STARTED") < \
        types.index("SAGA_COMPENSATED")
    report_file = Path(ok_saga["output"]["generate"]["report_path"])
    disclosure = json.loads(report_file.read_text())
    assert disclosure["gross_scope3_cat1_kg_co2e"] == report["total_kg_co2e"]
    assert report["bus"]["chain_valid"] is True and report["bus"]["backend"] == backend

    for key in ("stack_up", "fleet_up", "swarm", "cross_check", "sagas", "total"):
        assert report["timings_s"][key] >= 0
    for name in ("top_naics.png", "load_spread.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    left = [p for p in report["processes"]["started"] if _alive(p["pid"])]
    assert left == []
    assert len(report["processes"]["started"]) == 6 + 3  # redis, 5 daemons, 3 workers
    assert _procs_mentioning(str(out)) == []
    assert not (out / "run" / "stack.json").exists()


def test_demo_on_the_memory_bus(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    res = _run_demo(out, env=_env())
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"
    assert "Top 10 NAICS" in res.stdout and "COMPENSATED" in res.stdout
    report = json.loads((out / "report.json").read_text())
    _check_outputs(out, report, backend="memory")


@pytest.mark.kafka
def test_demo_on_kafka(tmp_path: Path, kafka_broker: Any) -> None:
    out = tmp_path / "demo-out"
    topic = f"demo.e2e.{uuid.uuid4().hex[:8]}"
    env = _env(AGENTMESH_KAFKA_BOOTSTRAP=kafka_broker.bootstrap)
    res = _run_demo(out, "--topic", topic, env=env, output="json")
    assert res.returncode == 0, f"stdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-4000:]}"
    printed = json.loads(res.stdout)
    report = json.loads((out / "report.json").read_text())
    assert printed["total_kg_co2e"] == report["total_kg_co2e"]
    assert report["bus"]["topic"] == topic
    _check_outputs(out, report, backend="kafka")


def test_demo_is_reproducible_by_seed_and_fails_cleanly_on_a_taken_port(tmp_path: Path) -> None:
    """A port conflict makes the demo exit non-zero with a message, leaving nothing behind."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = tmp_path / "demo-out"
        res = _run_demo(out, "--redis-port", str(port), env=_env())
    assert res.returncode != 0
    assert "demo failed" in res.stderr and "Redis" in res.stderr
    assert _procs_mentioning(str(out)) == []
    # The supplier file was already written, from the seed: the same bytes as a fresh draw.
    from agentmesh.demo.data import generate_suppliers, load_factors, write_suppliers

    again = tmp_path / "again.csv"
    write_suppliers(generate_suppliers(load_factors(), count=5000, seed=42), again)
    assert (out / "suppliers.csv").read_bytes() == again.read_bytes()


def test_a_terminated_demo_still_stops_everything_it_started(tmp_path: Path) -> None:
    """SIGTERM once the fleet is up: the demo stops its workers, daemons and
    Redis by PID, and exits non-zero."""
    import signal
    import time

    out = tmp_path / "demo-out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli.main", "demo", *SMALL, "--partitions", "5000",
         "--suppliers", "50000", "--out", str(out)],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # 2 calculator workers (5 agents each) and the CSRD worker.
        while (len(list((out / "run").glob("fleet-*.ready"))) < 3 and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        readies = list((out / "run").glob("fleet-*.ready"))
        assert len(readies) == 3, proc.communicate(timeout=60)
        state = json.loads((out / "run" / "stack.json").read_text())
        pids = [d["pid"] for d in state["daemons"].values()]
        pids.append(int((Path(state["redis_dir"]) / "redis.pid").read_text()))
        pids += [json.loads(p.read_text())["pid"] for p in readies]
        assert len(pids) == 5 + 1 + 3 and all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # the test failed early: let the demo clean up itself
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=90)
    assert proc.returncode == 1
    assert "interrupted" in stderr
    assert [p for p in pids if _alive(p)] == []
    assert _procs_mentioning(str(out)) == []
    assert not (out / "run" / "stack.json").exists()
