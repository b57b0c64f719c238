"""Run every benchmark under perf/ several times and write one table (`make bench`).

Each benchmark (perf/<area>/bench_*.py) measures its figures beside a baseline
in the same run and writes them with `--json PATH` (perf/table.py `Figure`).
This runs each one `--runs` times (default 3) as a separate process, one
benchmark after another, aggregates every figure to the median with min and
max over the runs (the ratio is the median of the per-run, paired ratios),
and writes

* perf/results/latest.json: host info and one entry per figure (name, value,
  unit, baseline_name, baseline_value, ratio, goal, met, and the spread);
* perf/results/latest.md: the same as a markdown table, for the README;

and prints the table. A benchmark run that fails or times out marks its
figures as failed and makes the exit code 1; the other benchmarks still run.
Unmet goals are results, not failures.

Usage:
    python perf/run_all.py [--runs 3] [--only AREA ...] [--quick]

`--quick` is a trial run: 1 run each with short durations and small sizes,
written to perf/results/quick.{json,md} (not committed). The durations here
are cut so that three runs of everything fit in 15 minutes on 2 cores; each
bench's own defaults (and its RESULTS.md) are the longer, detailed form.
Benchmarks start their own Redis on free loopback ports; this script starts
one private Kafka broker for the bus benchmark's runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PERF = Path(__file__).resolve().parent
ROOT = PERF.parent
sys.path.insert(0, str(ROOT))

from perf.table import (  # noqa: E402
    TABLE_HEADER,
    aggregate,
    markdown_table,
    read_figures,
    table_rows,
)

RESULTS_DIR = PERF / "results"


@dataclass(frozen=True)
class Bench:
    """How run_all runs one benchmark script.

    Attributes:
        script: path under perf/, e.g. "router/bench_router.py".
        args: arguments of a full `make bench` run (durations sized for 3 runs).
        quick_args: arguments of a `--quick` trial run.
        timeout_s: one run is stopped (its whole process group) after this long.
        kafka: needs a Kafka broker, passed as `--bootstrap`.
        no_write: the flag that keeps the script from rewriting its RESULTS.md.
    """

    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout_s: float = 300.0
    kafka: bool = False
    no_write: tuple[str, ...] = ("--no-write",)

    @property
    def area(self) -> str:
        """The folder name, what `--only` selects by."""
        return self.script.split("/")[0]

    @property
    def label(self) -> str:
        """e.g. "router/bench_router"."""
        return self.script.removesuffix(".py")


#: Every benchmark, in run order. Each full run is sized to take well under a
#: minute on 2 shared cores, with throughput windows of 3 s or more in total.
PLAN: tuple[Bench, ...] = (
    Bench("registry/bench_registry.py", ("--seconds", "1", "--rounds", "3"),
          ("--agents", "2000", "--seconds", "0.5", "--rounds", "1")),
    Bench("router/bench_router.py", ("--seconds", "3", "--skip-in-process"),
          ("--seconds", "1", "--skip-in-process")),
    Bench("router/bench_safety.py", ("--seconds", "3"), ("--seconds", "1")),
    # sagas against direct calls and against DBOS (sync and async APIs), interleaved
    Bench("saga/bench_saga.py", ("--seconds", "6", "--sagas", "1500", "--rounds", "2"),
          ("--seconds", "2", "--sagas", "200", "--rounds", "1", "--solo-seconds", "2")),
    Bench("saga/bench_tasks.py", ("--seconds", "6"), ("--seconds", "2", "--rate", "50")),
    # registry discovery and sagas/s: Redis Cluster vs single Redis, 2 vs 1 replicas
    Bench("cluster/bench_cluster.py", ("--seconds", "2"),
          ("--seconds", "1", "--agents", "500")),
    Bench("tracing/bench_tracing.py", ("--seconds", "1", "--rounds", "4"),
          ("--seconds", "1", "--rounds", "1", "--sagas", "100")),
    Bench("sdk/bench_agent.py", ("--seconds", "3", "--rounds", "1"),
          ("--seconds", "1", "--rounds", "1")),
    Bench("swarm/bench_pso.py",
          ("--seeds", "20", "--skip-behaviours", "--skip-ablation", "--partitions", "20000"),
          ("--seeds", "2", "--iterations", "200", "--skip-behaviours", "--skip-ablation",
           "--partitions", "5000")),
    Bench("swarm/bench_partitions.py", ("--repeat", "1"),
          ("--repeat", "1", "--partitions", "500", "--work-ms", "0")),
    Bench("demo/bench_demo.py", (),
          ("--suppliers", "10000", "--agents", "20", "--partitions", "100")),
    Bench("bus/bench_bus.py", ("--seconds", "3", "--backends", "kafka"),
          ("--messages", "20000", "--seconds", "1", "--backends", "kafka"),
          kafka=True, no_write=()),
    Bench("bus/bench_sdk_subscribe.py", ("--messages", "20000"), ("--messages", "5000"),
          kafka=True),
)


def host_info() -> dict[str, Any]:
    """Machine, interpreter, date and commit of this run."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip()

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", "perf")),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_once(bench: Bench, args: Sequence[str], out: Path, log: Path, timeout_s: float) -> bool:
    """One run of one benchmark in its own process group; True if it wrote its figures."""
    cmd = [sys.executable, str(PERF / bench.script), *args, *bench.no_write, "--json", str(out)]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"    timed out after {timeout_s:.0f}s; stopping it", flush=True)
            _stop_group(proc)
            return False
    return rc == 0 and out.exists()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the run's process group (the bench and the daemons it started), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def kafka_broker(work: Path) -> Iterator[str]:
    """A private single-node broker on free loopback ports for the bus runs."""
    from tests.infra import KafkaBroker

    with KafkaBroker(workdir=work / "kafka") as broker:
        yield broker.bootstrap


