"""Load-test the five daemons with ghz, one config per main RPC, and write a summary.

    python perf/ghz/run.py                       # the stack `make up` started (.run)
    python perf/ghz/run.py --start-stack         # its own stack on free ports, then stops it
    python perf/ghz/run.py router_invoke.json --total 200

Every config in perf/ghz/*.json calls a daemon through server reflection (no
proto files). Before the run the driver starts `AGENT_COUNT` testing agents
(`python -m agentmesh.agent.testing noop`) with ids `agent-ghz-1..N` and the
capability `ghz-echo`, registered with the target registry: the Heartbeat,
Route, Invoke and StartSaga configs name them. They are stopped (and so
deregistered) afterwards.

Each config runs bounded by its `total` (or `--total`); `--max-duration-s` caps
each ghz process.
ghz's JSON report becomes one row: requests, RPS, p50/p95/p99 in ms, errors
(count and distinct status codes). The table is printed and written to
perf/ghz/RESULTS.md and perf/results/ghz.json. A config with no requests, or
whose error ratio exceeds `--max-error-ratio`, makes the run exit 1 with the
errors ghz saw: a load test that measures errors measures nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.cli import stack  # noqa: E402
from tests.procs import ProcessGroup, testing_agent  # noqa: E402

HERE = Path(__file__).resolve().parent
#: The capability and ids of the agents the configs address (see the configs' `data`).
CAPABILITY = "ghz-echo"
AGENT_COUNT = 2
AGENT_IDS = tuple(f"agent-ghz-{i}" for i in range(1, AGENT_COUNT + 1))
#: Order of the run: cheap reads first; sagas and swarms last, because they
#: leave background work (steps, iterations) that would load later configs.
ORDER = ("registry", "router", "bus", "saga", "swarm")
#: The daemon a call goes to, by the proto package's area.
AREA_TO_DAEMON = {"registry": "registry", "router": "router", "bus": "bus", "saga": "saga",
                  "swarm": "swarm"}

# Wide enough for the table when stdout is a pipe (make, CI logs).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


class GhzRunError(RuntimeError):
    """The load test cannot run or its results are not usable; the message says what to do."""


@dataclass
class Row:
    """One config's outcome.

    Attributes:
        config: file name of the config.
        rpc: `Service/Method`.
        target: host:port called.
        requests: calls made (OK and failed).
        rps: calls per second over the run.
        p50_ms, p95_ms, p99_ms: latency percentiles, milliseconds.
        errors: failed calls.
        codes: count per status code, e.g. {"OK": 995, "Unavailable": 5}.
        error_texts: count per distinct error message (ghz's errorDistribution).
        end_reason: why ghz stopped ("normal", "timeout", ...).
        outcomes: for StartSaga, final states of the sagas it started, e.g.
            {"COMPLETED": 300}: an accepted saga that then fails is a failure too.
    """

    config: str
    rpc: str
    target: str
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    error_texts: dict[str, int] = field(default_factory=dict)
    end_reason: str = ""
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def error_ratio(self) -> float:
        """errors / requests (1.0 when nothing ran)."""
        return self.errors / self.requests if self.requests else 1.0

    def codes_text(self) -> str:
        """Status codes other than OK, e.g. "Unavailable:3", or "-"."""
        bad = {k: v for k, v in sorted(self.codes.items()) if k != "OK"}
        return ", ".join(f"{k}:{v}" for k, v in bad.items()) or "-"

    def outcome_text(self) -> str:
        """Background outcomes, e.g. "COMPLETED:300", or "-" when not tracked."""
        return ", ".join(f"{k}:{v}" for k, v in sorted(self.outcomes.items())) or "-"

    def outcome_failures(self) -> int:
        """Tracked background work that did not complete."""
        return sum(v for k, v in self.outcomes.items() if k != "COMPLETED")


def daemon_of(call: str) -> str:
    """The daemon serving `call` ("agentmesh.router.v1.RouterService.Invoke" → "router").

    Raises:
        GhzRunError: when the call is not in an agentmesh.<area>.v1 package.
    """
    parts = call.split(".")
    if len(parts) < 5 or parts[0] != "agentmesh" or parts[1] not in AREA_TO_DAEMON:
        raise GhzRunError(f"call {call!r} is not agentmesh.<area>.v1.<Service>.<Method>")
    return AREA_TO_DAEMON[parts[1]]


def load_configs(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Read configs (every perf/ghz/*.json when `paths` is empty), in ORDER of daemons.

    Raises:
        GhzRunError: for a missing or malformed config.
    """
    files = paths or sorted(HERE.glob("*.json"))
    out = []
    for p in files:
        p = p if p.exists() else HERE / p.name
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise GhzRunError(f"cannot read ghz config {p}: {e}") from e
        if "call" not in doc:
            raise GhzRunError(f"{p} has no `call`")
        daemon_of(doc["call"])
        out.append((p, doc))
    return sorted(out, key=lambda pd: (ORDER.index(daemon_of(pd[1]["call"])), pd[0].name))


def ghz_binary() -> str:
    """Path of ghz: PATH, else `go env GOPATH`/bin.

    Raises:
        GhzRunError: when ghz is not installed.
    """
    found = shutil.which("ghz")
    if found:
        return found
    gopath = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True,
                                timeout=30).stdout.strip()
    candidate = Path(gopath or Path.home() / "go") / "bin" / "ghz"
    if candidate.exists():
        return str(candidate)
    raise GhzRunError("ghz is not installed: run `bash deploy/local/tools.sh` (pinned version)")


