"""Router benchmark, each figure beside a baseline measured in the same run.

Against a private redis-server and real processes (router daemon, a no-op
RouterService, an echo agent), it measures:
  * Route RPC/s and sequential p50/p99 of the router vs a no-op gRPC server
    answering Route with an empty response (ratio; goal >= 0.8);
  * batched (RouteBatch) and streamed (RouteStream) decisions per second
    (goal >= 50,000 routes/s), RouteBatch beside the no-op server answering
    each batch with as many fixed one-target decisions;
  * the in-process decision rate of each strategy over a pool of 1,000
    targets (RouteEngine.decide, the servicer's code path without gRPC);
  * Invoke's added latency: Router.Invoke vs calling the agent's Execute
    directly, sequential p50/p99 (goal <= 1.5 ms at p50).

Usage: python perf/router/bench_router.py [--seconds 4] [--skip-in-process]
       [--no-write] [--json PATH]
Writes perf/router/RESULTS.md; `--json` writes the figures for perf/run_all.py.
Needs `redis-server` on PATH. Bounded to about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402
from agentmesh.common.v1 import common_pb2  # noqa: E402
from agentmesh.router.v1 import router_pb2 as R  # noqa: E402
from agentmesh.router.v1 import router_pb2_grpc  # noqa: E402
from agentmesh.runtime.routing.engine import RouteEngine  # noqa: E402
from agentmesh.server.router.settings import RouterSettings  # noqa: E402
from perf.common import (  # noqa: E402
    NOOP_SERVERS,
    add_json,
    add_no_write,
    closed_loop,
    emit_figures,
    percentile,
    sequential_ms,
    write_results,
)
from perf.table import Figure  # noqa: E402
from tests.infra import RedisServer  # noqa: E402
from tests.procs import DaemonProcess  # noqa: E402
from tests.registry_records import queue_agent_record, write_agent_record  # noqa: E402

HERE = Path(__file__).resolve().parent
CAP = "bench"
BIG_CAP = "bench-1000"


async def _register_many(r: aioredis.Redis, n: int, cap: str) -> None:
    async with r.pipeline(transaction=False) as p:
        for i in range(n):
            aid = f"{cap}-{i:04d}"
            queue_agent_record(
                p,
                aid,
                endpoint=f"10.1.{i // 250}.{i % 250}:50100",
                health=0.5 + (i % 50) / 100,
                capabilities=[cap],
                load={"queue_size": i % 7, "capacity": 8, "processing_time_ms": 10 + i % 90},
            )
        await p.execute()


def _route_req(i: int) -> R.RouteRequest:
    return R.RouteRequest(
        message=R.RouteMessage(message_type=CAP, routing_key=f"k{i % 1000}"),
        strategy=R.STRATEGY_LEAST_LOADED,
    )


async def _rps(target: str, *, seconds: float, concurrency: int) -> float:
    reqs = [_route_req(i) for i in range(1000)]
    async with grpc.aio.insecure_channel(target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        for q in reqs[:50]:
            await stub.Route(q)  # warm (also loads the router's pool and cache)
        res = await closed_loop(
            lambda i: stub.Route(reqs[i % len(reqs)]), concurrency=concurrency, seconds=seconds
        )
        return res.rate


async def _latency(target: str, n: int) -> list[float]:
    reqs = [_route_req(i) for i in range(1000)]
    async with grpc.aio.insecure_channel(target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        for q in reqs[:50]:
            await stub.Route(q)
        return await sequential_ms(lambda i: stub.Route(reqs[i % len(reqs)]), n)


async def _batched(target: str, *, seconds: float, batch: int, strategy: int) -> float:
    reqs = [
        R.RouteRequest(
            message=R.RouteMessage(message_type=CAP, routing_key=f"k{i}"),
            strategy=strategy,  # type: ignore[arg-type]
        )
        for i in range(batch)
    ]
    body = R.RouteBatchRequest(requests=reqs)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        resp = await stub.RouteBatch(body)
        assert len(resp.results) == batch
        assert all(r.WhichOneof("result") == "decision" for r in resp.results)
        done = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.RouteBatch(body)
                done += batch

        t0 = time.perf_counter()
        await asyncio.gather(worker(), worker())
        return done / (time.perf_counter() - t0)


async def _streamed(target: str, *, seconds: float, window: int) -> float:
    reqs = [R.RouteStreamRequest(request_id=str(i), request=_route_req(i)) for i in range(1000)]
    async with grpc.aio.insecure_channel(target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        call = stub.RouteStream()
        sent = got = 0
        stop_at = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def reader() -> None:
            nonlocal got
            async for _ in call:
                got += 1

        rd = asyncio.create_task(reader())
        while time.perf_counter() < stop_at:
            if sent - got < window:
                await call.write(reqs[sent % len(reqs)])
                sent += 1
            else:
                await asyncio.sleep(0)
        await call.done_writing()
        await rd
        return got / (time.perf_counter() - t0)


async def _in_process(url: str, *, seconds: float) -> dict[str, float]:
    r = aioredis.Redis.from_url(url)
    engine = RouteEngine(r, RouterSettings(state_ttl_ms=60_000), seed=1)
    await engine.rules.create_route_rule(
        R.RouteRule(
            name="bench-content",
            priority=1,
            condition='message.metadata.kind == "content"',
            selector=common_pb2.AgentSelector(capabilities=[BIG_CAP]),
            strategy=R.STRATEGY_CONTENT_BASED,
        )
    )
    out: dict[str, float] = {}
    per = seconds / 10
    for name in R.Strategy.keys()[1:]:
        strategy = R.Strategy.Value(name)
        md = {"kind": "content"} if strategy == R.STRATEGY_CONTENT_BASED else {}
        msgs = [
            R.RouteRequest(
                message=R.RouteMessage(
                    message_type=BIG_CAP,
                    routing_key=f"k{i}",
                    affinity_key=f"u{i % 500}",
                    priority=common_pb2.PRIORITY_CRITICAL if i % 2 else common_pb2.PRIORITY_LOW,
                    metadata=md,
                ),
                strategy=0 if strategy == R.STRATEGY_CONTENT_BASED else strategy,  # type: ignore[arg-type]
            )
            for i in range(1000)
        ]
        for m in msgs:
            await engine.decide(m)  # warm: pool, ring, cache
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < per:
            for m in msgs[:100]:
                await engine.decide(m)
            n += 100
        out[name.removeprefix("STRATEGY_")] = n / (time.perf_counter() - t0)
    await engine.rules.delete_route_rule("bench-content")
    await r.aclose()
    return out


async def _invoke_latency(
    router: str, agent: str, agent_id: str, n: int
) -> tuple[list[float], list[float]]:
    msg = R.RouteMessage(target_ids=[agent_id])
    msg.payload.struct_value.update({"x": 1})
    inv = R.InvokeRequest(message=msg, action="echo")
    ex = agent_pb2.ExecuteRequest(action="echo", input=msg.payload.struct_value)
    async with grpc.aio.insecure_channel(router) as rch, grpc.aio.insecure_channel(agent) as ach:
        rs, ags = router_pb2_grpc.RouterServiceStub(rch), agent_pb2_grpc.AgentServiceStub(ach)
        for _ in range(100):
            await rs.Invoke(inv, timeout=5)
            await ags.Execute(ex, timeout=5)
        direct, via = [], []
        for _ in range(n):  # interleaved, so load drifts hit both equally
            t = time.perf_counter()
            await ags.Execute(ex, timeout=5)
            direct.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await rs.Invoke(inv, timeout=5)
            via.append((time.perf_counter() - t) * 1000)
        return direct, via


async def _seed(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    await _register_many(r, 8, CAP)
    await _register_many(r, 1000, BIG_CAP)
    await r.aclose()


async def _register_echo(url: str, agent_id: str, endpoint: str, cap: str) -> None:
    """Register the echo agent (perf/noop_servers.py agent) in the registry's key schema."""
    r = aioredis.Redis.from_url(url)
    await write_agent_record(r, agent_id, endpoint=endpoint, capabilities=[cap])
    await r.aclose()


