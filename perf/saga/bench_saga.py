"""Saga coordinator benchmark: five-step sagas per second end to end.

In one run, against a private Redis, one real coordinator process and one real
no-op agent process (`python -m agentmesh.agent.testing noop`):
  * baseline: direct AgentService.Execute calls from this client to the agent
    (latency p50/p99, calls/s) with the same client concurrency;
  * sagas: `Client.run_saga` (StartSaga, WatchSaga until the final event,
    GetSaga) for five-step sagas on the no-op agent: sagas/s, duration p50/p99;
  * per-step overhead = (saga p50 - 5 x direct Execute p50) / 5: what the
    coordinator adds per step (write-ahead log append, lease, planning).

Bounded: each phase stops after --seconds (default 20) or --sagas, whichever
comes first. Writes perf/saga/RESULTS.md; `--json PATH` writes the figures
for perf/run_all.py.

    python perf/saga/bench_saga.py [--seconds 20] [--concurrency 64] [--sagas 4000] [--no-write]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
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


async def run_saga(client: Client, defn: saga_pb2.SagaDefinition) -> None:
    """One saga through the client's helper (`Client.run_saga`: StartSaga, WatchSaga
    to the final event, GetSaga), the way applications run one.

    Raises:
        SagaEnded: the saga ended in another final state.
    """
    await client.run_saga(defn)


async def bench(args: argparse.Namespace, agent_target: str, saga_target: str) -> dict[str, Any]:
    """Both phases; returns the figures."""
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

        # warm-up: channels, caches, JIT-free but connection pools
        await closed_loop(direct, concurrency=8, seconds=2, limit=200)
        await closed_loop(one_saga, concurrency=8, seconds=3, limit=50)
        d = await closed_loop(
            direct, concurrency=args.concurrency, seconds=args.seconds / 2, limit=args.sagas * 5
        )
        sg = await closed_loop(
            one_saga, concurrency=args.concurrency, seconds=args.seconds, limit=args.sagas
        )
        # per-step overhead at low load: one saga at a time vs one call at a time
        d1 = (await closed_loop(direct, concurrency=1, seconds=3, limit=500)).latencies_ms
        s1 = (await closed_loop(one_saga, concurrency=1, seconds=5, limit=100)).latencies_ms
    d_lat, d_wall, s_lat, s_wall = d.latencies_ms, d.wall_s, sg.latencies_ms, sg.wall_s
    return {
        "direct_calls": len(d_lat),
        "direct_per_s": len(d_lat) / d_wall,
        "direct_p50_ms": statistics.median(d_lat),
        "direct_p99_ms": percentile(d_lat, 0.99),
        "sagas": len(s_lat),
        "sagas_per_s": len(s_lat) / s_wall,
        "saga_p50_ms": statistics.median(s_lat),
        "saga_p99_ms": percentile(s_lat, 0.99),
        "steps_per_s": 5 * len(s_lat) / s_wall,
        "solo_direct_p50_ms": statistics.median(d1),
        "solo_saga_p50_ms": statistics.median(s1),
        "solo_sagas": len(s1),
        "overhead_per_step_ms": (statistics.median(s1) - 5 * statistics.median(d1)) / 5,
        "loaded_overhead_per_step_ms": (statistics.median(s_lat) - 5 * statistics.median(d_lat))
        / 5,
    }


def figures(fig: dict[str, Any]) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py)."""
    return [
        Figure(name="saga: five-step sagas/s end to end (64 in flight)",
               value=fig["sagas_per_s"], unit="/s",
               baseline_name="direct Execute calls/s / 5 (same concurrency)",
               baseline_value=fig["direct_per_s"] / 5, goal=">= 100 /s"),
        Figure(name="saga: time per step, one saga at a time (p50 / 5)",
               value=fig["solo_saga_p50_ms"] / 5, unit="ms",
               baseline_name="direct Execute p50, one call at a time",
               baseline_value=fig["solo_direct_p50_ms"], better="lower"),
    ]


def render(fig: dict[str, Any], args: argparse.Namespace) -> str:
    """The text of RESULTS.md."""
    cpu = os.cpu_count()
    text = f"""# Saga coordinator benchmark

Reproduce: `python perf/saga/bench_saga.py --seconds {args.seconds:g} --concurrency \
{args.concurrency} --sagas {args.sagas}`

Setup: one coordinator process, one no-op agent process
(`python -m agentmesh.agent.testing noop`), a private `redis-server`, and this
client, all on one machine ({platform.machine()}, {cpu} CPUs shared with other
work while measuring), Python {platform.python_version()}. A saga is five
sequential steps on the agent; "end to end" is StartSaga until WatchSaga
delivers the final event. Every step is logged write-ahead in Redis
(STEP_STARTED before the call, STEP_COMPLETED with the next one), under a
fenced lease.

| figure | value |
|---|---|
| five-step sagas/s ({args.concurrency} in flight) | **{fig["sagas_per_s"]:.1f}** (goal >= 100) |
| saga steps/s | {fig["steps_per_s"]:.0f} |
| saga duration p50 / p99 (loaded) | {fig["saga_p50_ms"]:.1f} ms / {fig["saga_p99_ms"]:.1f} ms |
| sagas measured | {fig["sagas"]} |
| baseline: direct Execute calls/s (same concurrency) | {fig["direct_per_s"]:.0f} |
| baseline: direct Execute p50 / p99 (loaded) | {fig["direct_p50_ms"]:.2f} ms / \
{fig["direct_p99_ms"]:.2f} ms |
| one saga at a time: duration p50 | {fig["solo_saga_p50_ms"]:.1f} ms |
| one call at a time: direct Execute p50 | {fig["solo_direct_p50_ms"]:.2f} ms |
| **per-step overhead over a direct Execute** (one at a time) | \
**{fig["overhead_per_step_ms"]:.2f} ms** |
| per-step overhead under load | {fig["loaded_overhead_per_step_ms"]:.1f} ms |

Ratio: a saga step costs {fig["solo_saga_p50_ms"] / 5 / fig["solo_direct_p50_ms"]:.1f}x a direct
Execute call when idle; throughput in steps/s is \
{fig["steps_per_s"] / fig["direct_per_s"]:.2f}x the direct call rate.

The seeds claimed 1,000 sagas a minute (17/s); the goal was 100/s.
"""
    return text


def main() -> None:
    """Start Redis, agent and coordinator; measure; write RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sagas", type=int, default=4000)
    add_no_write(ap)
    add_json(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-saga-"))
    server = RedisServer(workdir=work / "redis").start()
    url = server.url_for_db(3)
    procs: list[DaemonProcess] = []
    try:
        agent = testing_agent("noop", work, "--metrics-port", "-1", agent_id="bench-noop")
        procs.append(agent.start())
        with redis.Redis.from_url(url).pipeline() as pipe:
            queue_agent_record(pipe, "bench-noop", endpoint=agent.target)
            pipe.execute()
        coord = daemon("saga", work, "--redis-url", url)
        procs.append(coord.start())
        fig = asyncio.run(bench(args, agent.target, coord.target))
        print(json.dumps(fig, indent=2))
        write_results(Path(__file__).parent / "RESULTS.md", render(fig, args), args)
        emit_figures(figures(fig), args)
    finally:
        for p in procs:
            p.stop()
        server.stop()
        subprocess.call(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
