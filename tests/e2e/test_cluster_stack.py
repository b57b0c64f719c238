"""The mesh on the cluster stack under failures (issue 21's "Must show").

The stack is what `make up CLUSTER=1` starts (agentmesh.cli.cluster, on free
loopback ports): a 3-master, 3-replica Redis Cluster, three Kafka brokers and
two replicas of every daemon, each replica given its peers as the list of
their replicas (gRPC round_robin with health checks). On it, at once:

  * the demo's Scope 3 scenario at reduced size: 10,000 suppliers drawn from
    the seed, 20 calculator agents (the demo's fleet, two worker processes)
    and the foraging swarm over 100 partitions;
  * 50 three-step sagas on a counting agent (agentmesh.agent.testing
    counting), which records in its own Redis how often each idempotency key
    took effect;
  * 1,000 bus messages published through the bus replicas (each with its own
    id; a failed publish is retried with the same id until acked);
  * a lock taken and released over and over, its fencing tokens recorded.

While they run, the test SIGKILLs replica 0 of each of the five daemons, fails
over the Redis master that holds the saga store's slot (and the lock's) with
CLUSTER FAILOVER on its replica, and SIGKILLs one Kafka broker. Afterwards:

  * the swarm's total equals the direct computation from suppliers.csv (csv
    module and math.fsum, not the demo's code) to 1e-9 relative;
  * every saga is COMPLETED and each of its steps took effect exactly once at
    the agent (3 keys per saga, each counted 1);
  * every acked message is in the topic, read with a plain Kafka consumer
    (the gateway's am-id header), and the topic has replication factor 3 and
    min.insync.replicas 2;
  * the lock's fencing tokens only increased;
  * and the failures did happen: the killed PIDs are gone, the old master is a
    replica, the broker is dead.

Bounded: every loop has a count and a deadline; the whole test has a pytest
timeout. The figures (durations, counts, retries) are printed and kept in
`<tmp>/cluster-e2e.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import json
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from agentmesh.cli import cluster
from agentmesh.cli.stack import free_port_block, is_our_daemon, pid_alive
from agentmesh.client import Client
from agentmesh.demo import scenario as sc
from agentmesh.demo.data import generate_suppliers, load_factors, write_suppliers
from agentmesh.demo.fleet import WorkerProcess, stop_all, wait_all_ready, worker_plan
from agentmesh.registry.v1 import coordination_pb2
from agentmesh.runtime import errors
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2
from tests.procs import AgentProcess, testing_agent

ROOT = Path(__file__).resolve().parents[2]
FACTORS = (
    ROOT / "libs/agentmesh/demo/data" / "SupplyChainGHGEmissionFactors_v1.2_NAICS_CO2e_USD2021.csv"
)
SUPPLIERS, AGENTS, PARTITIONS, PER_PROCESS = 10_000, 20, 100, 10
SAGAS, STEPS, MESSAGES = 50, 3, 1_000
SEED = 42
#: Short leases so a SIGKILLed saga or swarm replica's work moves within seconds.
FAST_ENV = {
    "AGENTMESH_SAGA_LEASE_TTL_MS": "2000",
    "AGENTMESH_SAGA_RENEW_INTERVAL_MS": "400",
    "AGENTMESH_SAGA_RECOVERY_INTERVAL_MS": "400",
    "AGENTMESH_SWARM_LEASE_TTL_MS": "2000",
    "AGENTMESH_SWARM_SCAN_INTERVAL_MS": "400",
}
FINAL_SWARM = {
    swarm_pb2.SWARM_STATE_COMPLETED,
    swarm_pb2.SWARM_STATE_FAILED,
    swarm_pb2.SWARM_STATE_STOPPED,
}
FINAL_SAGA = {
    saga_pb2.SAGA_STATE_COMPLETED,
    saga_pb2.SAGA_STATE_COMPENSATED,
    saga_pb2.SAGA_STATE_FAILED,
    saga_pb2.SAGA_STATE_CANCELLED,
}
#: Errors a workload call may meet while a replica, a master or a broker dies;
#: the call is then retried (with the same id or key), bounded by a deadline.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]


@dataclass
class Figures:
    """What the run measured, printed at the end and written as JSON."""

    durations_s: dict[str, float] = field(default_factory=dict)
    retries: dict[str, int] = field(
        default_factory=lambda: {"saga_start": 0, "publish": 0, "lock": 0, "poll": 0}
    )
    killed: dict[str, int] = field(default_factory=dict)
    failover: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)


def _direct_total(suppliers_csv: Path) -> float:
    """kg CO2e of suppliers.csv, computed independently of the demo's code."""
    with FACTORS.open(newline="", encoding="utf-8-sig") as f:
        factor = {
            r["NAICS Code 2017"]: float(r["Supply Chain Emission Factors with Margins"])
            for r in csv.DictReader(f)
        }
    with suppliers_csv.open(newline="") as f:
        return math.fsum(float(r["spend_usd"]) * factor[r["naics_code"]] for r in csv.DictReader(f))


