"""`run_demo`: the Scope 3 demo from a cold start to a clean stop.

    python -m agentmesh.cli.main demo [--suppliers 100000] [--agents 100] \\
        [--partitions 1000] [--seed 42] [--out demo-out] ...

Steps:
  1. Data: load the 1,016 EPA factors, draw the suppliers from the seed,
     write `<out>/suppliers.csv`.
  2. Stack: Redis (deploy/local/redis.sh, a free port) and the five daemons
     (`agentmesh.cli.stack.up`, free ports, run directory `<out>/run`). The
     bus runs on Kafka when AGENTMESH_KAFKA_BOOTSTRAP (or --kafka-bootstrap)
     is set, else on its in-memory backend.
  3. Fleet: `--agents` carbon calculators in worker processes of
     `--agents-per-process` agents each, plus one process with the five CSRD
     step agents (`agentmesh.demo.fleet`).
  4. Scenario (`agentmesh.demo.scenario`): discovery, the foraging swarm over
     `--partitions` partitions, the router's ScatterGather cross-check, the
     CSRD saga once to success and once with a failure injected at
     `--fail-step`, and a hash-chain check of the bus topic.
  5. Stop every process the demo started, by PID, and check none is left.
  6. Verify the mesh's total against a direct computation from suppliers.csv
     (relative 1e-9), write report.json and the charts, print the report.

Exit status: 0 when everything ran and the check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from agentmesh.demo import report as rep
from agentmesh.demo.data import (
    FACTOR_COLUMN,
    FACTORS_FILE,
    emissions,
    generate_suppliers,
    load_factors,
    load_provenance,
    read_suppliers,
    write_suppliers,
)
from agentmesh.demo.verify import TOLERANCE, compare_totals, direct_totals, top_naics

DEFAULT_TOPIC = "demo.csrd.reports"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (see `parse_args` for the flags)."""

    suppliers: int = 100_000
    agents: int = 100
    partitions: int = 1000
    seed: int = 42
    out: Path = Path("demo-out")
    agents_per_process: int = 25
    samples: int = 20
    agents_per_sample: int = 3
    fail_step: str = "calculate"
    topic: str = DEFAULT_TOPIC
    redis_port: int = 0
    redis_url: str = ""
    base_port: int = 0
    metrics_base_port: int = 0
    kafka_bootstrap: str = ""
    heartbeat_interval_s: float = 5.0
    timeout_s: float = 900.0
    company: str = "Demo Manufacturing Inc."
    reporting_year: int = 2024