async def measure(
    seconds: float,
    url: str,
    noop: DaemonProcess,
    agent: DaemonProcess,
    router: DaemonProcess,
    *,
    in_process: bool = True,
) -> dict[str, Any]:
    """Every measurement, against processes already running."""
    res: dict[str, Any] = {}
    print("Route RPC/s ...", flush=True)
    # interleaved rounds, so load from other work on the machine hits both alike
    await _rps(noop.target, seconds=1, concurrency=16)  # warm both; discarded
    await _rps(router.target, seconds=1, concurrency=16)
    noop_r, router_r = [], []
    for _ in range(3):
        noop_r.append(await _rps(noop.target, seconds=seconds / 3, concurrency=16))
        router_r.append(await _rps(router.target, seconds=seconds / 3, concurrency=16))
    res["noop_rps"], res["router_rps"] = sum(noop_r) / 3, sum(router_r) / 3
    res["ratios"] = [b / a for a, b in zip(noop_r, router_r, strict=True)]
    res["load"] = os.getloadavg()[0]
    lat_noop = await _latency(noop.target, 1500)
    lat_router = await _latency(router.target, 1500)
    res["noop_p50"], res["noop_p99"] = percentile(lat_noop, 0.5), percentile(lat_noop, 0.99)
    res["router_p50"] = percentile(lat_router, 0.5)
    res["router_p99"] = percentile(lat_router, 0.99)
    print("batched and streamed decisions ...", flush=True)
    res["batch_noop"] = await _batched(
        noop.target, seconds=seconds, batch=1000, strategy=R.STRATEGY_LEAST_LOADED
    )
    res["batch_ll"] = await _batched(
        router.target, seconds=seconds, batch=1000, strategy=R.STRATEGY_LEAST_LOADED
    )
    res["batch_ch"] = await _batched(
        router.target, seconds=seconds, batch=1000, strategy=R.STRATEGY_CONSISTENT_HASH
    )
    res["stream"] = await _streamed(router.target, seconds=seconds, window=256)
    if in_process:
        print("in-process decisions over 1,000 targets ...", flush=True)
        res["in_process"] = await _in_process(url, seconds=seconds * 3)
    else:
        res["in_process"] = {}
    print("Invoke added latency ...", flush=True)
    direct, via = await _invoke_latency(router.target, agent.target, "echo-1", 1500)
    res["direct_p50"], res["direct_p99"] = percentile(direct, 0.5), percentile(direct, 0.99)
    res["invoke_p50"], res["invoke_p99"] = percentile(via, 0.5), percentile(via, 0.99)
    return res


