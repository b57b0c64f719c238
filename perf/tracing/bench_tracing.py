"""Tracing overhead: router Route RPC/s and saga sagas/s with tracing off, on
at sample ratio 1.0 and on at 0.01, in one run (issue 19).

Against a private Redis and a real Jaeger (tests/jaeger.py; spans exported
over OTLP/gRPC as in production), four routers and four saga coordinators
run side by side, one per setting (AGENTMESH_OTLP_ENDPOINT unset / ratio 1.0
/ ratio 0.01 / unset again, the control), with one no-op agent (`python -m agentmesh.agent.testing
noop`, tracing off, so the agent's cost is the same for all of them). The
client makes untraced calls, so every root is sampled by the daemon's own
ratio. Measurements are interleaved in rounds (off, 1.0, 0.01, control,
then 1.0, 0.01, control, off, ...) and the median of the per-round ratios is
reported, so drift on a shared machine hits every setting alike.

Control: a fourth router and coordinator with tracing off as well, measured
like the others. Its ratio to off is what the machine's noise alone gives
in this run (1.0 on a quiet machine): a 0.01 / off ratio is a tracing cost
only as far as it is further from 1 than the control's.

Figures: the closed-loop rate, and the rate per CPU second of the daemon
process (what tracing adds to; the closed-loop rate on a shared 2-core
machine also moves with everything else). Goal: at ratio 0.01 the
per-CPU-second rates stay within 5% of tracing off.

Direct measure (with py-spy on PATH, `--profile-s` > 0): after the rounds,
the ratio-0.01 router and coordinator are sampled under the same load, and
the share of their samples inside tracing code (a frame of OpenTelemetry or
of an agentmesh `tracing.py` on the stack) is reported. It needs no second
process to compare with, so the machine's noise does not move it; it does
not see the C side (a few bytes more of gRPC metadata per call).

    python perf/tracing/bench_tracing.py [--seconds 3] [--rounds 6] [--no-write] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.client import Client  # noqa: E402
from agentmesh.router.v1 import router_pb2 as R  # noqa: E402
from agentmesh.router.v1 import router_pb2_grpc  # noqa: E402
from agentmesh.saga.v1 import saga_pb2 as S  # noqa: E402
from perf.common import add_json, add_no_write, closed_loop, emit_figures, write_results  # noqa: E402
from perf.saga.bench_saga import pyspy, run_saga  # noqa: E402
from perf.table import Figure  # noqa: E402
from tests.infra import RedisServer  # noqa: E402
from tests.jaeger import Jaeger, jaeger_binary  # noqa: E402
from tests.procs import DaemonProcess, daemon, testing_agent  # noqa: E402
from tests.registry_records import queue_agent_record  # noqa: E402

HERE = Path(__file__).resolve().parent
#: (label, sample ratio or None for tracing off)
SETTINGS: tuple[tuple[str, float | None], ...] = (
    ("off", None),
    ("1.0", 1.0),
    ("0.01", 0.01),
    ("control", None),
)
CAP = "bench"


def _env(otlp: str, ratio: float | None) -> dict[str, str]:
    if ratio is None:
        return {"AGENTMESH_OTLP_ENDPOINT": ""}
    # Batches every 200 ms (the SDK's default is 5 s): the exporter of the
    # ratio-1.0 daemon must not still be sending its backlog while the next
    # setting is measured.
    return {
        "AGENTMESH_OTLP_ENDPOINT": otlp,
        "AGENTMESH_TRACE_SAMPLE_RATIO": str(ratio),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _route_rate(target: str, *, seconds: float, concurrency: int) -> tuple[float, int]:
    reqs = [
        R.RouteRequest(
            message=R.RouteMessage(message_type=CAP, routing_key=f"k{i}"),
            strategy=R.STRATEGY_LEAST_LOADED,
        )
        for i in range(1000)
    ]
    async with grpc.aio.insecure_channel(target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        for q in reqs[:50]:
            await stub.Route(q)
        res = await closed_loop(
            lambda i: stub.Route(reqs[i % len(reqs)]), concurrency=concurrency, seconds=seconds
        )
    return res.rate, res.calls


async def _saga_rate(
    target: str, *, seconds: float, concurrency: int, limit: int
) -> tuple[float, int]:
    steps = [
        S.Step(
            name=f"s{i}",
            agent_id="bench-noop",
            action=f"step{i}",
            compensation_action=f"undo{i}",
            depends_on=[f"s{i - 1}"] if i else [],
        )
        for i in range(5)
    ]
    defn = S.SagaDefinition(name="bench_tracing", steps=steps)
    async with Client(saga=target) as client:

        async def one(_i: int) -> None:
            await run_saga(client, defn)

        await closed_loop(one, concurrency=4, seconds=1, limit=10)  # warm
        res = await closed_loop(one, concurrency=concurrency, seconds=seconds, limit=limit)
    return res.rate, res.calls


async def measure(
    ns: argparse.Namespace, routers: dict[str, DaemonProcess], sagas: dict[str, DaemonProcess]
) -> dict[str, Any]:
    """Interleaved rounds; per setting the closed-loop rate and the rate per
    CPU second of the daemon (calls served / CPU seconds the daemon process
    used in the window), with the per-round ratios to off.

    The per-CPU-second rate is the daemon's capacity per core: on a shared
    2-core machine the closed-loop rate also moves with whatever else runs
    (the client, other processes), while the daemon's own CPU per call is
    what tracing adds to."""
    out: dict[str, Any] = {
        k: {lbl: [] for lbl in routers} for k in ("route", "saga", "route_cpu", "saga_cpu")
    }
    labels = list(routers)
    for r in range(ns.rounds):
        # Each round starts with another setting: no setting always runs
        # first (on a fresher Redis) or last.
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            p = routers[label]
            c0 = _cpu_s(p.pid)
            rate, calls = await _route_rate(p.target, seconds=ns.seconds, concurrency=16)
            out["route"][label].append(rate)
            out["route_cpu"][label].append(calls / max(1e-9, _cpu_s(p.pid) - c0))
            await asyncio.sleep(ns.settle_s)  # exporters and Jaeger catch up
        for label in order:
            p = sagas[label]
            c0 = _cpu_s(p.pid)
            rate, calls = await _saga_rate(
                p.target, seconds=ns.seconds, concurrency=16, limit=ns.sagas
            )
            out["saga"][label].append(rate)
            out["saga_cpu"][label].append(calls / max(1e-9, _cpu_s(p.pid) - c0))
            await asyncio.sleep(ns.settle_s)
    for kind in ("route", "saga", "route_cpu", "saga_cpu"):
        rates = out[kind]
        out[f"{kind}_median"] = {k: statistics.median(v) for k, v in rates.items()}
        out[f"{kind}_ratio"] = {
            k: statistics.median(a / b for a, b in zip(rates[k], rates["off"], strict=True))
            for k in rates
        }
    return out


#: A frame of tracing code in py-spy's collapsed stacks: "func (path:line)".
TRACING_FRAME = re.compile(r"\((?:opentelemetry/|agentmesh/(?:runtime|server/\w+)/tracing\.py)")


def tracing_share(raw: str) -> tuple[float, int]:
    """(share of the samples with a tracing frame on the stack, samples) of
    py-spy's raw collapsed output ("frame;frame;... count" per line)."""
    total = hit = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        if TRACING_FRAME.search(stack):
            hit += int(n)
    return (hit / total if total else 0.0), total


