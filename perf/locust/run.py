"""Run perf/locust/locustfile.py headless against the local stack, then summarise its CSV.

    python perf/locust/run.py                        # 60 s, 12 users, the stack of `make up`
    python perf/locust/run.py --run-time 15s CallerUser AgentUser

Locust prints its own summary; this driver then prints a compact table from
`<csv-prefix>_stats.csv` (requests, failures, RPS, p50/p95/p99 ms per RPC)
and the failures from `<csv-prefix>_failures.csv`. It exits 1 when any request
failed or Locust failed, and 2 when the stack is not running.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.cli import stack  # noqa: E402

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
#: Daemons the users call (the swarm engine and the bus are not used).
NEEDED = ("registry", "router", "saga")

console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, soft_wrap=True)


@dataclass(frozen=True)
class StatRow:
    """One line of Locust's `_stats.csv`."""

    type: str
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _num(raw: str) -> float:
    # Locust writes "N/A" for percentiles of entries without requests.
    try:
        return float(raw)
    except ValueError:
        return 0.0


def read_stats(path: Path) -> list[StatRow]:
    """Rows of a Locust `_stats.csv`, the "Aggregated" row last.

    Raises:
        FileNotFoundError: when Locust wrote no stats.
    """
    with path.open(newline="") as f:
        return [
            StatRow(
                type=r["Type"], name=r["Name"], requests=int(r["Request Count"]),
                failures=int(r["Failure Count"]), rps=_num(r["Requests/s"]),
                p50_ms=_num(r["50%"]), p95_ms=_num(r["95%"]), p99_ms=_num(r["99%"]),
            )
            for r in csv.DictReader(f)
        ]


def read_failures(path: Path) -> list[tuple[str, str, int]]:
    """(name, error, occurrences) from a Locust `_failures.csv`; empty when there is none."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [(r["Name"], r["Error"], int(r["Occurrences"])) for r in csv.DictReader(f)]


def stats_table(rows: list[StatRow]) -> Table:
    """The compact summary."""
    t = Table(title="locust against AgentMesh")
    for col in ("type", "name", "requests", "failures", "RPS", "p50 ms", "p95 ms", "p99 ms"):
        t.add_column(col, justify="left" if col in ("type", "name") else "right", no_wrap=True)
    for r in rows:
        t.add_row(r.type, r.name, str(r.requests), str(r.failures), f"{r.rps:.1f}",
                  f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.p99_ms:.0f}")
    return t


def check_stack(targets: dict[str, str]) -> None:
    """Exit 2 with what to run unless the daemons the users call are SERVING."""
    health = asyncio.run(stack.health_of({d: targets[d] for d in NEEDED}, timeout_s=2.0))
    down = {d: s for d, s in health.items() if s != "SERVING"}
    if down:
        listing = ", ".join(f"{d} at {targets[d]} is {s}" for d, s in sorted(down.items()))
        err.print(f"[red]error:[/red] the stack is not running: {listing}.\n"
                  "Start it with `make up`, then run `make locust` again.")
        raise typer.Exit(2)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    user_classes: Annotated[list[str] | None, typer.Argument(
        help="AgentUser, CallerUser, WorkflowUser (default: all)")] = None,
    run_time: Annotated[str, typer.Option(envvar="LOCUST_RUN_TIME", help="e.g. 60s, 2m")]
    = "60s",
    users: Annotated[int, typer.Option(envvar="LOCUST_USERS", help="peak users")] = 12,
    spawn_rate: Annotated[float, typer.Option(envvar="LOCUST_SPAWN_RATE",
                                              help="users started per second")] = 4.0,
    csv_prefix: Annotated[Path, typer.Option(help="Locust --csv prefix")]
    = ROOT / ".run" / "locust" / "locust",
    run_dir: Annotated[Path, typer.Option(
        envvar="AGENTMESH_RUN_DIR", help="run directory of `make up`; its ports are used")]
    = ROOT / ".run",
) -> None:
    """Run the locustfile headless for a bounded time and print the summary."""
    targets = stack.targets_for(
        run_dir, {d: os.environ.get(f"AGENTMESH_{d.upper()}_TARGET") for d in stack.DAEMONS})
    check_stack(targets)
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AGENTMESH_RUN_DIR": str(run_dir),
           **{f"AGENTMESH_{d.upper()}_TARGET": t for d, t in targets.items()}}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--users", str(users), "--spawn-rate", f"{spawn_rate:g}", "--run-time", run_time,
           "--csv", str(csv_prefix), "--only-summary",
           *(user_classes or [])]
    err.print(f"locust for {run_time} with {users} users against {targets['registry']} "
              f"(registry), {targets['router']} (router), {targets['saga']} (saga) ...")
    # The run time bounds Locust; the timeout only catches a hang on shutdown.
    seconds = _seconds(run_time)
    try:
        code = subprocess.run(cmd, env=env, cwd=ROOT, timeout=seconds + 120).returncode
    except subprocess.TimeoutExpired:
        err.print(f"[red]error:[/red] locust did not exit {seconds + 120:.0f}s after starting")
        raise typer.Exit(1) from None
    stats_path = Path(f"{csv_prefix}_stats.csv")
    try:
        rows = read_stats(stats_path)
    except FileNotFoundError:
        err.print(f"[red]error:[/red] locust (exit {code}) wrote no {stats_path}")
        raise typer.Exit(1) from None
    console.print(stats_table(rows))
    err.print(f"CSV: {csv_prefix}_stats.csv, _stats_history.csv, _failures.csv, "
              "_exceptions.csv")
    failures = read_failures(Path(f"{csv_prefix}_failures.csv"))
    for name, error, n in failures:
        err.print(f"  [red]{n}x {name}[/red]: {error}")
    total = next((r for r in rows if r.name == "Aggregated"), None)
    if code != 0 or failures or total is None or total.requests == 0:
        err.print(f"[red]load test failed[/red] (locust exit {code}, "
                  f"{sum(n for _, _, n in failures)} failed requests)")
        raise typer.Exit(1)


def _seconds(run_time: str) -> float:
    """Seconds of a Locust duration such as "90", "45s", "2m", "1h30m"."""
    total, num = 0.0, ""
    for ch in run_time.strip():
        if ch.isdigit() or ch == ".":
            num += ch
        else:
            total += float(num or 0) * {"h": 3600, "m": 60, "s": 1}.get(ch, 1)
            num = ""
    return total + float(num or 0)


if __name__ == "__main__":
    app()