def parse_args(argv: Sequence[str] | None) -> DemoConfig:
    """Flags → DemoConfig.

    Raises:
        SystemExit: on bad flags (argparse prints the usage).
    """
    d = DemoConfig()
    p = argparse.ArgumentParser(
        prog="agentmesh demo",
        description="Scope 3 category 1 on the EPA factors, computed by a fleet of agents.",
    )
    p.add_argument("--suppliers", type=int, default=d.suppliers, help="supplier records")
    p.add_argument("--agents", type=int, default=d.agents, help="carbon-calculator agents")
    p.add_argument("--partitions", type=int, default=d.partitions, help="swarm partitions")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the supplier data")
    p.add_argument("--out", type=Path, default=d.out, help="output directory")
    p.add_argument("--agents-per-process", type=int, default=d.agents_per_process,
                   help="calculator agents hosted by one worker process")
    p.add_argument("--samples", type=int, default=d.samples,
                   help="partitions cross-checked through the router")
    p.add_argument("--agents-per-sample", type=int, default=d.agents_per_sample,
                   help="calculators each sampled partition is sent to")
    p.add_argument("--fail-step", default=d.fail_step,
                   choices=("collect", "validate", "calculate", "generate", "publish"),
                   help="step failed on purpose in the second saga")
    p.add_argument("--topic", default=d.topic, help="bus topic of the published report")
    p.add_argument("--redis-port", type=int, default=d.redis_port,
                   help="port of the Redis the demo starts (0 = a free port)")
    p.add_argument("--redis-url", default=d.redis_url,
                   help="use this running Redis (an empty DB) instead of starting one")
    p.add_argument("--base-port", type=int, default=d.base_port,
                   help="gRPC port of the bus; router, registry, saga, swarm follow "
                        "(0 = a free block)")
    p.add_argument("--metrics-base-port", type=int, default=d.metrics_base_port,
                   help="metrics port of the bus; the others follow (0 = a free block)")
    p.add_argument("--kafka-bootstrap", default=os.environ.get("AGENTMESH_KAFKA_BOOTSTRAP", ""),
                   help="run the bus on this Kafka (default $AGENTMESH_KAFKA_BOOTSTRAP; "
                        "empty = in-memory bus)")
    p.add_argument("--heartbeat-interval-s", type=float, default=d.heartbeat_interval_s)
    p.add_argument("--timeout-s", type=float, default=d.timeout_s,
                   help="limit of the swarm run, seconds")
    a = p.parse_args(list(argv) if argv is not None else None)
    for name in ("suppliers", "agents", "partitions", "agents_per_process", "agents_per_sample"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.partitions > a.suppliers:
        p.error("--partitions must not exceed --suppliers")
    return DemoConfig(
        suppliers=a.suppliers, agents=a.agents, partitions=a.partitions, seed=a.seed,
        out=a.out, agents_per_process=a.agents_per_process, samples=max(0, a.samples),
        agents_per_sample=a.agents_per_sample, fail_step=a.fail_step, topic=a.topic,
        redis_port=a.redis_port, redis_url=a.redis_url, base_port=a.base_port,
        metrics_base_port=a.metrics_base_port, kafka_bootstrap=a.kafka_bootstrap,
        heartbeat_interval_s=a.heartbeat_interval_s, timeout_s=a.timeout_s,
    )


# ---- ports --------------------------------------------------------------------------
def free_port() -> int:
    """A port the kernel reports free now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- progress -----------------------------------------------------------------------
class _Steps:
    """One rich progress bar per long step, on stderr."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description:<34}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        )
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, key: str, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        task = self.progress.add_task(description, total=total)
        t0 = time.perf_counter()

        def update(done: int, of: int) -> None:
            self.progress.update(task, completed=done, total=of)

        try:
            yield update
            self.progress.update(task, completed=self.progress.tasks[task].total)
        finally:
            self.timings[key] = time.perf_counter() - t0
            self.progress.stop_task(task)


# ---- signals ------------------------------------------------------------------------
def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sigterm_interrupts() -> Callable[[], None]:
    """Make SIGTERM act like Ctrl-C, so a terminated demo still stops what it
    started; returns the function that restores the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.signal(signal.SIGTERM, _raise_interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, old)

    return restore


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ---- the run ------------------------------------------------------------------------
def _clear_previous_run(out_dir: Path, run_dir: Path) -> None:
    """Remove what an earlier, finished run left in `out_dir` (its CSRD files,
    worker logs), so the directory describes this run only. A run directory
    whose stack still runs is left alone; `stack.up` then refuses to start."""
    if (run_dir / stack_state_file()).exists():
        return
    shutil.rmtree(out_dir / "csrd", ignore_errors=True)
    for pattern in ("*.log", "*.ready"):
        for p in run_dir.glob(pattern):
            p.unlink(missing_ok=True)


def stack_state_file() -> str:
    """Name of the stack state file in a run directory."""
    from agentmesh.cli.stack import STATE_FILE

    return STATE_FILE


def _abs(p: Path) -> Path:
    return p if p.is_absolute() else (Path.cwd() / p)


def run_demo(argv: Sequence[str] | None = None, *, output: str = "table") -> int:
    """Run the demo (module docstring); `argv` are the flags of `parse_args`.

    Args:
        argv: flags; None reads sys.argv[1:].
        output: "table" prints the human report, "json" prints report.json.

    Returns:
        The exit status: 0 when everything ran and the total checks out, else 1.
    """
    cfg = parse_args(argv)
    err = Console(stderr=True)
    out = Console()
    steps = _Steps(err)
    t_all = time.perf_counter()
    out_dir = _abs(cfg.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "run"
    run_id = uuid.uuid4().hex[:8]
    _clear_previous_run(out_dir, run_dir)
    from agentmesh.cli import stack
    from agentmesh.demo.csrd import expected_failure_outcome
    from agentmesh.demo.fleet import (
        FleetError,
        WorkerProcess,
        calculator_id,
        stop_all,
        wait_all_ready,
        worker_plan,
    )
    from agentmesh.demo.scenario import ScenarioError
    from agentmesh.runtime.errors import AgentMeshError

    workers: list[WorkerProcess] = []
    started_pids: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    failure = ""
    table = load_factors()
    suppliers_path = out_dir / "suppliers.csv"
    bus_backend = "kafka" if cfg.kafka_bootstrap else "memory"
    restore_sigterm = _sigterm_interrupts()
    steps.progress.start()
    try:
        # 1. data
        with steps.step("generate", f"generating {cfg.suppliers:,} suppliers", 2) as upd:
            sup = generate_suppliers(table, count=cfg.suppliers, seed=cfg.seed)
            upd(1, 2)
            sha = write_suppliers(sup, suppliers_path)
            upd(2, 2)
        # 2. stack
        extra_env = {"GRPC_VERBOSITY": "NONE"}
        if cfg.kafka_bootstrap:
            extra_env["AGENTMESH_KAFKA_BOOTSTRAP"] = cfg.kafka_bootstrap
        # Free ports are only free when picked: another process may take one
        # before a daemon binds it. Retry port clashes with fresh ports.
        attempts = 1 if (cfg.base_port or cfg.redis_port) else 3
        n_parts = (0 if cfg.redis_url else 1) + 5
        with steps.step("stack_up", "starting Redis and 5 daemons", n_parts) as upd:
            serving: set[str] = set()

            def on_stack(name: str, status: str) -> None:
                if status == "SERVING":
                    serving.add(name)
                upd(len(serving), n_parts)

            for attempt in range(attempts):
                base = cfg.base_port or stack.free_port_block(10)
                metrics_base = cfg.metrics_base_port or (base + 5 if not cfg.base_port
                                                         else stack.free_port_block(5))
                opts = stack.UpOptions(
                    run_dir=run_dir, redis_port=cfg.redis_port or free_port(),
                    redis_url=cfg.redis_url, base_port=base, metrics_base_port=metrics_base,
                    timeout_s=120.0, extra_env=extra_env,
                )
                try:
                    state = stack.up(opts, on_progress=on_stack)
                    break
                except stack.StackError as e:
                    text = str(e).lower()
                    if attempt == attempts - 1 or not ("port" in text or "bind" in text):
                        raise
                    serving.clear()
                    upd(0, n_parts)
        started_pids += [{"name": n, "pid": d.pid} for n, d in state.daemons.items()]
        if state.redis_managed:
            with contextlib.suppress(OSError, ValueError):
                started_pids.append({"name": "redis", "pid": int(
                    (Path(state.redis_dir) / "redis.pid").read_text().strip())})
        targets = {n: d.target for n, d in state.daemons.items()}
        # 3. fleet
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "NONE"}
        common = ["--registry-target", targets["registry"],
                  "--heartbeat-interval-s", str(cfg.heartbeat_interval_s)]
        for i, (first, count) in enumerate(worker_plan(cfg.agents, cfg.agents_per_process)):
            workers.append(WorkerProcess(
                f"calculators-{i}", ["calculators", "--first", str(first), "--count", str(count),
                                     *common],
                run_dir / f"fleet-calculators-{i}.log", run_dir / f"fleet-calculators-{i}.ready",
            ))
        workers.append(WorkerProcess(
            "csrd", ["csrd", *common, "--swarm-target", targets["swarm"],
                     "--bus-target", targets["bus"], "--redis-url", state.redis_url,
                     "--out-dir", str(out_dir), "--topic", cfg.topic],
            run_dir / "fleet-csrd.log", run_dir / "fleet-csrd.ready",
        ))
        with steps.step("fleet_up", f"starting {cfg.agents + 5} agents in {len(workers)} "
                        "processes", cfg.agents + 5) as upd:
            ready_agents = 0
            for w in workers:
                w.spawn(env)
                started_pids.append({"name": f"fleet-{w.name}", "pid": w.pid})

            def on_ready(w: WorkerProcess) -> None:
                nonlocal ready_agents
                ready_agents += len(w.agents)
                upd(ready_agents, cfg.agents + 5)

            wait_all_ready(workers, timeout_s=180.0, on_ready=on_ready)
        calc_ids = [calculator_id(i) for i in range(cfg.agents)]
        # 4. scenario
        results = asyncio.run(_scenario(
            cfg, steps, targets=targets, table=table, suppliers_path=suppliers_path, sha=sha,
            run_id=run_id, out_dir=out_dir, calc_ids=calc_ids,
        ))
    except (stack.StackError, FleetError, ScenarioError, AgentMeshError, OSError) as e:
        failure = f"{type(e).__name__}: {e}"
    except Exception as e:  # unexpected: still stop everything, then show where it broke
        failure = f"{type(e).__name__}: {e}"
        err.print_exception()
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        # 5. stop everything we started, workers first (they deregister from the registry);
        # a second SIGTERM/Ctrl-C must not cut this short and leave processes behind.
        with _signals_ignored():
            with steps.step("shutdown", "stopping agents, daemons, Redis", 3) as upd:
                stopped = stop_all(workers)
                upd(1, 3)
                stopped += stack.down(run_dir, grace_s=15.0)
                upd(3, 3)
            steps.progress.stop()
        restore_sigterm()
    from agentmesh.cli.stack import pid_alive

    left = [p for p in started_pids if pid_alive(p["pid"])]
    if failure:
        err.print(f"[red]demo failed:[/] {failure}")
        for w in workers:
            if w.proc is not None and w.proc.returncode not in (0, None, -15):
                err.print(f"{w.name} exited {w.proc.returncode}; log {w.log_path}")
        if left:
            err.print(f"[red]processes left running:[/] {left}")
        return 1

    # 6. verify, report
    t0 = time.perf_counter()
    sup_read, sha_read = read_suppliers(suppliers_path)
    kg = emissions(table, sup_read)
    direct = direct_totals(table, sup_read, kg)
    totals: dict[str, float] = results["swarm_totals"]
    mesh_total = totals["kg_co2e"]
    cmp = compare_totals(totals, direct, tolerance=TOLERANCE)
    mesh_by = {k[len("naics_"):]: v for k, v in totals.items() if k.startswith("naics_")}
    top = top_naics(mesh_by)
    spend_by_code: dict[str, float] = {}
    for c, s in zip(sup_read.naics.tolist(), sup_read.spend_usd.tolist(), strict=True):
        key = f"{c:06d}"
        spend_by_code[key] = spend_by_code.get(key, 0.0) + s
    factors = table.by_code()
    xc = results["cross_check"]
    ok_saga, failed_saga = results["sagas"]
    want_state, want_order = expected_failure_outcome(cfg.fail_step)
    checks = {
        **cmp["checks"],
        "sha256": sha_read == sha,
        "cross_check": xc["unanimous"] == xc["samples"] and xc["matches_direct"] == xc["samples"],
        "saga_success": ok_saga["state"] == "COMPLETED",
        "saga_failure": failed_saga["state"] == want_state
        and failed_saga["compensation_order"] == want_order
        and (want_state != "COMPENSATED" or not failed_saga["staging_left"]),
        "saga_total": (ok_saga["output"].get("calculate") or {}).get("total_kg_co2e")
        == mesh_total,
        "bus_chain": bool(results["bus"].get("chain_valid")),
        "no_process_left": not left,
    }
    ok = all(checks.values())
    steps.timings["verify"] = time.perf_counter() - t0
    steps.timings["total"] = time.perf_counter() - t_all
    prov = load_provenance()
    report: dict[str, Any] = {
        "run_id": run_id,
        "scenario": {
            "suppliers": cfg.suppliers, "agents": cfg.agents, "partitions": cfg.partitions,
            "seed": cfg.seed, "agents_per_process": cfg.agents_per_process,
            "calculator_processes": len(workers) - 1, "csrd_agents": 5,
            "bus_backend": bus_backend, "fail_step": cfg.fail_step,
            "method": "spend-based Scope 3 category 1: kg CO2e = spend_usd x factor",
        },
        "data": {
            "factors_file": FACTORS_FILE, "factors_sha256": table.sha256,
            "factor_count": len(table), "factor_column": FACTOR_COLUMN, "unit": table.unit,
            "source": {k: prov.get(k) for k in ("title", "identifier", "modified")}
            | {"publisher": (prov.get("publisher") or {}).get("name")},
            "suppliers_csv": str(suppliers_path), "suppliers_sha256": sha,
            "spend_usd_total": direct["spend_usd"],
            "partition_input": "by reference: suppliers_path + sha256 + partition_index/count; "
                               "each worker process reads the CSV once",
        },
        "total_kg_co2e": mesh_total,
        "total_t_co2e": mesh_total / 1e3,
        "verification": {
            "direct_fsum_kg_co2e": direct["kg_co2e"],
            "direct_numpy_sum_kg_co2e": direct["kg_co2e_numpy_sum"],
            "relative_error": cmp["relative_error"],
            "max_relative_error_by_naics": cmp["max_relative_error_by_naics"],
            "spend_relative_error": cmp["spend_relative_error"],
            "tolerance": TOLERANCE, "ok": ok, "checks": checks,
            "expected_failure_outcome": {"state": want_state, "compensation_order": want_order},
        },
        "top_naics": [
            {"rank": i + 1, "naics_code": c, "title": table.title_of(c), "kg_co2e": v,
             "share": v / mesh_total if mesh_total else 0.0,
             "spend_usd": spend_by_code.get(c, 0.0), "factor_kg_per_usd": factors.get(c)}
            for i, (c, v) in enumerate(top)
        ],
        "discovery": results["discovery"],
        "swarm": results["swarm"],
        "partitions_by_agent": results["swarm"]["partitions_by_agent"],
        "fleet": [
            {"process": w.name, "pid": w.pid, "agents": [a["agent_id"] for a in w.agents],
             "partitions": sum(results["swarm"]["partitions_by_agent"].get(a["agent_id"], 0)
                               for a in w.agents)}
            for w in workers
        ],
        "cross_check": results["cross_check"],
        "sagas": results["sagas"],
        "bus": results["bus"],
        "processes": {"started": started_pids, "left_running": left,
                      "stopped": [{"name": n, "outcome": o} for n, o in stopped]},
        "timings_s": steps.timings,
    }
    charts = rep.write_charts(out_dir, report)
    report["paths"] = {"report": str(out_dir / "report.json"), "suppliers": str(suppliers_path),
                       "charts": charts}
    rep.write_report(out_dir, report)
    if output == "json":
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        rep.print_report(out, report)
    if not ok:
        bad = ", ".join(k for k, v in checks.items() if not v)
        err.print(f"[red]check failed:[/] {bad}")
        return 1
    return 0


async def _scenario(
    cfg: DemoConfig, steps: _Steps, *, targets: dict[str, str], table: Any,
    suppliers_path: Path, sha: str, run_id: str, out_dir: Path, calc_ids: list[str],
) -> dict[str, Any]:
    from agentmesh.client import Client
    from agentmesh.demo import scenario as sc
    from agentmesh.demo.csrd import saga_definition

    sup, _ = read_suppliers(suppliers_path)
    kg = emissions(table, sup)
    res: dict[str, Any] = {}
    async with Client(registry=targets["registry"], router=targets["router"],
                      bus=targets["bus"], saga=targets["saga"], swarm=targets["swarm"],
                      default_timeout_s=30.0) as client:
        with steps.step("discovery", "discovering calculators", cfg.agents) as upd:
            res["discovery"] = await sc.discover_calculators(
                client, expected=cfg.agents, timeout_s=60.0, on_progress=upd)
        task = sc.swarm_task(suppliers_path=suppliers_path, sha256=sha,
                             partitions=cfg.partitions, agents_required=cfg.agents,
                             seed=cfg.seed, timeout_s=cfg.timeout_s)
        with steps.step("swarm", f"swarm: {cfg.partitions} partitions", cfg.partitions) as upd:
            swarm = await sc.run_swarm(client, task, swarm_id=f"scope3-{run_id}",
                                       timeout_s=cfg.timeout_s + 30, on_progress=upd)
        res["swarm"] = sc.swarm_summary(swarm)
        res["swarm_totals"] = dict(swarm.partitions.totals)
        n_samples = min(cfg.samples, cfg.partitions)
        with steps.step("cross_check", "router scatter-gather cross-check",
                        max(1, n_samples)) as upd:
            res["cross_check"] = await sc.cross_check(
                client, suppliers=sup, kg=kg, partitions=cfg.partitions, agent_ids=calc_ids,
                samples=n_samples, per_sample=cfg.agents_per_sample,
                rng=np.random.default_rng(cfg.seed + 1), on_progress=upd)
        definition = saga_definition()
        base_input = {
            "suppliers_path": str(suppliers_path), "suppliers_sha256": sha,
            "swarm_id": swarm.swarm_id, "company": cfg.company,
            "reporting_year": cfg.reporting_year,
        }
        sagas = []
        with steps.step("sagas", "CSRD saga: success, injected failure", 2) as upd:
            for i, (name, fail) in enumerate((("success", ""),
                                              (f"fail-at-{cfg.fail_step}", cfg.fail_step))):
                s = await sc.run_saga(
                    client, definition, {**base_input, "fail_step": fail},
                    idempotency_key=f"demo-{run_id}-{name}", out_dir=out_dir, timeout_s=180.0)
                sagas.append({"name": name, "fail_step": fail, **s})
                upd(i + 1, 2)
        res["sagas"] = sagas
        pub = sagas[0]["output"].get("publish") or {}
        bus: dict[str, Any] = {"backend": "kafka" if cfg.kafka_bootstrap else "memory",
                               "topic": pub.get("topic"), "message_id": pub.get("message_id"),
                               "chain_id": pub.get("chain_id"),
                               "partition": int(pub.get("partition") or 0),
                               "offset": int(pub.get("offset") or 0)}
        if pub.get("topic"):
            bus.update(await sc.verify_bus(client, topic=str(pub["topic"]),
                                           partition=int(pub.get("partition") or 0)))
        res["bus"] = bus
    return res
