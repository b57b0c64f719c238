"""TaskService benchmark: tasks per second end to end, and schedule-to-start latency.

In one run, against a private Redis, one real coordinator process and
`--processes` real no-op agent processes (`python -m agentmesh.agent.testing
noop`) serving `--agents` registered agents between them (an agent id is a
registry record; several share a process so 100 agents fit on 2 cores):
  * baseline: direct AgentService.Execute calls from this client to the agent
    processes, with the same concurrency;
  * tasks: ScheduleTask + WaitTask until the terminal state, closed loop at
    the same concurrency, on a selector that matches all agents
    (LEAST_LOADED): tasks/s scheduled and completed;
  * schedule-to-start: an open loop of ScheduleTask at `--rate` tasks/s; the
    latency is the task's start_time - create_time (both set by the
    coordinator): p50 / p99.

Writes perf/saga/TASKS_RESULTS.md; `--json PATH` writes the figures for
perf/run_all.py.

    python perf/saga/bench_tasks.py [--seconds 10] [--concurrency 64] [--agents 100]
        [--processes 4] [--rate 100] [--no-write] [--json PATH]
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
import time
from pathlib import Path
from typing import Any

import grpc
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402
from agentmesh.task.v1 import task_pb2, task_pb2_grpc  # noqa: E402
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

T = task_pb2
TERMINAL = {T.TASK_STATE_COMPLETED, T.TASK_STATE_FAILED, T.TASK_STATE_TIMEOUT,
            T.TASK_STATE_CANCELLED}


def _request() -> task_pb2.ScheduleTaskRequest:
    r = T.ScheduleTaskRequest(task_type="noop", strategy=T.BALANCE_STRATEGY_LEAST_LOADED)
    r.selector.capabilities.append("bench_task")
    r.payload.update({"x": 1})
    return r


async def bench(args: argparse.Namespace, endpoints: list[str], saga_target: str) -> dict[str, Any]:
    """The three phases; returns the figures."""
    chans = [grpc.aio.insecure_channel(e) for e in endpoints]
    agents = [agent_pb2_grpc.AgentServiceStub(c) for c in chans]
    async with grpc.aio.insecure_channel(saga_target) as sch:
        tasks = task_pb2_grpc.TaskServiceStub(sch)
        seq = 0

        async def direct(i: int) -> None:
            nonlocal seq
            seq += 1
            await agents[i % len(agents)].Execute(agent_pb2.ExecuteRequest(
                action="noop", idempotency_key=f"direct/{seq}", attempt=1))

        req = _request()

        async def one_task(_i: int) -> None:
            t = (await tasks.ScheduleTask(req)).task
            async for r in tasks.WaitTask(T.WaitTaskRequest(task_id=t.task_id)):
                if r.task.state in TERMINAL:
                    if r.task.state != T.TASK_STATE_COMPLETED:
                        raise RuntimeError(f"task ended {T.TaskState.Name(r.task.state)}")
                    return

        await closed_loop(direct, concurrency=8, seconds=1, limit=200)
        await closed_loop(one_task, concurrency=8, seconds=2, limit=100)
        d = await closed_loop(direct, concurrency=args.concurrency, seconds=args.seconds / 2)
        tk = await closed_loop(one_task, concurrency=args.concurrency, seconds=args.seconds)

        # schedule-to-start under an open loop at --rate tasks/s
        ids: list[str] = []
        n = int(args.rate * args.seconds / 2)
        t0 = time.perf_counter()
        pending: list[asyncio.Task[Any]] = []

        async def schedule() -> None:
            ids.append((await tasks.ScheduleTask(req)).task.task_id)

        for i in range(n):
            delay = t0 + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(schedule()))
        await asyncio.gather(*pending)
        waits: list[float] = []
        for tid in ids:
            while True:
                t = (await tasks.GetTask(T.GetTaskRequest(task_id=tid))).task
                if t.state in TERMINAL:
                    break
                await asyncio.sleep(0.05)
            waits.append(float(t.start_time.ToMilliseconds() - t.create_time.ToMilliseconds()))
    for c in chans:
        await c.close()
    return {
        "direct_per_s": len(d.latencies_ms) / d.wall_s,
        "direct_p50_ms": statistics.median(d.latencies_ms),
        "tasks": len(tk.latencies_ms),
        "tasks_per_s": len(tk.latencies_ms) / tk.wall_s,
        "task_p50_ms": statistics.median(tk.latencies_ms),
        "task_p99_ms": percentile(tk.latencies_ms, 0.99),
        "open_loop_tasks": len(waits),
        "start_p50_ms": statistics.median(waits),
        "start_p99_ms": percentile(waits, 0.99),
    }


def figures(fig: dict[str, Any], args: argparse.Namespace) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py)."""
    return [
        Figure(name=f"task: tasks/s end to end, {args.agents} agents "
                    f"({args.concurrency} in flight)",
               value=fig["tasks_per_s"], unit="/s",
               baseline_name="direct Execute calls/s (same concurrency)",
               baseline_value=fig["direct_per_s"], goal=">= 500 /s"),
        Figure(name=f"task: schedule-to-start p99 at {args.rate:g} tasks/s",
               value=fig["start_p99_ms"], unit="ms", better="lower", goal="<= 10 ms"),
        Figure(name=f"task: schedule-to-start p50 at {args.rate:g} tasks/s",
               value=fig["start_p50_ms"], unit="ms", better="lower"),
    ]