def _transient(e: BaseException) -> bool:
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code() in TRANSIENT
    return isinstance(
        e,
        (
            errors.Unavailable,
            errors.DeadlineExceeded,
            errors.Internal,
            errors.Aborted,
            errors.Cancelled,
        ),
    )


async def _retrying(call: Any, *, deadline: float, figures: Figures, what: str) -> Any:
    """`await call()` until it succeeds, retrying transient errors up to `deadline`."""
    while True:
        try:
            return await call()
        except Exception as e:
            if not _transient(e) or time.monotonic() > deadline:
                raise
            figures.retries[what] += 1
            await asyncio.sleep(0.2)


def _master_of_slot(nodes: str, slot: int) -> tuple[int, int]:
    """(master port, its replica's port) serving `slot`, from CLUSTER NODES (CLUSTER
    SLOTS leaves out a replica until its first sync is done)."""
    host, port = nodes.split(",")[0].rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port), socket_timeout=5, decode_responses=True)
    try:
        table: dict[str, dict[str, Any]] = r.execute_command("CLUSTER NODES")
    finally:
        r.close()
    port_of = {n["node_id"]: int(addr.split("@")[0].rsplit(":", 1)[1]) for addr, n in table.items()}
    for n in table.values():
        if "master" in n["flags"] and any(int(lo) <= slot <= int(hi) for lo, hi in n["slots"]):
            replica = next(
                port_of[m["node_id"]] for m in table.values() if m["master_id"] == n["node_id"]
            )
            return port_of[n["node_id"]], replica
    raise AssertionError(f"no master serves slot {slot}: {table}")


def _role(port: int) -> str:
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        return str(r.info("replication")["role"])
    finally:
        r.close()