def bench(seconds: float, *, in_process: bool = True) -> dict[str, Any]:
    """Start a private Redis and the processes, measure, stop everything."""
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    redis_server = RedisServer(workdir=workdir / "redis").start()
    procs: list[DaemonProcess] = []

    def start(*args: str) -> DaemonProcess:
        p = DaemonProcess(list(args), workdir / f"proc-{len(procs)}.log")
        procs.append(p)
        return p.start(timeout_s=60)

    try:
        url = redis_server.url_for_db(0)
        asyncio.run(_seed(url))
        noop = start(str(NOOP_SERVERS), "router")
        agent = start(str(NOOP_SERVERS), "agent", "echo-1")
        asyncio.run(_register_echo(url, "echo-1", agent.target, "echo"))
        router = start(
            "-m", "agentmesh.server.router", "--port", "0", "--metrics-port", "0",
            "--redis-url", url,
        )
        return asyncio.run(measure(seconds, url, noop, agent, router, in_process=in_process))
    finally:
        for p in reversed(procs):
            p.stop(timeout_s=15)
        redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def report(res: dict[str, Any], seconds: float) -> str:
    ratio = sorted(res["ratios"])[1]  # median of the interleaved rounds
    added = res["invoke_p50"] - res["direct_p50"]
    lines = [
        "# Router benchmark",
        "",
        f"Reproduce: `python perf/router/bench_router.py --seconds {seconds:g}` "
        f"(private redis-server; {os.cpu_count()} CPUs shared with other work; "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}; "
        f"1-min load average {res['load']:.1f} during the run).",
        "Clients are Python grpc.aio in the same process as the harness, so both the",
        "router and its baseline are measured through the same (slow) client.",
        "",
        "## Route RPC vs a no-op gRPC server",
        "",
        "| server | RPC/s (16 in flight) | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| no-op RouterService (plain grpc.aio) | {res['noop_rps']:,.0f} | "
        f"{res['noop_p50']:.3f} | {res['noop_p99']:.3f} |",
        f"| router daemon (LEAST_LOADED, 8 targets) | {res['router_rps']:,.0f} | "
        f"{res['router_p50']:.3f} | {res['router_p99']:.3f} |",
        "",
        f"Ratio router / no-op, median of 3 interleaved rounds: **{ratio:.2f}** "
        f"(goal >= 0.8); rounds: " + ", ".join(f"{x:.2f}" for x in res["ratios"]) + ".",
        "",
        "## Batched and streamed decisions",
        "",
        "| form | routes/s |",
        "|---|---|",
        f"| RouteBatch, 1,000 per call, no-op server (fixed decisions) | "
        f"{res['batch_noop']:,.0f} |",
        f"| RouteBatch, 1,000 per call, LEAST_LOADED (cache hits) | {res['batch_ll']:,.0f} |",
        f"| RouteBatch, 1,000 per call, CONSISTENT_HASH (1,000 keys) | {res['batch_ch']:,.0f} |",
        f"| RouteStream, 256 in flight | {res['stream']:,.0f} |",
        "",
        "Goal: >= 50,000 routes/s.",
        "",
        "## In-process decision rate, pool of 1,000 targets",
        "",
        "`RouteEngine.decide` (rule match via the route cache, eligibility, strategy),",
        "no gRPC. AFFINITY makes one Redis round trip per decision (the binding is",
        "shared by replicas); CONTENT_BASED matches a CEL rule (cached per message).",
        "",
        "| strategy | decisions/s |",
        "|---|---|",
        *[f"| {k} | {v:,.0f} |" for k, v in res["in_process"].items()],
        *([] if res["in_process"] else ["| (skipped: --skip-in-process) | |"]),
        "",
        "## Invoke added latency",
        "",
        "| path | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| agent Execute, direct | {res['direct_p50']:.3f} | {res['direct_p99']:.3f} |",
        f"| Router.Invoke -> agent Execute | {res['invoke_p50']:.3f} | {res['invoke_p99']:.3f} |",
        "",
        f"Added at p50: **{added:.3f} ms** (goal <= 1.5 ms).",
        "",
    ]
    return "\n".join(lines)


