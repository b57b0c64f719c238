"""Profile the gateway's PublishStream path.

Runs a BusServicer in this process (the real servicer, backend and runtime
interceptor on a grpc.aio server) and drives it with a PublishStream client in
a separate process (so the client's Python work is not in the profile and
does not compete for this process's GIL). Prints the throughput and, with
--profiler, the top functions of the gateway process while the client runs.

Usage:
    python perf/bus/profile_publish.py --backend memory --messages 100000
    python perf/bus/profile_publish.py --backend kafka --bootstrap 127.0.0.1:19092 \
        --profiler cprofile --top 30
    python perf/bus/profile_publish.py --backend kafka --profiler pyinstrument

Bounded: one client run of --messages messages (tens of seconds under cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.runtime.interceptors import RuntimeInterceptor  # noqa: E402


def client_main(target: str, topic: str, n: int, batch: int) -> None:
    """The PublishStream client (separate process): prints msg/s."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_bus import gateway_throughput

    tp = asyncio.run(gateway_throughput(target, topic, n, batch))
    print(f"{tp:.0f}", flush=True)


async def serve_and_drive(a: argparse.Namespace) -> None:
    from agentmesh.server.bus.__main__ import make_backend
    from agentmesh.server.bus.servicer import BusServicer, add_to_server
    from agentmesh.server.bus.settings import BusSettings

    settings = BusSettings(
        backend=a.backend,
        kafka_bootstrap=a.bootstrap if a.backend == "kafka" else "",
        instance_id=uuid.uuid4().hex[:12],
    )
    from agentmesh.runtime.collector import tune_collector

    backend = make_backend(settings)
    servicer = BusServicer(backend, settings)
    tune_collector()  # as the daemon does once started (runtime/server.py)
    server = grpc.aio.server(interceptors=[RuntimeInterceptor(None)])
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await backend.start()
    topic = f"bench.profile.{uuid.uuid4().hex[:8]}"
    if a.backend == "kafka":
        await backend.create_topic(topic, 3)
    prof: Any = None
    if a.profiler == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
    elif a.profiler == "pyinstrument":
        from pyinstrument import Profiler

        prof = Profiler(async_mode="disabled")
        prof.start()
    start = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", f"127.0.0.1:{port}", topic,
        str(a.messages), str(a.batch), stdout=subprocess.PIPE, cwd=ROOT,
    )
    out, _ = await proc.communicate()
    elapsed = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    gw_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    cl_cpu = kids.ru_utime + kids.ru_stime
    if a.profiler == "cprofile":
        prof.disable()
    elif a.profiler == "pyinstrument":
        prof.stop()
    print(f"backend={a.backend} batch={a.batch}: client saw {out.decode().strip()} msg/s "
          f"({elapsed:.1f} s incl. client start; CPU s: gateway {gw_cpu:.1f}, "
          f"client {cl_cpu:.1f})")
    if a.profiler == "cprofile":
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(a.top)
        st.sort_stats("cumulative").print_stats(a.top)
        print(s.getvalue())
    elif a.profiler == "pyinstrument":
        print(prof.output_text(unicode=False, color=False, show_all=False))
    await server.stop(1)
    await backend.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["memory", "kafka"], default="memory")
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--profiler", choices=["none", "cprofile", "pyinstrument"], default="none")
    ap.add_argument("--top", type=int, default=25)
    asyncio.run(serve_and_drive(ap.parse_args()))


if __name__ == "__main__":
    main()
