"""Partition throughput of the swarm engine with 100 worker agents, against
calling the same agents directly in the same run.

Setup (all on loopback, one machine):
* a private redis-server (tests.infra.RedisServer);
* a "fleet" process running 100 lightweight AgentService servers (one
  grpc.aio server per agent, each on its own port, all in ONE process and
  event loop), registered with the registry's Redis key schema;
* the swarm daemon (`python -m agentmesh.server.swarm`) as its own process.

Workloads: each Execute sleeps `work_ms` (0 = pure overhead, 10 = an
I/O-bound agent), then returns a few numbers.

* baseline: this process calls the agents directly, one call in flight per
  agent (100 workers pulling partition indexes from one queue), no
  scheduler, no Redis: the best a naive fan-out does on this machine.
* swarm: DeploySwarm with the same partitions and agents (one in flight per
  agent), wall time from DeploySwarm to the final WatchSwarm message, so it
  includes the foraging scheduler, the fenced exactly-once ledger in Redis,
  snapshots and per-round stats.

Prints partitions/s of both and the ratio swarm / baseline, and appends the
figures to perf/swarm/RESULTS.md.

Usage: python perf/swarm/bench_partitions.py [--agents 100] [--partitions 2000] [--repeat 3]
       [--no-write] [--json PATH]
`--json PATH` writes the figures for perf/run_all.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402
from agentmesh.common.v1 import common_pb2  # noqa: E402
from agentmesh.swarm.v1 import swarm_pb2 as pb  # noqa: E402
from agentmesh.swarm.v1 import swarm_pb2_grpc  # noqa: E402
from perf.common import add_json, emit_figures  # noqa: E402
from perf.table import Figure  # noqa: E402
from tests.infra import RedisServer  # noqa: E402
from tests.procs import DaemonProcess, daemon  # noqa: E402
from tests.registry_records import write_agent_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SCRIPT = str(Path(__file__).resolve())
CAPABILITY = "bench-partition"


# ---- the fleet (runs in its own process) ------------------------------------
class BenchAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent_id: str, work_s: float) -> None:
        self.agent_id = agent_id
        self.work_s = work_s

    async def Execute(self, request: Any, context: Any) -> Any:
        if self.work_s:
            await asyncio.sleep(self.work_s)
        i = request.input.fields["partition_index"].number_value
        out = struct_pb2.Struct()
        out.update({"records": 100.0, "value": i * 0.5})
        return agent_pb2.ExecuteResponse(output=out, agent_id=self.agent_id)


async def run_fleet(redis_url: str, agents: int, work_ms: float) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    servers = []
    ports = []
    for k in range(agents):
        s = grpc.aio.server()
        aid = f"bench-agent-{k:03d}"
        agent_pb2_grpc.add_AgentServiceServicer_to_server(BenchAgent(aid, work_ms / 1000), s)
        port = s.add_insecure_port("127.0.0.1:0")
        await s.start()
        servers.append(s)
        ports.append(port)
        await write_agent_record(
            redis, aid, endpoint=f"127.0.0.1:{port}", location="local", capabilities=[CAPABILITY]
        )
    print(json.dumps({"msg": "serving", "port": ports[0], "ports": ports}), file=sys.stderr,
          flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in servers:
        await s.stop(0)


# ---- the measurements ----------------------------------------------------------
async def baseline(ports: list[int], partitions: int) -> float:
    """Partitions/s calling the agents directly, one in flight per agent."""
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in chans]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(partitions):
        queue.put_nowait(i)
    total = [0.0]

    async def worker(stub: Any) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            inp = struct_pb2.Struct()
            inp.update({"partition_index": i, "partition_count": partitions})
            r = await stub.Execute(
                agent_pb2.ExecuteRequest(action="work", input=inp, idempotency_key=f"b/p{i}"),
                timeout=30,
            )
            total[0] += r.output.fields["records"].number_value

    # Warm the channels up first, as the daemon's pool will be warm after a few calls.
    await asyncio.gather(*(s.Execute(agent_pb2.ExecuteRequest(action="w"), timeout=10)
                           for s in stubs), return_exceptions=True)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in stubs))
    dt = time.perf_counter() - t0
    assert total[0] == 100.0 * partitions
    for c in chans:
        await c.close()
    return partitions / dt


async def swarm_run(target: str, agents: int, partitions: int) -> tuple[float, pb.Swarm]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = swarm_pb2_grpc.SwarmServiceStub(ch)
        task = pb.SwarmTask(
            agents_required=agents,
            data_partitions=partitions,
            partition_work=pb.PartitionWork(
                selector=common_pb2.AgentSelector(capabilities=[CAPABILITY]),
                action="work",
                aggregate_fields=["records", "value"],
            ),
        )
        t0 = time.perf_counter()
        sid = (await stub.DeploySwarm(pb.DeploySwarmRequest(task=task))).swarm.swarm_id
        final = None
        async for m in stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=sid), timeout=170):
            if m.HasField("swarm"):
                final = m.swarm
        dt = time.perf_counter() - t0
        assert final is not None and final.state == pb.SWARM_STATE_COMPLETED, final
        assert final.partitions.totals["records"] == 100.0 * partitions
        return partitions / dt, final


async def measure(ns: argparse.Namespace, redis_url: str, work_ms: float, log_dir: Path) -> dict:
    fleet = DaemonProcess(
        [SCRIPT, "--fleet", "--redis-url", redis_url,
         "--agents", str(ns.agents), "--work-ms", str(work_ms)],
        log_dir / f"fleet-{work_ms}.log",
    )
    fleet.start(timeout_s=120)
    swarmd = daemon("swarm", log_dir, "--redis-url", redis_url, "--record-interval-ms", "200")
    swarmd.start()
    try:
        ports = json.loads(
            [ln for ln in fleet.tail(400).splitlines() if '"ports"' in ln][-1]
        )["ports"]
        # Alternate the two, best of `repeat` each: the CPUs are shared.
        base = 0.0
        rate = 0.0
        for _ in range(ns.repeat):
            base = max(base, await baseline(ports, ns.partitions))
            r, final = await swarm_run(swarmd.target, ns.agents, ns.partitions)
            rate = max(rate, r)
        used = len(final.partitions.partitions_by_agent)
        return {"work_ms": work_ms, "baseline": base, "swarm": rate, "agents_used": used,
                "reassignments": final.partitions.reassignments}
    finally:
        swarmd.stop()
        fleet.stop()


def figures(ns: argparse.Namespace, rows: list[dict]) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py); no goals."""
    return [
        Figure(name=f"swarm: partitions/s, {ns.agents} agents, {r['work_ms']:g} ms work per call",
               value=r["swarm"], unit="/s",
               baseline_name="direct Execute calls, one in flight per agent",
               baseline_value=r["baseline"])
        for r in rows
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--partitions", type=int, default=2000)
    p.add_argument("--work-ms", type=float, nargs="*", default=[0.0, 10.0])
    p.add_argument("--repeat", type=int, default=3, help="runs of each, best kept")
    p.add_argument("--fleet", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    add_json(p)
    ns = p.parse_args()
    if ns.fleet:
        asyncio.run(run_fleet(ns.redis_url, ns.agents, ns.work_ms[0]))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(workdir=Path(tmp) / "redis") as rs:
        for work_ms in ns.work_ms:
            url = rs.url_for_db(4)
            row = asyncio.run(measure(ns, url, work_ms, Path(tmp)))
            rows.append(row)
            ratio = row["swarm"] / row["baseline"]
            print(
                f"work {work_ms:>4.0f} ms: baseline {row['baseline']:8.0f} partitions/s, "
                f"swarm {row['swarm']:8.0f} partitions/s, ratio {ratio:.2f}"
                f" ({row['agents_used']} agents used, {row['reassignments']} reassignments)",
                flush=True,
            )
    if not ns.no_write:
        write(ns, rows)
    emit_figures(figures(ns, rows), ns)


def write(ns: argparse.Namespace, rows: list[dict]) -> None:
    cmd = f"python perf/swarm/bench_partitions.py --agents {ns.agents} --partitions {ns.partitions}"
    lines = [
        "",
        "## Partition throughput (swarm daemon vs direct calls)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.python_implementation()}"
        f" {platform.python_version()}, {os.cpu_count()} CPUs (shared with other work).",
        f"{ns.agents} agents = {ns.agents} grpc.aio servers in ONE separate process;"
        f" {ns.partitions} partitions; one call in flight per agent; swarm daemon and Redis"
        " are separate processes. Swarm time runs from DeploySwarm to the final WatchSwarm"
        f" message. Best of {ns.repeat} alternating runs each.",
        "",
        "| agent work per call | direct calls (partitions/s) | swarm daemon (partitions/s) "
        "| ratio swarm / direct |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['work_ms']:.0f} ms | {r['baseline']:.0f} | {r['swarm']:.0f} | "
            f"{r['swarm'] / r['baseline']:.2f} |"
        )
    lines += ["", f"Reproduce: `{cmd}`", ""]
    # Replace this benchmark's own section, keep everyone else's.
    text = RESULTS.read_text() if RESULTS.exists() else ""
    head = lines[1]
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start].rstrip("\n") + ("\n" + text[nxt:] if nxt >= 0 else "")
    RESULTS.write_text(text.rstrip("\n") + "\n" + "\n".join(lines))
    print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