def check_stack(targets: dict[str, str], daemons: set[str]) -> None:
    """Raise unless every daemon in `daemons` answers health SERVING.

    Raises:
        GhzRunError: naming the daemons that are down and what to run.
    """
    health = asyncio.run(stack.health_of({d: targets[d] for d in daemons}, timeout_s=2.0))
    down = {d: s for d, s in health.items() if s != "SERVING"}
    if down:
        listing = ", ".join(f"{d} at {targets[d]} is {s}" for d, s in sorted(down.items()))
        raise GhzRunError(
            f"the stack is not running: {listing}.\n"
            "Start it with `make up` (then `make ghz`), or let this driver start its own "
            "with `python perf/ghz/run.py --start-stack`."
        )


@contextlib.contextmanager
def echo_agents(registry_target: str, log_dir: Path) -> Iterator[list[str]]:
    """Run AGENT_COUNT noop testing agents registered at `registry_target`; yields their ids.

    Raises:
        GhzRunError: with the agent's log when one does not start or register.
    """
    group = ProcessGroup()
    try:
        for agent_id in AGENT_IDS:
            proc = testing_agent(
                "noop", log_dir, "--registry-target", registry_target, "--capabilities",
                CAPABILITY, "--metrics-port", "-1", "--heartbeat-interval-s", "2",
                agent_id=agent_id,
            )
            try:
                group.start(proc, timeout_s=30)
            except RuntimeError as e:
                raise GhzRunError(f"testing agent {agent_id} did not start:\n{e}") from e
        yield list(AGENT_IDS)
    finally:
        group.stop_all(timeout_s=15)


