"""Saga coordinator benchmark: five-step sagas end to end, against direct calls
and against DBOS Transact, in the same run.

In one run, against a private Redis (`appendonly yes`, `appendfsync everysec`),
one real coordinator process, one real no-op SDK agent process
(`python -m agentmesh.agent.testing noop`) and one DBOS process
(perf/saga/dbos_peer.py: DBOS on SQLite, WAL, synchronous=NORMAL):
  * baseline: direct AgentService.Execute calls from this client to the agent
    (latency p50/p99, calls/s) with the same client concurrency;
  * sagas: `Client.run_saga` for five-step sagas on the agent: sagas/s,
    duration p50/p99, and the coordinator's CPU time per saga (its process's
    user+system time over the phase, psutil);
  * DBOS: a five-step workflow whose steps make the same Execute call to the
    same agent, with its sync API (threads) and its async API (asyncio);
  * each at --concurrency in flight and one at a time, the systems' phases
    interleaved over --rounds rounds (medians over the rounds);
  * per-step overhead = (saga p50 - 5 x direct Execute p50) / 5: what the
    coordinator adds per step (write-ahead log append, lease, planning).

Bounded: each phase stops after --seconds (default 20) or --sagas, whichever
comes first. Writes perf/saga/RESULTS.md; `--json PATH` writes the figures
for perf/run_all.py; `--profile PATH` samples the coordinator with py-spy over
the first loaded saga phase (summary by area and by function to PATH, the raw
collapsed stacks to PATH.raw; `--profile-native` adds the C frames, and slows
the coordinator: such a run's figures are not comparable).

    python perf/saga/bench_saga.py [--seconds 20] [--concurrency 64] [--sagas 4000] [--rounds 2]
        [--no-dbos] [--no-write] [--json PATH] [--profile PATH [--profile-native]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402
from agentmesh.client import Client  # noqa: E402
from agentmesh.saga.v1 import saga_pb2  # noqa: E402
from perf.common import (  # noqa: E402
    add_json,
    add_no_write,
    closed_loop,
    emit_figures,
    percentile,
    write_results,
)
from perf.table import Figure  # noqa: E402
from tests.infra import RedisServer  # noqa: E402
from tests.procs import DaemonProcess, daemon, testing_agent  # noqa: E402
from tests.registry_records import queue_agent_record  # noqa: E402

S = saga_pb2
PEER = Path(__file__).parent / "dbos_peer.py"
#: The DBOS APIs measured (perf/saga/dbos_peer.py).
DBOS_APIS = ("sync", "async")


class Cpu:
    """User+system CPU seconds of one process, read with psutil."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def seconds(self) -> float:
        """CPU time so far, s."""
        t = self.proc.cpu_times()
        return t.user + t.system