async def profile_shares(
    ns: argparse.Namespace, router: DaemonProcess, saga: DaemonProcess, work: Path
) -> dict[str, tuple[float, int]]:
    """py-spy the ratio-0.01 router and coordinator for `ns.profile_s` each,
    under the loads of the rounds; {"route"|"saga": tracing_share(...)}."""
    out: dict[str, tuple[float, int]] = {}
    for kind, proc in (("route", router), ("saga", saga)):
        path = work / f"profile-{kind}.raw"
        spy = pyspy(proc.pid, path, ns.profile_s, native=False)
        if kind == "route":
            await _route_rate(proc.target, seconds=ns.profile_s + 0.5, concurrency=16)
        else:
            await _saga_rate(
                proc.target, seconds=ns.profile_s + 0.5, concurrency=16, limit=10 * ns.sagas
            )
        await asyncio.to_thread(spy.wait, 60)
        out[kind] = tracing_share(path.read_text() if path.exists() else "")
    return out


def bench(ns: argparse.Namespace) -> dict[str, Any]:
    """Start Redis, Jaeger, the agent, 4 routers and 4 coordinators; measure."""
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    server = RedisServer(workdir=work / "redis").start()
    jaeger = Jaeger(work)
    procs: list[DaemonProcess] = []
    try:
        url = server.url_for_db(0)
        agent = testing_agent(
            "noop",
            work,
            "--metrics-port",
            "-1",
            agent_id="bench-noop",
            env={"AGENTMESH_OTLP_ENDPOINT": ""},
        )
        procs.append(agent.start())
        with redis.Redis.from_url(url).pipeline() as pipe:
            queue_agent_record(pipe, "bench-noop", endpoint=agent.target)
            for i in range(50):
                queue_agent_record(
                    pipe, f"{CAP}-{i:02d}", endpoint=f"10.9.0.{i}:50100", capabilities=[CAP]
                )
            pipe.execute()
        routers: dict[str, DaemonProcess] = {}
        sagas: dict[str, DaemonProcess] = {}
        for label, ratio in SETTINGS:
            env = {**_env(jaeger.otlp, ratio), "AGENTMESH_SAGA_COORDINATOR_ID": f"c-{label}"}
            r = daemon("router", work, "--redis-url", url, env=env)
            procs.append(r.start())
            routers[label] = r
            s = daemon("saga", work, "--redis-url", url, env=env)
            procs.append(s.start())
            sagas[label] = s
        res = asyncio.run(measure(ns, routers, sagas))
        if ns.profile_s > 0 and shutil.which("py-spy"):
            res["tracing_share"] = asyncio.run(
                profile_shares(ns, routers["0.01"], sagas["0.01"], work)
            )
        res["spans_exported"] = _services(jaeger)
        return res
    finally:
        for p in reversed(procs):
            p.stop(timeout_s=15)
        jaeger.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _services(jaeger: Jaeger) -> list[str]:
    """Service names Jaeger received spans from (shows the traced daemons exported)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{jaeger.api}/api/services", timeout=5) as r:
            return sorted(json.load(r).get("data") or [])
    except OSError:
        return []


def figures(res: dict[str, Any]) -> list[Figure]:
    """Route RPC/s and sagas/s at each ratio beside tracing off: per CPU
    second of the daemon (the goal) and closed loop.

    The baseline is tracing off's median rate; a setting's value is that
    median times the median of its per-round ratios to off (the paired
    estimate: within a round the settings run back to back, so the shared
    machine's drift cancels, while the medians of rates taken apart moved
    by 10% between identical runs)."""
    out = []
    for kind, name, unit in (
        ("route_cpu", "router: Route RPC per router CPU-second", "RPC/s"),
        ("saga_cpu", "saga: five-step sagas per coordinator CPU-second", "sagas/s"),
        ("route", "router: Route RPC/s closed loop", "RPC/s"),
        ("saga", "saga: five-step sagas/s closed loop", "sagas/s"),
    ):
        med, paired = res[f"{kind}_median"], res[f"{kind}_ratio"]
        for label, goal in (
            ("0.01", ">= 0.95x" if kind.endswith("_cpu") else None),
            ("1.0", None),
            ("control", None),
        ):
            what = (
                "with tracing off, a second daemon (control: this run's noise)"
                if label == "control"
                else f"at sample ratio {label}"
            )
            out.append(
                Figure(
                    name=f"tracing: {name} {what}",
                    value=med["off"] * paired[label],
                    unit=unit,
                    baseline_name=f"{name} with tracing off",
                    baseline_value=med["off"],
                    goal=goal,
                )
            )
    for kind, who in (("route", "router: Route"), ("saga", "saga: five-step sagas")):
        if share := res.get("tracing_share", {}).get(kind):
            out.append(
                Figure(
                    name=f"tracing: {who}, share of the daemon's CPU samples in tracing code"
                    " at sample ratio 0.01 (py-spy)",
                    value=100 * share[0],
                    unit="%",
                    better="lower",
                    goal="<= 5 %",
                )
            )
    return out


def report(res: dict[str, Any], ns: argparse.Namespace) -> str:
    lines = [
        "# Tracing overhead (perf/tracing/bench_tracing.py)",
        "",
        f"{ns.rounds} interleaved rounds of {ns.seconds:g} s per setting; 16 calls in flight;",
        "median rate over the rounds, and the median of the per-round ratios to tracing off.",
        "Spans go to a real Jaeger over OTLP/gRPC (batches every 200 ms; a 1 s pause",
        "after each window). Rates per CPU-second: calls served / CPU seconds the",
        "daemon process used in the window (the goal: >= 0.95x of off at ratio 0.01).",
        "The ratio columns are the medians of the per-round ratios (paired: the",
        "settings of a round run back to back); they are the figures `make bench` reports.",
        "",
        "The control is a second daemon with tracing off: its ratio to off is the run's noise.",
        "",
        "| figure | off | ratio 1.0 | ratio 0.01 | 1.0 / off | 0.01 / off | control / off |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, name in (
        ("route_cpu", "router Route RPC per router CPU-second"),
        ("saga_cpu", "saga five-step sagas per coordinator CPU-second"),
        ("route", "router Route RPC/s (closed loop, 16 in flight)"),
        ("saga", "saga five-step sagas/s (closed loop, 16 in flight)"),
    ):
        m, r = res[f"{kind}_median"], res[f"{kind}_ratio"]
        lines.append(
            f"| {name} | {m['off']:.0f} | {m['1.0']:.0f} | {m['0.01']:.0f} | "
            f"{r['1.0']:.3f} | {r['0.01']:.3f} | {r['control']:.3f} |"
        )
    if shares := res.get("tracing_share"):
        lines += [
            "",
            "Direct measure at ratio 0.01 (py-spy, same load, samples with a tracing frame"
            " on the stack):",
            "",
            "| daemon | tracing code share of CPU samples | samples |",
            "|---|---|---|",
            *(
                f"| {d} | {100 * shares[k][0]:.1f} % | {shares[k][1]} |"
                for k, d in (("route", "router (Route)"), ("saga", "saga coordinator (RunSaga)"))
            ),
        ]
    lines += ["", f"Services seen by Jaeger: {', '.join(res['spans_exported']) or 'none'}", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sagas", type=int, default=1500, help="at most this many sagas per window")
    ap.add_argument(
        "--settle-s",
        type=float,
        default=1.0,
        help="pause after each window, so exports of one setting end before the next",
    )
    ap.add_argument(
        "--profile-s",
        type=float,
        default=4.0,
        help="py-spy each ratio-0.01 daemon this long for the direct measure (0: skip)",
    )
    add_no_write(ap)
    add_json(ap)
    ns = ap.parse_args()
    if jaeger_binary() is None:
        sys.exit("perf/tracing: jaeger is not built: bash deploy/local/tools.sh jaeger")
    t0 = time.monotonic()
    res = bench(ns)
    write_results(HERE / "RESULTS.md", report(res, ns), ns)
    emit_figures(figures(res), ns)
    print(f"(took {time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
