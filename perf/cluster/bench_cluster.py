"""Scale-out benchmark: Redis Cluster against a single Redis, 1 against 2
daemon replicas, in the same run.

In one run, against a private single `redis-server` and a private 3-master,
3-replica Redis Cluster (deploy/local/redis.sh cluster; neither persists, so
they compare like with like), for each backend and each replica count (1, 2):

  * registry: DiscoverAgents over --agents agents (written straight into the
    catalog), discovery cache off so every call reads Redis (SINTER/SUNION in
    the catalog's slot), through `agentmesh.Client` with the replicas as one
    balanced target (`host:port,host:port`, round_robin): RPC/s and p99;
  * saga: `Client.run_saga` of three-step sagas on one no-op SDK agent, the
    coordinator replicas behind one balanced target: sagas/s and p99;
  * the CPU seconds of each replica process over each phase (psutil,
    user+system), per call, and its share of the phase's wall time (cores).

Cells run backend by backend (all daemons are restarted per cell); each phase
is closed loop for --seconds at --concurrency. This machine has 2 cores shared
by the benchmark client, Redis and the daemons, so two replicas cannot add
throughput here; the per-replica CPU per call is the figure that carries
over (a replica's capacity is 1 core / its CPU per call). Noisy machine:
compare ratios within one run.

    python perf/cluster/bench_cluster.py [--seconds 3] [--agents 2000] [--concurrency 16]
        [--no-write] [--json PATH]

Writes perf/cluster/RESULTS.md; `--json` writes the figures for perf/run_all.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.client import Client  # noqa: E402
from agentmesh.common.v1 import common_pb2  # noqa: E402
from agentmesh.registry.v1 import registry_pb2  # noqa: E402
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
from tests.infra import RedisClusterServer, RedisServer  # noqa: E402
from tests.procs import DaemonProcess, daemon, testing_agent  # noqa: E402
from tests.registry_records import queue_agent_record  # noqa: E402

HERE = Path(__file__).resolve().parent
CAPS = [f"cap{i}" for i in range(20)]
BACKENDS = ("single", "cluster")
REPLICAS = (1, 2)
AGENT_ID = "bench-noop"


@dataclass
class Phase:
    """One closed-loop phase: rate, p99 and each replica's CPU."""

    rate: float
    p99_ms: float
    errors: int
    cpu_s: list[float]
    wall_s: float

    @property
    def cpu_ms_per_op(self) -> float:
        """All replicas' CPU per completed call, ms."""
        n = self.rate * self.wall_s
        return 1000 * sum(self.cpu_s) / n if n else 0.0

    def cores(self) -> list[float]:
        """Each replica's CPU over the phase's wall time (1.0 = one core busy)."""
        return [c / self.wall_s if self.wall_s else 0.0 for c in self.cpu_s]


def _cpu(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        out.append(t.user + t.system)
    return out


async def _phase(call: Any, pids: list[int], *, seconds: float, concurrency: int) -> Phase:
    await closed_loop(call, concurrency=concurrency, seconds=min(1.0, seconds / 3))  # warm-up
    c0 = _cpu(pids)
    r = await closed_loop(call, concurrency=concurrency, seconds=seconds)
    c1 = _cpu(pids)
    return Phase(
        rate=r.rate,
        p99_ms=percentile(r.latencies_ms, 0.99) if r.latencies_ms else 0.0,
        errors=r.errors,
        cpu_s=[b - a for a, b in zip(c0, c1, strict=True)],
        wall_s=r.wall_s,
    )


def _seed(client: Any, agents: int, agent_target: str) -> None:
    """The catalog: `agents` records with 3 of CAPS each, and the no-op agent."""
    rnd = random.Random(7)
    for start in range(0, agents, 500):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(agents, start + 500)):
                queue_agent_record(pipe, f"a{i:06d}", endpoint=f"127.0.0.1:{20000 + i % 1000}",
                                   capabilities=rnd.sample(CAPS, 3))
            pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        queue_agent_record(pipe, AGENT_ID, endpoint=agent_target)
        pipe.execute()


async def _cell(args: argparse.Namespace, flags: list[str], replicas: int, work: Path,
                ) -> dict[str, Phase]:
    """Start `replicas` registries and coordinators on one backend, measure both."""
    procs: list[DaemonProcess] = []
    try:
        regs = [daemon("registry", work, *flags, "--discovery-cache-ttl-ms", "0").start()
                for _ in range(replicas)]
        procs += regs
        sagas = [daemon("saga", work, *flags).start() for _ in range(replicas)]
        procs += sagas
        rnd = random.Random(11)
        queries = [
            registry_pb2.DiscoverAgentsRequest(
                selector=common_pb2.AgentSelector(capabilities=rnd.sample(CAPS, 2)),
                max_results=10,
            )
            for _ in range(64)
        ]
        steps = [
            saga_pb2.Step(name=f"s{i}", agent_id=AGENT_ID, action=f"step{i}",
                          compensation_action=f"undo{i}",
                          depends_on=[f"s{i - 1}"] if i else [])
            for i in range(3)
        ]
        defn = saga_pb2.SagaDefinition(name="bench_cluster", steps=steps)
        async with Client(registry=",".join(p.target for p in regs),
                          saga=",".join(p.target for p in sagas)) as client:

            async def discover(i: int) -> None:
                await client.discover_agents(queries[i % len(queries)], timeout_s=10)

            async def saga(_i: int) -> None:
                await client.run_saga(defn, timeout_s=30)

            reg = await _phase(discover, [p.pid for p in regs], seconds=args.seconds,
                               concurrency=args.concurrency)
            sg = await _phase(saga, [p.pid for p in sagas], seconds=args.seconds,
                              concurrency=args.concurrency)
        return {"registry": reg, "saga": sg}
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop()