class Peer:
    """The DBOS process: one JSON command per phase over its stdin/stdout."""

    def __init__(self, agent_target: str, work: Path) -> None:
        self.err = (work / "dbos_peer.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), "--agent", agent_target, "--db", str(work / "dbos.sqlite")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.ready = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"dbos_peer exited ({self.proc.poll()}); see {self.err.name}")
        return json.loads(line)

    async def phase(
        self, api: str, *, concurrency: int, seconds: float, limit: int
    ) -> dict[str, Any]:
        """Run one phase in the peer; its answer (latencies_ms, wall_s, cpu_s, errors)."""
        assert self.proc.stdin is not None
        cmd = {"api": api, "concurrency": concurrency, "seconds": seconds, "limit": limit}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = await asyncio.to_thread(self._answer)
        if out["errors"]:
            raise RuntimeError(f"dbos {api}: {out['errors']} workflows failed; see {self.err.name}")
        return out

    def stop(self) -> None:
        """Close its stdin (it exits) and wait; SIGKILL after 20 s."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


async def run_saga(client: Client, defn: saga_pb2.SagaDefinition) -> None:
    """One saga through the client's helper (`Client.run_saga`), the way
    applications run one.

    Raises:
        SagaEnded: the saga ended in another final state.
    """
    await client.run_saga(defn)


def _rate(lat: list[float], wall_s: float) -> float:
    return len(lat) / wall_s if wall_s else 0.0


async def bench(
    args: argparse.Namespace,
    agent_target: str,
    saga_target: str,
    coord_cpu: Cpu,
    peer: Peer | None,
    profile: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """All phases; returns the figures (rates and CPU: medians over the rounds)."""
    async with (
        grpc.aio.insecure_channel(agent_target) as ach,
        Client(saga=saga_target) as saga,
    ):
        agent = agent_pb2_grpc.AgentServiceStub(ach)
        seq = 0

        async def direct(_i: int) -> None:
            nonlocal seq
            seq += 1
            await agent.Execute(
                agent_pb2.ExecuteRequest(action="noop", idempotency_key=f"direct/{seq}", attempt=1)
            )

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
        defn = S.SagaDefinition(name="bench_five_steps", steps=steps)

        async def one_saga(_i: int) -> None:
            await run_saga(saga, defn)

        async def sagas(concurrency: int, seconds: float, limit: int) -> dict[str, Any]:
            c0 = coord_cpu.seconds()
            r = await closed_loop(one_saga, concurrency=concurrency, seconds=seconds, limit=limit)
            return {
                "latencies_ms": r.latencies_ms,
                "wall_s": r.wall_s,
                "cpu_s": coord_cpu.seconds() - c0,
            }

        # warm-up: channels, caches, connection pools
        await closed_loop(direct, concurrency=8, seconds=2, limit=200)
        await closed_loop(one_saga, concurrency=8, seconds=3, limit=50)
        apis = DBOS_APIS if peer is not None else ()
        for api in apis:
            assert peer is not None
            await peer.phase(api, concurrency=8, seconds=3, limit=50)
        # the coordinator's CPU with nothing to do (renewal, recovery, task polling)
        c0 = coord_cpu.seconds()
        await asyncio.sleep(3.0)
        idle_ms_per_s = (coord_cpu.seconds() - c0) * 1000 / 3.0
        d = await closed_loop(
            direct, concurrency=args.concurrency, seconds=args.seconds / 2, limit=args.sagas * 5
        )
        d1 = (await closed_loop(direct, concurrency=1, seconds=3, limit=500)).latencies_ms
        loaded: dict[str, list[dict[str, Any]]] = {k: [] for k in ("saga", *apis)}
        solo: dict[str, list[dict[str, Any]]] = {k: [] for k in ("saga", *apis)}
        for rnd in range(args.rounds):
            # interleaved, and the order turned round every other round
            order = ["saga", *apis] if rnd % 2 == 0 else [*apis, "saga"]
            for k in order:
                if k == "saga":
                    if profile is not None and rnd == 0:
                        profile()
                    loaded[k].append(await sagas(args.concurrency, args.seconds, args.sagas))
                else:
                    assert peer is not None
                    loaded[k].append(
                        await peer.phase(
                            k, concurrency=args.concurrency, seconds=args.seconds, limit=args.sagas
                        )
                    )
            for k in order:
                if k == "saga":
                    solo[k].append(await sagas(1, args.solo_seconds, args.solo_sagas))
                else:
                    assert peer is not None
                    solo[k].append(
                        await peer.phase(
                            k, concurrency=1, seconds=args.solo_seconds, limit=args.solo_sagas
                        )
                    )

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        lat = [x for r in runs for x in r["latencies_ms"]]
        n = len(lat)
        return {
            "n": n,
            "per_s": statistics.median(_rate(r["latencies_ms"], r["wall_s"]) for r in runs),
            "p50_ms": statistics.median(lat),
            "p99_ms": percentile(lat, 0.99),
            "cpu_ms": statistics.median(
                1000 * r["cpu_s"] / max(1, len(r["latencies_ms"])) for r in runs
            ),
            # less what the coordinator's background loops take when it is idle
            # (lease renewal, recovery, the task scheduler's queue polling)
            "cpu_net_ms": statistics.median(
                (1000 * r["cpu_s"] - idle_ms_per_s * r["wall_s"]) / max(1, len(r["latencies_ms"]))
                for r in runs
            ),
        }

    sg, s1 = summary(loaded["saga"]), summary(solo["saga"])
    d_lat, d_wall = d.latencies_ms, d.wall_s
    fig: dict[str, Any] = {
        "rounds": args.rounds,
        "direct_calls": len(d_lat),
        "direct_per_s": len(d_lat) / d_wall,
        "direct_p50_ms": statistics.median(d_lat),
        "direct_p99_ms": percentile(d_lat, 0.99),
        "sagas": sg["n"],
        "sagas_per_s": sg["per_s"],
        "saga_p50_ms": sg["p50_ms"],
        "saga_p99_ms": sg["p99_ms"],
        "steps_per_s": 5 * sg["per_s"],
        "coord_cpu_ms_per_saga": sg["cpu_ms"],
        "coord_net_cpu_ms_per_saga": sg["cpu_net_ms"],
        "solo_coord_net_cpu_ms_per_saga": s1["cpu_net_ms"],
        "coord_idle_cpu_ms_per_s": idle_ms_per_s,
        "solo_coord_cpu_ms_per_saga": s1["cpu_ms"],
        "solo_direct_p50_ms": statistics.median(d1),
        "solo_saga_p50_ms": s1["p50_ms"],
        "solo_sagas": s1["n"],
        "overhead_per_step_ms": (s1["p50_ms"] - 5 * statistics.median(d1)) / 5,
        "loaded_overhead_per_step_ms": (sg["p50_ms"] - 5 * statistics.median(d_lat)) / 5,
        "dbos": {},
    }
    for api in apis:
        lo, so = summary(loaded[api]), summary(solo[api])
        fig["dbos"][api] = {
            "workflows": lo["n"],
            "per_s": lo["per_s"],
            "p50_ms": lo["p50_ms"],
            "p99_ms": lo["p99_ms"],
            "cpu_ms_per_workflow": lo["cpu_ms"],
            "solo_workflows": so["n"],
            "solo_p50_ms": so["p50_ms"],
            "solo_cpu_ms_per_workflow": so["cpu_ms"],
        }
    if apis:
        best_rate = max(apis, key=lambda a: fig["dbos"][a]["per_s"])
        best_solo = min(apis, key=lambda a: fig["dbos"][a]["solo_p50_ms"])
        fig["dbos_best_rate_api"], fig["dbos_best_solo_api"] = best_rate, best_solo
        fig["dbos_per_s"] = fig["dbos"][best_rate]["per_s"]
        fig["dbos_solo_p50_ms"] = fig["dbos"][best_solo]["solo_p50_ms"]
        fig["dbos_cpu_ms_per_workflow"] = fig["dbos"][best_rate]["cpu_ms_per_workflow"]
        fig["throughput_vs_dbos"] = fig["sagas_per_s"] / fig["dbos_per_s"]
        fig["solo_speedup_vs_dbos"] = fig["dbos_solo_p50_ms"] / fig["solo_saga_p50_ms"]
    return fig


def figures(fig: dict[str, Any]) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py)."""
    out = [
        Figure(
            name="saga: five-step sagas/s end to end (64 in flight)",
            value=fig["sagas_per_s"],
            unit="/s",
            baseline_name="direct Execute calls/s / 5 (same concurrency)",
            baseline_value=fig["direct_per_s"] / 5,
            goal=">= 100 /s",
        ),
        Figure(
            name="saga: time per step, one saga at a time (p50 / 5)",
            value=fig["solo_saga_p50_ms"] / 5,
            unit="ms",
            baseline_name="direct Execute p50, one call at a time",
            baseline_value=fig["solo_direct_p50_ms"],
            better="lower",
        ),
    ]
    if fig.get("dbos"):
        out += [
            Figure(
                name="saga vs DBOS: five-step sagas/s (64 in flight; Redis AOF everysec)",
                value=fig["sagas_per_s"],
                unit="/s",
                baseline_name="DBOS 3.4 workflows/s, better API (SQLite WAL, sync=NORMAL)",
                baseline_value=fig["dbos_per_s"],
                goal=">= 2x",
            ),
            Figure(
                name="saga vs DBOS: five-step saga p50, one at a time",
                value=fig["solo_saga_p50_ms"],
                unit="ms",
                baseline_name="DBOS 3.4 workflow p50, better API, one at a time",
                baseline_value=fig["dbos_solo_p50_ms"],
                better="lower",
                goal=">= 2x",
            ),
            Figure(
                name="saga: coordinator CPU per five-step saga (64 in flight)",
                value=fig["coord_cpu_ms_per_saga"],
                unit="ms",
                baseline_name="DBOS process CPU per workflow (in-process driver)",
                baseline_value=fig["dbos_cpu_ms_per_workflow"],
                better="lower",
                goal="<= 3 ms",
            ),
        ]
    return out


def render(
    fig: dict[str, Any], args: argparse.Namespace, durability: str, profile_text: str
) -> str:
    """The text of RESULTS.md."""
    cpu = os.cpu_count()
    text = f"""# Saga coordinator benchmark

Reproduce: `python perf/saga/bench_saga.py --seconds {args.seconds:g} --concurrency \
{args.concurrency} --sagas {args.sagas} --rounds {args.rounds}`

Setup: one coordinator process, one no-op SDK agent process
(`python -m agentmesh.agent.testing noop`), a private `redis-server`, one DBOS
process (perf/saga/dbos_peer.py) and this client, all on one machine
({platform.machine()}, {cpu} CPUs shared with other work while measuring),
Python {platform.python_version()}. A saga is five sequential steps on the
agent; "end to end" is `Client.run_saga` from start to the final event. Every
step is logged write-ahead in Redis (STEP_STARTED before the call,
STEP_COMPLETED with the next one), under a fenced lease. The DBOS workflow is
five sequential `@DBOS.step`s, each the same `AgentService.Execute` call to the
same agent. The systems' phases are interleaved, {args.rounds} rounds, in the
same run; rates and CPU are medians over the rounds.

Durability: {durability}

| figure | value |
|---|---|
| five-step sagas/s ({args.concurrency} in flight) | **{fig["sagas_per_s"]:.1f}** |
| saga steps/s | {fig["steps_per_s"]:.0f} |
| saga duration p50 / p99 (loaded) | {fig["saga_p50_ms"]:.1f} ms / {fig["saga_p99_ms"]:.1f} ms |
| sagas measured | {fig["sagas"]} |
| coordinator CPU per saga ({args.concurrency} in flight / one at a time) | \
**{fig["coord_cpu_ms_per_saga"]:.2f} ms** / {fig["solo_coord_cpu_ms_per_saga"]:.2f} ms \
(goal <= 3 ms) |
| the same, less the coordinator's idle background CPU (below) | \
{fig["coord_net_cpu_ms_per_saga"]:.2f} ms / {fig["solo_coord_net_cpu_ms_per_saga"]:.2f} ms |
| coordinator CPU when idle (background loops: renewal, recovery, task polling) | \
{fig["coord_idle_cpu_ms_per_s"]:.0f} ms per s |
| baseline: direct Execute calls/s (same concurrency) | {fig["direct_per_s"]:.0f} |
| baseline: direct Execute p50 / p99 (loaded) | {fig["direct_p50_ms"]:.2f} ms / \
{fig["direct_p99_ms"]:.2f} ms |
| one saga at a time: duration p50 | {fig["solo_saga_p50_ms"]:.1f} ms |
| one call at a time: direct Execute p50 | {fig["solo_direct_p50_ms"]:.2f} ms |
| **per-step overhead over a direct Execute** (one at a time) | \
**{fig["overhead_per_step_ms"]:.2f} ms** |
| per-step overhead under load | {fig["loaded_overhead_per_step_ms"]:.1f} ms |
"""
    if fig.get("dbos"):
        text += f"""
## Against DBOS Transact 3.4 (same agent, same five calls, same run)

| system | workflows/s ({args.concurrency} in flight) | p50 loaded | p50 one at a time \
| process CPU per workflow (loaded / one at a time) |
|---|---|---|---|---|
| AgentMesh saga (coordinator process) | **{fig["sagas_per_s"]:.1f}** | \
{fig["saga_p50_ms"]:.0f} ms | **{fig["solo_saga_p50_ms"]:.1f} ms** | \
{fig["coord_cpu_ms_per_saga"]:.2f} / {fig["solo_coord_cpu_ms_per_saga"]:.2f} ms |
"""
        for api, f in fig["dbos"].items():
            text += (
                f"| DBOS, {api} API (application process) | {f['per_s']:.1f} | "
                f"{f['p50_ms']:.0f} ms | {f['solo_p50_ms']:.1f} ms | "
                f"{f['cpu_ms_per_workflow']:.2f} / {f['solo_cpu_ms_per_workflow']:.2f} ms |\n"
            )
        text += f"""
Ratios against DBOS's better API: throughput **{fig["throughput_vs_dbos"]:.2f}x** \
(DBOS {fig["dbos_best_rate_api"]}; goal >= 2x), one at a time **\
{fig["solo_speedup_vs_dbos"]:.2f}x** faster (DBOS {fig["dbos_best_solo_api"]}; goal >= 2x).
The DBOS process's CPU includes its workflow driver and its gRPC client of the
agent (it runs the workflows in-process); the coordinator's excludes the
client that calls `run_saga`, which is a separate process here.
"""
    text += f"""
Ratio: a saga step costs {fig["solo_saga_p50_ms"] / 5 / fig["solo_direct_p50_ms"]:.1f}x a direct
Execute call when idle; throughput in steps/s is \
{fig["steps_per_s"] / fig["direct_per_s"]:.2f}x the direct call rate.

The seeds claimed 1,000 sagas a minute (17/s); the goal was 100/s.
"""
    return text + profile_text


#: RESULTS.md keeps what follows this line across runs (the profiles, written by hand).
KEEP_MARK = "<!-- kept by bench_saga.py: the profiles below are written by hand -->"


def kept_section(path: Path) -> str:
    """The hand-written tail of RESULTS.md (from KEEP_MARK), or ""."""
    if not path.exists():
        return ""
    text = path.read_text()
    i = text.find(KEEP_MARK)
    return "\n" + text[i:] if i >= 0 else ""


def pyspy(pid: int, out: Path, seconds: float, *, native: bool) -> subprocess.Popen[bytes]:
    """py-spy sampling the coordinator for `seconds` (raw collapsed stacks to `out`;
    `native` adds the C frames of extensions: grpc's core, protobuf's upb, hiredis)."""
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            # --native needs the target paused while sampling (slower, same shares)
            *(["--native"] if native else ["--nonblocking"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, *, top: int = 25) -> str:
    """Shares of the samples in py-spy's collapsed stacks: by area (any frame in it,
    so a sample counts once per area it passes through) and by function (self)."""
    areas = {
        "redis-py (redis/)": "(redis/",
        "grpc (grpc/)": "(grpc/",
        "asyncio": "(asyncio/",
        "protobuf": "(google/protobuf/",
        "saga engine.py": "saga/engine.py",
        "saga servicer.py": "saga/servicer.py",
        "saga store.py": "saga/store.py",
        "saga state.py": "saga/state.py",
        "saga planner.py": "saga/planner.py",
        "saga definition.py": "saga/definition.py",
        "runtime interceptors.py": "runtime/interceptors.py",
        "runtime agents.py": "runtime/agents.py",
        "opentelemetry": "(opentelemetry/",
        "json": "(json/",
        "RPC StartSaga": "SagaServicer.StartSaga",
        "RPC RunSaga": "SagaServicer.RunSaga",
        "RPC WatchSaga": "SagaServicer.WatchSaga",
        "RPC GetSaga": "SagaServicer.GetSaga",
        "Runner.run": "Runner.run (agentmesh",
        "Runner.flush (append)": "Runner.flush (",
        "agent calls (Runner._send)": "Runner._send (",
        "Engine.try_drive (acquire, load)": "Engine.try_drive (",
        "SagaRecord.to_json (snapshot)": "SagaRecord.to_json (",
        "SagaRecord.to_proto": "SagaRecord.to_proto (",
        "stream wrapper (_until_drained)": "_until_drained (",
        "task scheduler (issue 16)": "TaskScheduler.",
    }
    total = 0
    by_area = dict.fromkeys(areas, 0)
    self_t: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        c = int(n)
        total += c
        for name, needle in areas.items():
            if needle in stack:
                by_area[name] += c
        leaf = stack.rsplit(";", 1)[-1]
        self_t[leaf] = self_t.get(leaf, 0) + c
    if not total:
        return "(no samples)"
    rows = [
        f"| {k} | {100 * v / total:.1f} % |"
        for k, v in sorted(by_area.items(), key=lambda kv: -kv[1])
    ]
    fns = [
        f"| `{k[:110]}` | {100 * v / total:.1f} % |"
        for k, v in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]
    ]
    return "\n".join(
        [
            f"{total} samples",
            "",
            "| area (inclusive) | share |",
            "|---|---|",
            *rows,
            "",
            "| function (self) | share |",
            "|---|---|",
            *fns,
        ]
    )


def main() -> None:
    """Start Redis, agent, coordinator and the DBOS peer; measure; write RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sagas", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per system")
    ap.add_argument(
        "--solo-seconds", type=float, default=4.0, help="length of each one-at-a-time phase, s"
    )
    ap.add_argument(
        "--solo-sagas",
        type=int,
        default=150,
        help="most sagas/workflows of each one-at-a-time phase",
    )
    ap.add_argument("--no-dbos", action="store_true", help="skip the DBOS peer")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the coordinator over the first loaded phase; summary to PATH",
    )
    ap.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile: sample C frames too (py-spy --native)",
    )
    add_no_write(ap)
    add_json(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-saga-"))
    server = RedisServer(workdir=work / "redis", appendonly=True).start()
    url = server.url_for_db(3)
    procs: list[DaemonProcess] = []
    peer: Peer | None = None
    spy: list[subprocess.Popen[bytes]] = []
    try:
        r = redis.Redis.from_url(url)
        r.config_set("appendfsync", "everysec")
        aof = r.config_get("appendonly")["appendonly"], r.config_get("appendfsync")["appendfsync"]
        agent = testing_agent("noop", work, "--metrics-port", "-1", agent_id="bench-noop")
        procs.append(agent.start())
        with r.pipeline() as pipe:
            queue_agent_record(pipe, "bench-noop", endpoint=agent.target)
            pipe.execute()
        coord = daemon("saga", work, "--redis-url", url)
        procs.append(coord.start())
        durability = f"Redis `appendonly {aof[0]}`, `appendfsync {aof[1]}` (sagas)"
        if not args.no_dbos:
            peer = Peer(agent.target, work)
            durability += (
                f"; DBOS SQLite `journal_mode={peer.ready['journal_mode']}`, "
                "`synchronous=NORMAL` (set on each of its connections). Both survive a "
                "process crash with every acknowledged write; on power loss Redis can lose "
                "up to about 1 s of writes and SQLite WAL+NORMAL the commits since the last "
                "checkpoint."
            )

        def start_profile() -> None:
            assert args.profile is not None
            spy.append(
                pyspy(coord.pid, work / "pyspy.txt", args.seconds, native=args.profile_native)
            )

        fig = asyncio.run(
            bench(
                args,
                agent.target,
                coord.target,
                Cpu(coord.pid),
                peer,
                start_profile if args.profile else None,
            )
        )
        fig["durability"] = durability
        print(json.dumps(fig, indent=2))
        if spy:
            spy[0].wait(timeout=args.seconds + 60)
            args.profile.write_text(summarize_profile(work / "pyspy.txt") + "\n")
            subprocess.call(["cp", str(work / "pyspy.txt"), f"{args.profile}.raw"])
            print(args.profile.read_text())
        results = Path(__file__).parent / "RESULTS.md"
        write_results(results, render(fig, args, durability, kept_section(results)), args)
        emit_figures(figures(fig), args)
    finally:
        for sp in spy:
            if sp.poll() is None:
                sp.kill()
        if peer is not None:
            peer.stop()
        for p in procs:
            p.stop()
        server.stop()
        subprocess.call(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