def run_bench(bench: Bench, *, runs: int, quick: bool, work: Path,
              bootstrap: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All runs of one benchmark; (its aggregated entries, a summary of the runs)."""
    args = list(bench.quick_args if quick else bench.args)
    if bench.kafka and bootstrap:
        args += ["--bootstrap", bootstrap]
    per_run = []
    started = time.monotonic()
    for k in range(runs):
        out = work / f"{bench.label.replace('/', '-')}-{k}.json"
        log = work / f"{bench.label.replace('/', '-')}-{k}.log"
        t0 = time.monotonic()
        ok = run_once(bench, args, out, log, bench.timeout_s)
        print(f"  run {k + 1}/{runs}: {'ok' if ok else 'FAILED'} in "
              f"{time.monotonic() - t0:.0f}s", flush=True)
        if not ok:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print("    " + "\n    ".join(tail), flush=True)
        per_run.append(read_figures(out) if ok else None)
    summary = {
        "bench": bench.label,
        "command": " ".join(["python", f"perf/{bench.script}", *args]),
        "runs": runs,
        "failed_runs": sum(r is None for r in per_run),
        "seconds": round(time.monotonic() - started, 1),
    }
    return aggregate(bench.label, per_run), summary


def print_table(entries: Sequence[dict[str, Any]], title: str) -> None:
    """The table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for i, h in enumerate(TABLE_HEADER):
        t.add_column(h, justify="right" if i in (1, 3, 4) else "left",
                     overflow="fold")
    style = {"yes": "green", "NO": "bold red", "failed": "bold red"}
    for row in table_rows(entries):
        met = row[-1]
        t.add_row(*row[:-1], f"[{style.get(met.split(' ')[0], '')}]{met}" if met else "")
    Console(width=200).print(t)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plan; returns 1 if any run failed, else 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None,
                    help="runs per benchmark (default 3; 1 with --quick)")
    ap.add_argument("--only", nargs="+", metavar="AREA", default=None,
                    help="areas to run, e.g. --only router registry "
                         f"(of: {', '.join(sorted({b.area for b in PLAN}))})")
    ap.add_argument("--quick", action="store_true",
                    help="trial run: short durations, writes perf/results/quick.*")
    ns = ap.parse_args(argv)
    runs = ns.runs or (1 if ns.quick else 3)
    plan = [b for b in PLAN if not ns.only or b.area in ns.only]
    if ns.only and (unknown := set(ns.only) - {b.area for b in PLAN}):
        ap.error(f"unknown area(s) {sorted(unknown)}; choose from "
                 f"{sorted({b.area for b in PLAN})}")
    host = host_info()
    started = time.monotonic()
    entries: list[dict[str, Any]] = []
    benches: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="perf-run-all-") as tmp, contextlib.ExitStack() as st:
        work = Path(tmp)
        for bench in plan:
            bootstrap = None
            print(f"=== {bench.label} x{runs}", flush=True)
            if bench.kafka:
                print("starting a private Kafka broker ...", flush=True)
                try:
                    bootstrap = st.enter_context(kafka_broker(work))
                except Exception as exc:  # the other benchmarks' figures still count
                    print(f"  FAILED: no Kafka broker ({exc}); run `make setup`", flush=True)
                    entries += aggregate(bench.label, [None] * runs)
                    benches.append({"bench": bench.label, "command": "", "runs": runs,
                                    "failed_runs": runs, "seconds": 0.0})
                    continue
            got, summary = run_bench(bench, runs=runs, quick=ns.quick, work=work,
                                     bootstrap=bootstrap)
            entries += got
            benches.append(summary)
    wall = time.monotonic() - started
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    command = "make bench" if not ns.quick and not ns.only and runs == 3 else \
        "python perf/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command.strip(), "runs_per_bench": runs, "wall_s": round(wall, 1),
              "host": host, "benches": benches, "figures": entries}
    stem = "quick" if ns.quick else "latest"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS_DIR / f"{stem}.md").write_text(markdown_report(report))
    print_table(entries, f"{command.strip()}: median of {runs} run(s), {wall / 60:.1f} min")
    print(f"wrote perf/results/{stem}.json and {stem}.md ({wall:.0f}s in all)")
    return 1 if any(b["failed_runs"] for b in benches) else 0


def markdown_report(report: dict[str, Any]) -> str:
    """latest.md: one line on how the table was made, then the table."""
    h = report["host"]
    load = "/".join(f"{x:.1f}" for x in h["load_average_start"])
    head = (
        f"`{report['command']}` on {h['date'][:10]} ({h['cores']} cores, {h['cpu']}, "
        f"Python {h['python']}, commit {h['git_commit'][:10]}): each figure is the median "
        f"of {report['runs_per_bench']} runs (min-max in brackets), each run measuring its "
        f"baseline too; ratio = value / baseline for rates, baseline / value for times and "
        f"sizes, so higher is better. Took {report['wall_s'] / 60:.1f} minutes; load "
        f"average at the start {load}.\n\n"
    )
    return head + markdown_table(report["figures"])


if __name__ == "__main__":
    sys.exit(main())
