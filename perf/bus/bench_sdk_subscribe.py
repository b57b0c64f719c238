"""SDK bus benchmark: messages/s through an agent's `@agent.on_message` handler
(a no-op) against the bus benchmark's raw Subscribe client, in the same run.

One gateway process (Kafka backend, or memory with --backend memory); the
same --messages (default 20,000) 100-byte messages are written to two
topics with PublishStream, then read back from the earliest offset in new
consumer groups:

  * baseline: `perf/bus/bench_bus.py`'s raw Subscribe client (one stream,
    max_unacked 5000, acking every ack id per batch);
  * SDK: an `agentmesh.agent.Agent` with one `@agent.on_message` no-op
    handler (the SDK's defaults: a window of 100 unacked, one task per
    message, the dedupe claim, an ack per handled message batched per
    event-loop turn), and again with `max_concurrency=1000` (window 1000).

Each rate is timed from the first message to the last. Both clients run
in this process, one after the other, so they get the same CPU.

Usage:
    python perf/bus/bench_sdk_subscribe.py [--bootstrap HOST:PORT]
        [--messages 20000] [--backend kafka|memory] [--json PATH] [--no-write]

Without --bootstrap (and with the Kafka backend) it starts a private broker.
Bounded: each read gives up after 120 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.agent import Agent  # noqa: E402
from perf.bus.bench_bus import (  # noqa: E402
    create_topic,
    gateway_consume_rate,
    gateway_throughput,
    run_gateway,
)
from perf.common import add_json, emit_figures  # noqa: E402
from perf.table import Figure  # noqa: E402
from tests.infra import KafkaBroker  # noqa: E402


async def sdk_consume_rate(target: str, topic: str, n: int, *, max_concurrency: int) -> float:
    """msg/s through a no-op `on_message` handler, first to n-th message."""
    times: list[float] = []
    agent = Agent(f"agent-bench-{uuid.uuid4().hex[:8]}",
                  agent_type=f"bench-{uuid.uuid4().hex[:8]}", bus_target=target,
                  max_concurrency=max_concurrency, grace_period_s=1.0)
    done = asyncio.Event()

    @agent.on_message(topic)
    async def noop(payload: Any, ctx: Any) -> None:
        times.append(time.perf_counter())
        if len(times) >= n:
            done.set()

    await agent.start()
    try:
        await asyncio.wait_for(done.wait(), 120)
    except TimeoutError:
        raise RuntimeError(f"the agent handled {len(times)}/{n} messages in 120 s") from None
    finally:
        await agent.stop()
    return (n - 1) / (times[n - 1] - times[0])


def measure(a: argparse.Namespace, bootstrap: str) -> dict[str, float]:
    """The three rates, msg/s."""
    logs = Path("/tmp") / f"bench-sdk-bus-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:8]
    proc: Any = run_gateway(a.backend, bootstrap, logs)
    try:
        topics = {k: f"bench.sdk{k}.{run}" for k in ("raw", "sdk", "wide")}
        for t in topics.values():
            if a.backend == "kafka":
                create_topic(bootstrap, t, 3)
            asyncio.run(gateway_throughput(proc.target, t, a.messages, 500))
        rows = {
            "raw": asyncio.run(gateway_consume_rate(proc.target, topics["raw"], a.messages)),
            "sdk": asyncio.run(sdk_consume_rate(proc.target, topics["sdk"], a.messages,
                                                max_concurrency=0)),
            "wide": asyncio.run(sdk_consume_rate(proc.target, topics["wide"], a.messages,
                                                 max_concurrency=1000)),
        }
    finally:
        proc.stop()
    print(f"{a.backend}: raw Subscribe {rows['raw']:,.0f} msg/s; SDK on_message "
          f"{rows['sdk']:,.0f} msg/s (ratio {rows['sdk'] / rows['raw']:.2f}); with "
          f"max_concurrency=1000 {rows['wide']:,.0f} msg/s "
          f"(ratio {rows['wide'] / rows['raw']:.2f})", flush=True)
    return rows


def figures(a: argparse.Namespace, rows: dict[str, float]) -> list[Figure]:
    """The figures of one run."""
    base = f"raw Subscribe client of bench_bus ({a.backend}), same gateway"
    return [
        Figure(name=f"bus: SDK on_message msg/s, no-op handler ({a.backend})",
               value=rows["sdk"], unit="msg/s", baseline_name=base,
               baseline_value=rows["raw"]),
        Figure(name=f"bus: SDK on_message msg/s, max_concurrency 1000 ({a.backend})",
               value=rows["wide"], unit="msg/s", baseline_name=base,
               baseline_value=rows["raw"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=None,
                    help="Kafka to use; default: start a private broker on free ports")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--backend", choices=["kafka", "memory"], default="kafka")
    ap.add_argument("--no-write", action="store_true",
                    help="accepted for perf/run_all.py; this bench writes no RESULTS file")
    add_json(ap)
    a = ap.parse_args()
    with ExitStack() as stack:
        bootstrap = a.bootstrap or ""
        if a.backend == "kafka" and not bootstrap:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sdkbus-")))
            print("starting a private Kafka broker ...", flush=True)
            bootstrap = stack.enter_context(KafkaBroker(workdir=work / "kafka")).bootstrap
        rows = measure(a, bootstrap)
    emit_figures(figures(a, rows), a)


if __name__ == "__main__":
    main()