def wait_discoverable(registry_target: str, *, timeout_s: float = 15.0) -> None:
    """Wait until DiscoverAgents returns every echo agent (the discovery cache may lag).

    Raises:
        GhzRunError: when they are not all visible within `timeout_s`.
    """
    import grpc

    from agentmesh.common.v1 import common_pb2
    from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc

    seen: set[str] = set()
    with grpc.insecure_channel(registry_target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        req = registry_pb2.DiscoverAgentsRequest(
            selector=common_pb2.AgentSelector(capabilities=[CAPABILITY]), max_results=50
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = {a.agent_id for a in stub.DiscoverAgents(req, timeout=5).agents}
            if set(AGENT_IDS) <= seen:
                return
            time.sleep(0.2)
    raise GhzRunError(f"registry at {registry_target} shows {sorted(seen)} after {timeout_s}s, "
                      f"expected {list(AGENT_IDS)}")


def run_ghz(
    ghz: str, config: Path, target: str, *, total: int | None, concurrency: int | None,
    max_duration_s: float, extra_args: list[str] | None = None,
) -> dict[str, Any]:
    """Run ghz on one config against `target`; returns its JSON report.

    Raises:
        GhzRunError: when ghz fails to run or prints no report.
    """
    # Bounded by `total`, not by ghz's --max-duration: with both set, ghz 0.121
    # keeps sending until the duration ends. The subprocess timeout is the cap.
    cmd = [ghz, "--config", str(config), "--format", "json"]
    if total is not None:
        cmd += ["--total", str(total)]
    if concurrency is not None:
        cmd += ["--concurrency", str(concurrency), "--connections", "1"]
    cmd += extra_args or []
    cmd.append(target)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=max_duration_s)
    except subprocess.TimeoutExpired as e:
        raise GhzRunError(
            f"ghz on {config.name} did not finish within {max_duration_s:g}s (lower its "
            f"`total` or raise --max-duration-s): {shlex.join(cmd)}"
        ) from e
    try:
        report: dict[str, Any] = json.loads(res.stdout)
    except ValueError as e:
        raise GhzRunError(
            f"ghz on {config.name} exited {res.returncode} without a report: {shlex.join(cmd)}\n"
            f"{(res.stderr or res.stdout).strip()[-2000:]}"
        ) from e
    return report


def summarize(config: Path, call: str, target: str, report: dict[str, Any]) -> Row:
    """One Row from a ghz JSON report (latencies there are nanoseconds)."""
    pct = {int(p["percentage"]): p["latency"] / 1e6
           for p in report.get("latencyDistribution") or []}
    codes = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    count = int(report.get("count") or 0)
    return Row(
        config=config.name,
        rpc="/".join(call.rsplit(".", 1)).split(".")[-1],
        target=target,
        requests=count,
        rps=float(report.get("rps") or 0.0),
        p50_ms=pct.get(50, 0.0),
        p95_ms=pct.get(95, 0.0),
        p99_ms=pct.get(99, 0.0),
        errors=count - codes.get("OK", 0),
        codes=codes,
        error_texts={str(k): int(v) for k, v in (report.get("errorDistribution") or {}).items()},
        end_reason=str(report.get("endReason") or ""),
    )


def saga_outcomes(
    saga_target: str, definition_name: str, *, since_ms: int, timeout_s: float = 60.0
) -> dict[str, int]:
    """Final states of the sagas of `definition_name` created since `since_ms` (epoch ms),
    waiting up to `timeout_s` for running ones to finish.

    Returns:
        Count per state name without the prefix, e.g. {"COMPLETED": 298, "RUNNING": 2}.
    """
    import grpc

    from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc

    final = {saga_pb2.SAGA_STATE_COMPLETED, saga_pb2.SAGA_STATE_COMPENSATED,
             saga_pb2.SAGA_STATE_FAILED, saga_pb2.SAGA_STATE_CANCELLED}
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(saga_target) as ch:
        stub = saga_pb2_grpc.SagaServiceStub(ch)
        while True:
            states: list[saga_pb2.SagaState.ValueType] = []
            token = ""
            while True:  # newest first: stop paging at the first older saga
                page = stub.ListSagas(saga_pb2.ListSagasRequest(
                    definition_name=definition_name, page_size=500, page_token=token),
                    timeout=10)
                recent = [sg for sg in page.sagas if sg.create_time.ToMilliseconds() >= since_ms]
                states += [sg.state for sg in recent]
                token = page.next_page_token
                if not token or len(recent) < len(page.sagas):
                    break
            counts = {}
            for st in states:
                name = saga_pb2.SagaState.Name(st).removeprefix("SAGA_STATE_")
                counts[name] = counts.get(name, 0) + 1
            if all(st in final for st in states) or time.monotonic() > deadline:
                return counts
            time.sleep(0.5)


def table(rows: list[Row]) -> Table:
    """The summary as a rich table."""
    t = Table(title="ghz against AgentMesh")
    for col in ("config", "RPC", "requests", "RPS", "p50 ms", "p95 ms", "p99 ms", "errors",
                "codes", "outcome"):
        left = col in ("config", "RPC", "codes", "outcome")
        t.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in rows:
        t.add_row(r.config, r.rpc, str(r.requests), f"{r.rps:.0f}", f"{r.p50_ms:.2f}",
                  f"{r.p95_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors), r.codes_text(),
                  r.outcome_text())
    return t


def markdown(rows: list[Row], *, command: str, when: str) -> str:
    """RESULTS.md: how it was run and the table."""
    lines = [
        "# ghz results",
        "",
        f"Measured {when} with `{command}` on {os.cpu_count()} cores (load average "
        f"{os.getloadavg()[0]:.1f} at the end), everything on one machine (ghz, the five "
        "daemons, Redis, two noop agents), bus on its memory backend "
        "unless AGENTMESH_KAFKA_BOOTSTRAP was set. Latencies in ms; RPS counts every call. "
        "`outcome`: final states of the sagas StartSaga started.",
        "",
        "| config | RPC | requests | RPS | p50 ms | p95 ms | p99 ms | errors | codes | outcome |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {r.config} | {r.rpc} | {r.requests} | {r.rps:.0f} | {r.p50_ms:.2f} | "
        f"{r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {r.codes_text()} | "
        f"{r.outcome_text()} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def failures(rows: list[Row], *, max_error_ratio: float) -> list[str]:
    """Why the run failed, one line per bad config (with ghz's error texts); empty if fine."""
    out = []
    for r in rows:
        if r.requests == 0 or r.error_ratio > max_error_ratio:
            texts = "; ".join(f"{v}x {k}" for k, v in
                              sorted(r.error_texts.items(), key=lambda kv: -kv[1])[:5])
            out.append(f"{r.config} ({r.rpc} at {r.target}): {r.errors}/{r.requests} failed "
                       f"[{r.codes_text()}] end={r.end_reason}: {texts or 'no requests made'}")
        elif r.outcomes and r.outcome_failures() > max_error_ratio * r.requests:
            out.append(f"{r.config}: the started sagas ended {r.outcome_text()}; see the saga "
                       "log and the agents' logs")
    return out


@contextlib.contextmanager
def own_stack(redis_url: str, log_dir: Path) -> Iterator[dict[str, str]]:
    """Start Redis (unless `redis_url`) and the five daemons on free ports; yields targets."""
    opts = stack.UpOptions(
        run_dir=log_dir / "stack", redis_url=redis_url,
        redis_port=stack.free_port_block(1), base_port=stack.free_port_block(5),
        metrics_base_port=stack.free_port_block(5), timeout_s=90.0,
    )
    err.print(f"starting a stack in {opts.run_dir} (bus on {opts.base_port}) ...")
    try:
        state = stack.up(opts)
    except stack.StackError as e:
        raise GhzRunError(f"could not start a stack: {e}") from e
    try:
        yield {n: d.target for n, d in state.daemons.items()}
    finally:
        stack.down(opts.run_dir, grace_s=10.0)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    configs: Annotated[list[Path] | None, typer.Argument(
        help="ghz configs (default: every perf/ghz/*.json)")] = None,
    run_dir: Annotated[Path, typer.Option(
        envvar="AGENTMESH_RUN_DIR", help="run directory of `make up`; its ports are used")]
    = ROOT / ".run",
    start_stack: Annotated[bool, typer.Option(
        help="start an own stack on free ports and stop it afterwards")] = False,
    redis_url: Annotated[str, typer.Option(
        help="with --start-stack: use this Redis instead of starting one")] = "",
    total: Annotated[int | None, typer.Option(help="override every config's total")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="override every config's concurrency")] = None,
    max_duration_s: Annotated[float, typer.Option(
        help="longest time one ghz process may run, seconds")] = 120.0,
    max_error_ratio: Annotated[float, typer.Option(
        help="a config whose failed/total exceeds this fails the run")] = 0.01,
    ghz_arg: Annotated[list[str] | None, typer.Option(
        help="extra ghz flag for every config, repeatable: --ghz-arg=--no-insecure "
             "--ghz-arg=--cacert=ca.pem (see perf/ghz/README.md)")] = None,
    results_md: Annotated[Path, typer.Option(help="summary table (markdown)")]
    = HERE / "RESULTS.md",
    results_json: Annotated[Path, typer.Option(help="summary rows and ghz's raw summaries")]
    = ROOT / "perf" / "results" / "ghz.json",
) -> None:
    """Run every ghz config against the local stack and write the summary table."""
    command = "python perf/ghz/run.py " + shlex.join(sys.argv[1:])
    try:
        ghz = ghz_binary()
        loaded = load_configs(configs or [])
        log_dir = Path(tempfile.mkdtemp(prefix="agentmesh-ghz-"))
        with contextlib.ExitStack() as ex:
            if start_stack:
                targets = ex.enter_context(own_stack(redis_url, log_dir))
            else:
                targets = stack.targets_for(run_dir, {})
            needed = {daemon_of(doc["call"]) for _, doc in loaded} | {"registry"}
            check_stack(targets, needed)
            ex.enter_context(echo_agents(targets["registry"], log_dir))
            wait_discoverable(targets["registry"])
            rows: list[Row] = []
            raw: dict[str, Any] = {}
            started_ms = int(time.time() * 1000) - 1000  # clock skew margin
            for path, doc in loaded:
                target = targets[daemon_of(doc["call"])]
                err.print(f"ghz {path.name} → {target} ...")
                report = run_ghz(ghz, path, target, total=total, concurrency=concurrency,
                                 max_duration_s=max_duration_s, extra_args=ghz_arg)
                row = summarize(path, doc["call"], target, report)
                if doc["call"].endswith("SagaService.StartSaga"):
                    row.outcomes = saga_outcomes(
                        target, doc.get("data", {}).get("definition", {}).get("name", ""),
                        since_ms=started_ms)
                rows.append(row)
                raw[path.name] = {k: v for k, v in report.items() if k != "details"}
    except GhzRunError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(table(rows))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(markdown(rows, command=command, when=when))
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(
        {"measured": when, "command": command,
         "rows": [{**asdict(r), "error_ratio": r.error_ratio} for r in rows], "ghz": raw},
        indent=2))
    err.print(f"wrote {results_md} and {results_json}")
    bad = failures(rows, max_error_ratio=max_error_ratio)
    if bad:
        err.print("[red]load test failed: requests failed beyond --max-error-ratio "
                  f"{max_error_ratio}[/red]")
        for line in bad:
            err.print(f"  {line}")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