async def _run(args: argparse.Namespace, work: Path) -> dict[tuple[str, int], dict[str, Phase]]:
    single = RedisServer(workdir=work / "redis").start()
    cluster = RedisClusterServer(workdir=work / "redis-cluster").start()
    agent = testing_agent("noop", work, "--metrics-port", "-1", agent_id=AGENT_ID).start()
    out: dict[tuple[str, int], dict[str, Phase]] = {}
    try:
        backends: dict[str, tuple[list[str], Any]] = {
            "single": (["--redis-url", single.url],
                       lambda: redis.Redis.from_url(single.url)),
            "cluster": (["--redis-url", cluster.url, "--redis-cluster", cluster.nodes],
                        lambda: redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])),
        }
        for name in BACKENDS:
            flags, connect = backends[name]
            for replicas in REPLICAS:
                if name == "single":
                    redis.Redis.from_url(single.url).flushall()
                else:
                    cluster.flush_all()
                client = connect()
                try:
                    _seed(client, args.agents, agent.target)
                finally:
                    client.close()
                print(f"cell {name} x{replicas}", flush=True)
                out[(name, replicas)] = await _cell(args, flags, replicas, work)
    finally:
        agent.stop()
        cluster.stop()
        single.stop()
    return out


def figures(cells: dict[tuple[str, int], dict[str, Phase]], agents: int) -> list[Figure]:
    """Redis Cluster against single Redis (1 replica) and 2 against 1 replica (cluster)."""
    out = []
    for area, what, unit in (("registry", f"DiscoverAgents RPC/s, cache off, {agents:,} agents",
                              "RPC/s"),
                             ("saga", "three-step sagas/s", "sagas/s")):
        out.append(Figure(
            name=f"cluster: {area} {what}, Redis Cluster (1 replica)",
            value=cells[("cluster", 1)][area].rate, unit=unit,
            baseline_name="same on a single Redis", baseline_value=cells[("single", 1)][area].rate,
        ))
        out.append(Figure(
            name=f"cluster: {area} {what}, 2 replicas on Redis Cluster",
            value=cells[("cluster", 2)][area].rate, unit=unit,
            baseline_name="1 replica on Redis Cluster",
            baseline_value=cells[("cluster", 1)][area].rate,
        ))
        out.append(Figure(
            name=f"cluster: {area} replica CPU per call, Redis Cluster (1 replica)",
            value=cells[("cluster", 1)][area].cpu_ms_per_op, unit="ms", better="lower",
            baseline_name="same on a single Redis",
            baseline_value=cells[("single", 1)][area].cpu_ms_per_op,
        ))
    return out


def _report(cells: dict[tuple[str, int], dict[str, Phase]], args: argparse.Namespace) -> str:
    lines = [
        "# Scale-out: Redis Cluster against single Redis, 1 against 2 replicas",
        "",
        f"`python perf/cluster/bench_cluster.py --seconds {args.seconds} --agents {args.agents} "
        f"--concurrency {args.concurrency}` on {psutil.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}. "
        "One run; the machine is shared and noisy, so read the ratios within the run.",
        "",
        "Setup: a private single `redis-server` and a 3-master, 3-replica Redis Cluster "
        "(`deploy/local/redis.sh cluster`), neither persisting; per cell, N registry "
        "replicas (discovery cache off: every DiscoverAgents reads Redis) and N saga "
        "coordinators, reached through `agentmesh.Client` with the replicas as one "
        "balanced target (`round_robin`); one no-op SDK agent for the saga steps. "
        f"Closed loop at {args.concurrency} in flight for {args.seconds} s per phase "
        "after a warm-up.",
        "",
        "| backend | replicas | DiscoverAgents RPC/s | p99 ms | registry CPU ms/call | "
        "registry cores per replica | sagas/s | p99 ms | saga CPU ms/saga | "
        "saga cores per replica | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, n), c in cells.items():
        r, s = c["registry"], c["saga"]
        lines.append(
            f"| {name} | {n} | {r.rate:.0f} | {r.p99_ms:.1f} | {r.cpu_ms_per_op:.2f} | "
            f"{' / '.join(f'{x:.2f}' for x in r.cores())} | {s.rate:.0f} | {s.p99_ms:.0f} | "
            f"{s.cpu_ms_per_op:.2f} | {' / '.join(f'{x:.2f}' for x in s.cores())} | "
            f"{r.errors + s.errors} |"
        )
    lines += [
        "",
        "Reading it: the registry's catalog and the saga store are each one Redis "
        "Cluster slot (see their READMEs), so a cluster adds a slot lookup in the "
        "client and failover, not parallelism inside one daemon's keyspace; the "
        "figure that transfers to a bigger machine is the CPU per call of a replica "
        "(a replica saturates at about 1000 / that many calls per second of one "
        "core), and the round-robin split of the calls over two replicas (the cores "
        "column). On 2 shared cores a second replica competes with the first, the "
        "client and Redis for the same CPU, so its throughput figure here is a floor.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="closed-loop time per phase")
    ap.add_argument("--agents", type=int, default=2000, help="catalog size")
    ap.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    add_no_write(ap)
    add_json(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    cells = asyncio.run(_run(args, work))
    write_results(HERE / "RESULTS.md", _report(cells, args), args)
    emit_figures(figures(cells, args.agents), args)


if __name__ == "__main__":
    main()