def _broker_pids(kafka_dir: Path) -> list[tuple[Path, int]]:
    """(pidfile, PID) of each running broker started in `kafka_dir` (kafka.sh's pidfiles)."""
    out = []
    for pidfile in sorted(kafka_dir.rglob("kafka.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if pid_alive(pid) and b"kafka.Kafka" in cmd:
                out.append((pidfile, pid))
    return out


def _lock_resource(nodes: str, slot_wanted_master: int) -> str:
    """A lock name whose key slot (`am:reg:lock:{<name>}`) is on the given master."""
    from redis.crc import key_slot

    for i in range(10_000):
        name = f"e2e-cluster-lock-{i}"
        if _master_of_slot(nodes, key_slot(name.encode()))[0] == slot_wanted_master:
            return name
    raise AssertionError("no lock name on that master")


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    """The cluster stack on free ports; stopped by PID afterwards."""
    brokers = int(os.environ.get("AGENTMESH_TEST_CLUSTER_BROKERS", "3"))
    base = free_port_block(40)
    opts = cluster.ClusterOptions(
        run_dir=tmp_path / "stack",
        replicas=2,
        brokers=brokers,
        redis_ports=tuple(cluster.free_redis_ports()),
        kafka_port=free_port_block(12),
        base_port=base,
        metrics_base_port=base + 20,
        timeout_s=180.0,
        extra_env=FAST_ENV,
    )
    t0 = time.monotonic()
    state = cluster.up(opts)
    state_up_s = time.monotonic() - t0
    try:
        yield state, state_up_s
    finally:
        cluster.down(opts.run_dir.resolve(), grace_s=10.0)


async def test_the_mesh_on_the_cluster_stack_survives_replica_master_and_broker_failures(
    stack: Any, tmp_path: Path, redis_url: str
) -> None:
    state, up_s = stack
    figures = Figures()
    figures.durations_s["stack_up"] = up_s
    t_all = time.monotonic()
    targets = state.targets()
    assert all(len(t.split(",")) == 2 for t in targets.values()), targets
    want_brokers = int(os.environ.get("AGENTMESH_TEST_CLUSTER_BROKERS", "3"))
    assert state.kafka_brokers == want_brokers, state
    nodes = state.redis_nodes
    sagas_master, sagas_replica = _master_of_slot(nodes, _key_slot("sagas"))
    lock_name = _lock_resource(nodes, sagas_master)

    # ---- agents: the demo's calculators and one counting agent for the sagas ---------
    run = tmp_path / "run"
    suppliers_csv = tmp_path / "suppliers.csv"
    sha = write_suppliers(
        generate_suppliers(load_factors(), count=SUPPLIERS, seed=SEED), suppliers_csv
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "NONE"}
    workers = [
        WorkerProcess(
            f"calculators-{i}",
            [
                "calculators",
                "--first",
                str(first),
                "--count",
                str(count),
                "--registry-target",
                targets["registry"],
                "--heartbeat-interval-s",
                "2",
            ],
            run / f"fleet-{i}.log",
            run / f"fleet-{i}.ready",
        )
        for i, (first, count) in enumerate(worker_plan(AGENTS, PER_PROCESS))
    ]
    counter: AgentProcess = testing_agent(
        "counting",
        run,
        "--redis-url",
        redis_url,
        "--registry-target",
        targets["registry"],
        "--metrics-port",
        "-1",
        "--delay-ms",
        "200",  # a saga's three steps take over half a second: some are in flight at the kills
        env={"GRPC_VERBOSITY": "NONE"},
    )
    counter_id = counter.agent_id
    effects = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        t0 = time.monotonic()
        for w in workers:
            w.spawn(env)
        counter.start(timeout_s=60)
        wait_all_ready(workers, timeout_s=120)
        figures.durations_s["fleet_up"] = time.monotonic() - t0
        async with Client(**targets, default_timeout_s=10.0) as client:
            await sc.discover_calculators(client, expected=AGENTS, timeout_s=60)
            topic = f"e2e.cluster.{uuid.uuid4().hex[:8]}"
            # The bus is NOT_SERVING while its broker is slow to answer (a loaded machine).
            await _retrying(
                lambda: client.create_topic(topic={"name": topic, "partitions": 3}),
                deadline=time.monotonic() + 60,
                figures=figures,
                what="poll",
            )
            t_load = time.monotonic()
            results = await _load_with_failures(
                client,
                state,
                figures,
                suppliers_csv=suppliers_csv,
                sha=sha,
                topic=topic,
                counter_id=counter_id,
                lock_name=lock_name,
                sagas_master=sagas_master,
                sagas_replica=sagas_replica,
                calculator_pids=[w.pid for w in workers],
            )
            figures.durations_s["load_with_failures"] = time.monotonic() - t_load
    finally:
        stop_all(workers, grace_s=10)
        counter.stop()

    figures.durations_s["total_after_stack_up"] = time.monotonic() - t_all
    try:
        _check(
            state,
            figures,
            results,
            tmp_path=tmp_path,
            suppliers_csv=suppliers_csv,
            counted={
                str(k): int(v) for k, v in effects.hgetall(f"am:agent:{counter_id}:effects").items()
            },
            compensations=effects.hlen(f"am:agent:{counter_id}:compensations"),
            topic=topic,
            sagas_master=sagas_master,
            sagas_replica=sagas_replica,
            want_brokers=want_brokers,
        )
    finally:
        doc = json.dumps(vars(figures), indent=2, default=str)
        (tmp_path / "cluster-e2e.json").write_text(doc)
        print(doc, file=sys.stderr)


def _check(
    state: cluster.ClusterState,
    figures: Figures,
    results: dict[str, Any],
    *,
    tmp_path: Path,
    suppliers_csv: Path,
    counted: dict[str, int],
    compensations: int,
    topic: str,
    sagas_master: int,
    sagas_replica: int,
    want_brokers: int,
) -> None:
    """The assertions after the run (module docstring); fills `figures.counts`."""
    # ---- the failures happened ---------------------------------------------------------
    for name, pid in figures.killed.items():
        assert not pid_alive(pid), f"{name} pid {pid} still alive"
    assert set(figures.killed) >= {f"{d}-0" for d in ("bus", "router", "registry", "saga", "swarm")}
    assert _role(sagas_master) == "slave" and _role(sagas_replica) == "master"
    if want_brokers == 3:
        assert "kafka-broker" in figures.killed

    # ---- Scope 3 total -----------------------------------------------------------------
    direct = _direct_total(suppliers_csv)
    total = results["swarm_total"]
    assert abs(total - direct) / direct <= 1e-9, (total, direct)
    assert results["partitions_done"] == PARTITIONS
    assert results["swarm_resumes"] >= 1  # replica 1 took the swarm over from the killed driver

    # ---- sagas: terminal, each step's effect exactly once at the agent ------------------
    assert len(results["sagas"]) == SAGAS
    states = {sid: saga_pb2.SagaState.Name(s) for sid, s in results["sagas"].items()}
    assert set(states.values()) == {"SAGA_STATE_COMPLETED"}, states
    for sid in results["sagas"]:
        keys = {k: v for k, v in counted.items() if k.startswith(sid)}
        assert len(keys) == STEPS and set(keys.values()) == {1}, (sid, keys)
    assert len(counted) == SAGAS * STEPS, len(counted)
    assert compensations == 0

    # ---- bus: no acked message lost --------------------------------------------------
    acked: set[str] = results["acked"]
    assert len(acked) == MESSAGES
    found, rf, min_isr = _read_topic(state.kafka_bootstrap, topic)
    assert acked <= found, (
        f"{len(acked - found)} acked messages missing, e.g. {sorted(acked - found)[:5]}"
    )
    if want_brokers == 3:
        assert (rf, min_isr) == (3, "2")

    # ---- locks: fencing tokens only increased ----------------------------------------
    tokens: list[int] = results["tokens"]
    assert len(tokens) >= 20
    assert all(a < b for a, b in itertools.pairwise(tokens)), tokens

    figures.counts.update(
        {
            "suppliers": SUPPLIERS,
            "agents": AGENTS,
            "partitions": PARTITIONS,
            "sagas": SAGAS,
            "saga_step_effects": len(counted),
            "messages_acked": len(acked),
            "messages_in_topic": len(found),
            "lock_tokens": len(tokens),
            "kafka_brokers": state.kafka_brokers,
            "topic_rf": rf,
            "topic_min_isr": min_isr,
            "swarm_reassignments": results["reassignments"],
            "swarm_resumes": results["swarm_resumes"],
            "relative_error": abs(total - direct) / direct,
        }
    )


def _key_slot(tag: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(tag.encode()))


async def _load_with_failures(
    client: Client,
    state: cluster.ClusterState,
    figures: Figures,
    *,
    suppliers_csv: Path,
    sha: str,
    topic: str,
    counter_id: str,
    lock_name: str,
    sagas_master: int,
    sagas_replica: int,
    calculator_pids: list[int],
) -> dict[str, Any]:
    """Run the four workloads at once and the failures in their middle."""
    deadline = time.monotonic() + 180
    done, swarm_go, deployed, killed = (asyncio.Event() for _ in range(4))
    progress = {"partitions": 0, "sagas_started": 0, "acked": 0}

    async def swarm() -> dict[str, Any]:
        task = sc.swarm_task(
            suppliers_path=suppliers_csv,
            sha256=sha,
            partitions=PARTITIONS,
            agents_required=AGENTS,
            seed=SEED,
            timeout_s=150,
        )
        sid = f"scope3-{uuid.uuid4().hex[:8]}"
        # Deployed on swarm replica 0, which drives it and is SIGKILLed right
        # after: the swarm (0.5-1 s of work here) must move to replica 1.
        swarm0 = state.of("swarm")[0].target
        await swarm_go.wait()

        async def deploy() -> None:
            try:
                async with Client(swarm=swarm0, default_timeout_s=10.0) as one:
                    await one.deploy_swarm(task, swarm_id=sid)
            except errors.AlreadyExists:
                pass  # a retried deploy whose first try went through

        t0 = time.monotonic()
        await _retrying(deploy, deadline=deadline, figures=figures, what="poll")
        deployed.set()
        while True:
            got = (
                await _retrying(
                    lambda: client.get_swarm(swarm_id=sid),
                    deadline=deadline,
                    figures=figures,
                    what="poll",
                )
            ).swarm
            progress["partitions"] = got.stats.partitions_done
            if got.state in FINAL_SWARM:
                break
            assert time.monotonic() < deadline, f"swarm not done: {got.stats}"
            await asyncio.sleep(0.25)
        figures.durations_s["swarm"] = time.monotonic() - t0
        assert got.state == swarm_pb2.SWARM_STATE_COMPLETED, got.error_message
        return {
            "swarm_total": got.partitions.totals["kg_co2e"],
            "partitions_done": got.partitions.partitions_done,
            "reassignments": got.partitions.reassignments,
            "swarm_resumes": got.resumes,
        }

    async def sagas() -> dict[str, int]:
        steps = [
            saga_pb2.Step(
                name=f"s{i}",
                agent_id=counter_id,
                action=f"do_s{i}",
                compensation_action=f"undo_s{i}",
                depends_on=[f"s{i - 1}"] if i else [],
            )
            for i in range(STEPS)
        ]
        definition = saga_pb2.SagaDefinition(name="e2e-cluster", steps=steps)
        ids: list[str] = []
        t0 = time.monotonic()
        for i in range(SAGAS):
            req = saga_pb2.StartSagaRequest(
                definition=definition, idempotency_key=f"e2e-cluster-{i}"
            )
            resp = await _retrying(
                lambda r=req: client.start_saga(r),
                deadline=deadline,
                figures=figures,
                what="saga_start",
            )
            ids.append(resp.saga.saga_id)
            progress["sagas_started"] = i + 1
            if i + 1 == SAGAS // 2:
                # Half are started before the failures (the last ones in flight
                # when replicas die), half after, on the survivors and the new master.
                await killed.wait()
            await asyncio.sleep(0.1)
        final: dict[str, int] = {}
        while len(final) < len(ids):
            for sid in ids:
                if sid in final:
                    continue
                s = (
                    await _retrying(
                        lambda s_=sid: client.get_saga(saga_id=s_),
                        deadline=deadline,
                        figures=figures,
                        what="poll",
                    )
                ).saga
                if s.state in FINAL_SAGA:
                    final[sid] = s.state
            assert time.monotonic() < deadline, f"{len(ids) - len(final)} sagas not final"
            await asyncio.sleep(0.2)
        figures.durations_s["sagas"] = time.monotonic() - t0
        return final

    async def publish() -> set[str]:
        acked: set[str] = set()
        t0 = time.monotonic()
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            mid = f"e2e-msg-{i:05d}"
            async with sem:
                await _retrying(
                    lambda: client.publish(
                        message={
                            "id": mid,
                            "topic": topic,
                            "key": str(i % 7),
                            "payload": {"struct_value": {"i": i}},
                        }
                    ),
                    deadline=deadline,
                    figures=figures,
                    what="publish",
                )
            acked.add(mid)
            progress["acked"] = len(acked)

        for start in range(0, MESSAGES, 50):  # 20 batches, spread over the failures
            await asyncio.gather(*(one(i) for i in range(start, min(start + 50, MESSAGES))))
            await asyncio.sleep(0.1)
        figures.durations_s["publish"] = time.monotonic() - t0
        return acked

    async def locks() -> list[int]:
        tokens: list[int] = []
        owner = f"e2e-{uuid.uuid4().hex[:6]}"
        for _ in range(5_000):
            if (done.is_set() and len(tokens) >= 20) or time.monotonic() > deadline:
                break
            got = await _retrying(
                lambda: client.acquire_lock(
                    resource=lock_name,
                    owner=owner,
                    ttl=timedelta(seconds=10),
                    wait_timeout=timedelta(seconds=5),
                ),
                deadline=deadline,
                figures=figures,
                what="lock",
            )
            if not got.acquired:
                figures.retries["lock"] += 1
                continue
            tokens.append(got.fencing_token)
            await _retrying(
                lambda g=got: client.release_lock(
                    coordination_pb2.ReleaseLockRequest(
                        resource=lock_name, owner=owner, fencing_token=g.fencing_token
                    )
                ),
                deadline=deadline,
                figures=figures,
                what="lock",
            )
            await asyncio.sleep(0.05)
        return tokens

    async def failures() -> None:
        # Once sagas and messages are under way, the swarm is deployed; then one
        # replica of each daemon (the swarm's driver first), the saga store's
        # master, then a broker.
        while not (progress["sagas_started"] >= SAGAS // 2 and progress["acked"] >= 50):
            assert time.monotonic() < deadline, f"workloads did not start: {progress}"
            await asyncio.sleep(0.05)
        # The swarm's whole work takes under a second here, so the calculators
        # are paused (SIGSTOP) while it is deployed: the driver is then killed
        # with partitions in flight, whatever the machine's speed.
        for pid in calculator_pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            swarm_go.set()
            await deployed.wait()
            await asyncio.sleep(0.5)  # the driver dispatches the first partitions
            figures.failover["at_progress"] = dict(progress)
            for r in sorted(state.replicas, key=lambda r: r.name != "swarm"):
                if r.replica == 0:
                    assert is_our_daemon(r.pid, r.name)
                    os.kill(r.pid, signal.SIGKILL)
                    figures.killed[f"{r.name}-0"] = r.pid
        finally:
            for pid in calculator_pids:
                os.kill(pid, signal.SIGCONT)
            killed.set()
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        rep = redis.Redis(host="127.0.0.1", port=sagas_replica, socket_timeout=5)
        try:
            assert rep.execute_command("CLUSTER FAILOVER") in (b"OK", "OK", True)
            while _role(sagas_replica) != "master":
                assert time.monotonic() - t0 < 30, "CLUSTER FAILOVER did not finish"
                await asyncio.sleep(0.05)
        finally:
            rep.close()
        figures.failover.update(
            {
                "old_master": sagas_master,
                "new_master": sagas_replica,
                "duration_s": time.monotonic() - t0,
            }
        )
        await asyncio.sleep(1.0)
        brokers = _broker_pids(Path(state.kafka_dir))
        if state.kafka_brokers >= 3:
            assert len(brokers) == state.kafka_brokers, brokers
            _, pid = brokers[-1]
            os.kill(pid, signal.SIGKILL)
            figures.killed["kafka-broker"] = pid
        figures.failover["all_done_at_progress"] = dict(progress)

    fail_task = asyncio.create_task(failures())
    lock_task = asyncio.create_task(locks())
    try:
        # A failed failure step fails the run at once (the sagas wait for it).
        swarm_res, saga_res, acked, _ = await asyncio.gather(swarm(), sagas(), publish(), fail_task)
        done.set()
        tokens = await lock_task
    finally:
        for t in (fail_task, lock_task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    return {**swarm_res, "sagas": saga_res, "acked": acked, "tokens": tokens}


def _read_topic(bootstrap: str, topic: str) -> tuple[set[str], int, str]:
    """(am-id of every record, replication factor, min.insync.replicas) of `topic`,
    read with a plain Kafka consumer from the earliest offset to the end."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(topic, timeout=20).topics[topic]
    rf = len(next(iter(md.partitions.values())).replicas)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result(timeout=20)
    min_isr = cfg["min.insync.replicas"].value
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"e2e-read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    ids: set[str] = set()
    try:
        ends = {}
        for p in md.partitions:
            _, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)
            ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        pos = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + 60
        while any(pos[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for m in c.consume(500, timeout=1.0):
                if m.error():
                    continue
                pos[int(m.partition() or 0)] = int(m.offset() or 0) + 1
                for h in m.headers() or []:
                    if h[0] == "am-id" and isinstance(h[1], bytes):
                        ids.add(h[1].decode())
    finally:
        c.close()
    return ids, rf, min_isr
