"""Profile the gateway's Subscribe read-back path.

Runs a BusServicer in this process (real servicer, backend and runtime
interceptor on a grpc.aio server), writes --messages records through it, then
reads them back with a Subscribe client in a separate process (bench_bus's
gateway_consume_rate: new group, earliest, acking each batch) while this
process is profiled. Prints msg/s, gateway CPU per message and, with
--profiler, the top functions.

Usage:
    python perf/bus/profile_subscribe.py --bootstrap 127.0.0.1:19092 \
        --profiler cprofile --top 30

Bounded: one write and one read of --messages records.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.bus.v1 import bus_pb2  # noqa: E402
from agentmesh.common.v1 import common_pb2  # noqa: E402
from agentmesh.runtime.collector import tune_collector  # noqa: E402
from agentmesh.runtime.interceptors import RuntimeInterceptor  # noqa: E402


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of this process, by thread id."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def client_main(target: str, topic: str, n: int, mode: str) -> None:
    """The Subscribe client (separate process): prints msg/s."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_bus import gateway_consume_rate

    print(f"{asyncio.run(gateway_consume_rate(target, topic, n, ack=mode)):.0f}", flush=True)


async def serve_and_drive(a: argparse.Namespace) -> None:
    from agentmesh.server.bus.__main__ import make_backend
    from agentmesh.server.bus.servicer import BusServicer, add_to_server
    from agentmesh.server.bus.settings import BusSettings

    settings = BusSettings(backend="kafka", kafka_bootstrap=a.bootstrap,
                           instance_id=uuid.uuid4().hex[:12])
    backend = make_backend(settings)
    servicer = BusServicer(backend, settings)
    server = grpc.aio.server(interceptors=[RuntimeInterceptor(None)])
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await backend.start()
    topic = f"bench.profsub.{uuid.uuid4().hex[:8]}"
    await backend.create_topic(topic, 3)
    env = bus_pb2.Envelope(topic=topic, payload=common_pb2.Payload(bytes_value=b"x" * 100))
    for _ in range(a.messages // 500):
        out = await servicer.publisher.publish_many([env] * 500, timeout_s=30)
        assert all(not isinstance(r, Exception) for r in out)
    prof: Any = None
    tune_collector()  # as a daemon does once started (agentmesh.runtime.collector)
    if a.profiler == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
    elif a.profiler == "pyinstrument":
        from pyinstrument import Profiler

        prof = Profiler(async_mode="disabled")
        prof.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    threads0 = thread_cpu()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", f"127.0.0.1:{port}", topic,
        str(a.messages // 500 * 500), a.ack, stdout=subprocess.PIPE, cwd=ROOT,
    )
    out_b, _ = await proc.communicate()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    threads1 = thread_cpu()
    if a.profiler == "cprofile":
        prof.disable()
    elif a.profiler == "pyinstrument":
        prof.stop()
    gw_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(f"Subscribe ack={a.ack}: client saw {out_b.decode().strip()} msg/s; gateway CPU "
          f"{gw_cpu * 1e6 / a.messages:.1f} us/msg (incl. client start, under the profiler)")
    by_name: dict[str, float] = {}
    for tid, (name, t) in threads1.items():
        by_name[name] = by_name.get(name, 0.0) + t - threads0.get(tid, (name, 0.0))[1]
    print("gateway CPU us/msg by thread: " + ", ".join(
        f"{k} {v * 1e6 / a.messages:.1f}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])
        if v > 0.01))
    if a.profiler == "cprofile":
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(a.top)
        print(s.getvalue())
    elif a.profiler == "pyinstrument":
        print(prof.output_text(unicode=False, color=False, show_all=False))
    await server.stop(1)
    await backend.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--ack", choices=["ids", "through"], default="ids")
    ap.add_argument("--profiler", choices=["none", "cprofile", "pyinstrument"], default="none")
    ap.add_argument("--top", type=int, default=30)
    asyncio.run(serve_and_drive(ap.parse_args()))


if __name__ == "__main__":
    main()
