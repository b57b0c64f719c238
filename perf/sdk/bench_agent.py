"""Agent SDK benchmark: Execute throughput and latency of an SDK agent against a
bare grpc.aio AgentService measured the same way in the same run.

Configurations (each a separate server process, 16 calls in flight, same client):
  * baseline  — perf/sdk/noop_agent.py: generated servicer, echo, nothing else
  * sdk       — `python -m agentmesh.agent.testing noop`: runtime interceptor,
                handler task, load tracking, no idempotency key
  * sdk+key   — same, every call with a fresh idempotency key (in-memory store)
  * sdk+redis — fresh keys, results stored in Redis (durable dedupe)
  * replay    — the same 1,000 keys again on the Redis agent: answered from the store

Usage: python perf/sdk/bench_agent.py [--seconds 3] [--concurrency 16] [--rounds 2]
Writes perf/sdk/RESULTS.md. Starts its own redis-server on a free port. About 40 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.agent.structs import dict_to_struct  # noqa: E402
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], port_from: str) -> tuple[subprocess.Popen[str], int]:
    """Start a server; its port comes from stdout ("stdout") or the serving log line."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stream = proc.stdout if port_from == "stdout" else proc.stderr
    assert stream is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if port_from == "stdout" and line.strip().isdigit():
            return proc, int(line)
        if line.startswith("{") and json.loads(line).get("msg") == "serving":
            return proc, int(json.loads(line)["port"])
    proc.kill()
    raise RuntimeError(f"{args} did not start")


async def _load(target: str, *, seconds: float, concurrency: int,
                keys: list[str] | None, key_mode: str) -> dict[str, float]:
    """Drive Execute for `seconds`; returns rps and latency percentiles in ms."""
    inp = dict_to_struct({"spend_usd": 123.4, "naics": "325110", "factor": 0.52})
    lat: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds
    counter = 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        await stub.Execute(agent_pb2.ExecuteRequest(action="warm", input=inp), timeout=10)

        async def worker() -> None:
            nonlocal errors, counter
            while time.monotonic() < stop_at:
                counter += 1
                if key_mode == "fresh":
                    key = uuid.uuid4().hex
                elif key_mode == "replay" and keys:
                    key = keys[counter % len(keys)]
                else:
                    key = ""
                req = agent_pb2.ExecuteRequest(action="calc", input=inp, idempotency_key=key,
                                               attempt=1)
                t0 = time.perf_counter()
                try:
                    await stub.Execute(req, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                lat.append((time.perf_counter() - t0) * 1e3)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    lat.sort()
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": lat[len(lat) // 2] if lat else 0.0,
        "p99_ms": lat[int(len(lat) * 0.99)] if lat else 0.0,
        "mean_ms": statistics.fmean(lat) if lat else 0.0,
        "errors": float(errors),
        "calls": float(len(lat)),
    }


async def _prefill(target: str, keys: list[str]) -> None:
    inp = dict_to_struct({"spend_usd": 123.4})
    async with grpc.aio.insecure_channel(target) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for i in range(0, len(keys), 50):
            await asyncio.gather(*(stub.Execute(agent_pb2.ExecuteRequest(
                action="calc", input=inp, idempotency_key=k), timeout=10)
                for k in keys[i:i + 50]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ns = ap.parse_args()

    procs: list[subprocess.Popen[Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-sdk-"))
    redis_port = _free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                             stdout=subprocess.DEVNULL)
    procs.append(redis)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    results: dict[str, dict[str, float]] = {}
    try:
        base, base_port = _start([str(HERE / "noop_agent.py")], "stdout")
        procs.append(base)
        sdk, sdk_port = _start(["-m", "agentmesh.agent.testing", "noop", "--agent-id",
                                "agent-bench-sdk", "--port", "0"], "stderr")
        procs.append(sdk)
        time.sleep(0.5)  # let redis bind before the redis-backed agent probes it
        sdkr, sdkr_port = _start(["-m", "agentmesh.agent.testing", "noop", "--agent-id",
                                  "agent-bench-redis", "--port", "0", "--redis-url", redis_url],
                                 "stderr")
        procs.append(sdkr)
        kw = {"seconds": ns.seconds, "concurrency": ns.concurrency}
        keys = [f"replay-{i}" for i in range(1000)]
        asyncio.run(_prefill(f"127.0.0.1:{sdkr_port}", keys))
        plan: list[tuple[str, str, str, list[str] | None]] = [
            ("baseline", f"127.0.0.1:{base_port}", "none", None),
            ("sdk", f"127.0.0.1:{sdk_port}", "none", None),
            ("sdk+key", f"127.0.0.1:{sdk_port}", "fresh", None),
            ("sdk+redis", f"127.0.0.1:{sdkr_port}", "fresh", None),
            ("replay", f"127.0.0.1:{sdkr_port}", "replay", keys),
        ]
        # Interleaved rounds, best round kept: the machine is shared, and a
        # neighbour's burst should not decide a row.
        for _ in range(ns.rounds):
            for name, target, mode, ks in plan:
                r = asyncio.run(_load(target, keys=ks, key_mode=mode, **kw))
                if name not in results or r["rps"] > results[name]["rps"]:
                    results[name] = r
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    b = results["baseline"]["rps"]
    rows = [
        ("baseline", "bare grpc.aio AgentService (echo)"),
        ("sdk", "Agent SDK, no idempotency key"),
        ("sdk+key", "Agent SDK, fresh key per call, in-memory store"),
        ("sdk+redis", "Agent SDK, fresh key per call, Redis store"),
        ("replay", "Agent SDK, Redis store, every key already completed"),
    ]
    lines = [
        "# Agent SDK benchmark",
        "",
        f"Reproduce: `python perf/sdk/bench_agent.py --seconds {ns.seconds} --concurrency "
        f"{ns.concurrency} --rounds {ns.rounds}` (starts its own redis-server, a bare gRPC "
        "AgentService and two SDK agents on free loopback ports; about 40 s).",
        "",
        f"Machine: {platform.machine()}, 2 CPUs shared with other work; Python "
        f"{platform.python_version()}; client and servers on the same host, "
        f"{ns.concurrency} calls in flight, {ns.seconds:.0f} s per row, best of "
        f"{ns.rounds} interleaved rounds. Figures move by about 20% from run to run.",
        "",
        "| configuration | Execute/s | ratio to baseline | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in rows:
        r = results[key]
        lines.append(f"| {label} | {r['rps']:.0f} | **{r['rps'] / b:.2f}** | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {int(r['errors'])} |")
    lines += [
        "",
        "The ratio is the SDK's cost per call relative to the thinnest possible server",
        "in the same run (runtime interceptor with ids/metrics, handler task shielded",
        "from the caller, Struct round trip of the output, load window; plus one Redis",
        "GET and SET NX per keyed call in the Redis rows).",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