def figures(res: dict[str, Any]) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py)."""
    return [
        Figure(
            name="router: Route RPC/s (16 in flight)",
            value=res["router_rps"], unit="RPC/s",
            baseline_name="no-op grpc.aio RouterService", baseline_value=res["noop_rps"],
            goal=">= 0.8x",
        ),
        Figure(
            name="router: RouteBatch decisions/s (1,000 per call)",
            value=res["batch_ll"], unit="/s",
            baseline_name="no-op grpc.aio RouteBatch (fixed one-target decisions)",
            baseline_value=res["batch_noop"], goal=">= 50,000 /s",
        ),
        Figure(
            name="router: Invoke p50 (route + call agent)",
            value=res["invoke_p50"], unit="ms",
            baseline_name="direct AgentService Execute p50", baseline_value=res["direct_p50"],
            better="lower", goal="<= +1.5 ms",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement")
    ap.add_argument("--skip-in-process", action="store_true",
                    help="leave out the in-process decision rate per strategy (no goal)")
    add_no_write(ap)
    add_json(ap)
    ns = ap.parse_args()
    t0 = time.monotonic()
    res = bench(ns.seconds, in_process=not ns.skip_in_process)
    write_results(HERE / "RESULTS.md", report(res, ns.seconds), ns)
    emit_figures(figures(res), ns)
    print(f"(took {time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