def render(fig: dict[str, Any], args: argparse.Namespace) -> str:
    """The text of TASKS_RESULTS.md."""
    return f"""# TaskService benchmark

Reproduce: `python perf/saga/bench_tasks.py --seconds {args.seconds:g} --concurrency \
{args.concurrency} --agents {args.agents} --processes {args.processes} --rate {args.rate:g}`

Setup: one coordinator process, {args.processes} no-op agent processes serving
{args.agents} registered agents, a private `redis-server`, and this client, all
on one machine ({platform.machine()}, {os.cpu_count()} CPUs shared with other
work while measuring), Python {platform.python_version()}. A task is
ScheduleTask + WaitTask until COMPLETED; each task is written to Redis at every
state change (PENDING, SCHEDULED, RUNNING, COMPLETED) under a fenced lease,
with a capacity slot on its agent.

| figure | value |
|---|---|
| tasks/s end to end ({args.concurrency} in flight) | **{fig["tasks_per_s"]:.0f}** (goal >= 500) |
| task duration p50 / p99 (loaded) | {fig["task_p50_ms"]:.1f} ms / {fig["task_p99_ms"]:.1f} ms |
| baseline: direct Execute calls/s (same concurrency) | {fig["direct_per_s"]:.0f} |
| baseline: direct Execute p50 (loaded) | {fig["direct_p50_ms"]:.2f} ms |
| schedule-to-start p50 / p99 at {args.rate:g} tasks/s | {fig["start_p50_ms"]:.1f} ms / \
**{fig["start_p99_ms"]:.1f} ms** (goal p99 < 10) |
| tasks measured (closed / open loop) | {fig["tasks"]} / {fig["open_loop_tasks"]} |
"""


def main() -> None:
    """Start Redis, agents and coordinator; measure; write TASKS_RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--rate", type=float, default=100.0)
    add_no_write(ap)
    add_json(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    server = RedisServer(workdir=work / "redis").start()
    url = server.url_for_db(3)
    procs: list[DaemonProcess] = []
    try:
        endpoints = []
        for i in range(args.processes):
            a = testing_agent("noop", work, "--metrics-port", "-1", agent_id=f"bench-proc-{i}")
            procs.append(a.start())
            endpoints.append(a.target)
        with redis.Redis.from_url(url).pipeline() as pipe:
            for i in range(args.agents):
                queue_agent_record(pipe, f"bench-task-{i:03d}",
                                   endpoint=endpoints[i % len(endpoints)],
                                   capabilities=["bench_task"])
            pipe.execute()
        coord = daemon("saga", work, "--redis-url", url)
        procs.append(coord.start())
        fig = asyncio.run(bench(args, endpoints, coord.target))
        print(json.dumps(fig, indent=2))
        write_results(Path(__file__).parent / "TASKS_RESULTS.md", render(fig, args), args)
        emit_figures(figures(fig, args), args)
    finally:
        for p in procs:
            p.stop()
        server.stop()
        subprocess.call(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
