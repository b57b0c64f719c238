"""The local cluster stack behind `make up CLUSTER=1`: a Redis Cluster, a Kafka
cluster and several replicas of every daemon, as background processes with
PID files and logs in a run directory.

    python -m agentmesh.cli.cluster up [--run-dir .run/cluster] [--replicas 2] [--brokers 3]
    python -m agentmesh.cli.cluster down [--run-dir .run/cluster]
    python -m agentmesh.cli.cluster status [--run-dir .run/cluster]

What `up` starts:
  * Redis Cluster, 3 masters + 3 replicas (`deploy/local/redis.sh cluster`),
    nodes in `<run dir>/redis-cluster/node-<port>/`;
  * Kafka: three KRaft brokers (`deploy/local/kafka.sh cluster`) when the
    script has that mode, else one broker (`kafka.sh start`), in `<run dir>/kafka/`;
  * `--replicas` processes of each daemon (bus, router, registry, saga,
    swarm) on distinct loopback ports, each on the Redis Cluster
    (AGENTMESH_REDIS_CLUSTER_NODES) and the brokers, and each given every
    other daemon as the list of its replicas (`AGENTMESH_<DAEMON>_TARGET=
    127.0.0.1:p1,127.0.0.1:p2`), so mesh calls balance over them with gRPC
    round_robin and skip a dead one (agentmesh.runtime.channels). With three
    brokers the bus creates its topics with replication factor 3 and
    min.insync.replicas 2.

Ports (defaults; flags change them): Redis nodes 7000-7005 (cluster bus
+10000), Kafka 19092 and on, replica r of daemon i (DESIGN.md order bus,
router, registry, saga, swarm) gRPC base + 10 r + i and metrics
metrics-base + 10 r + i, from 50151 and 9201.

Run directory layout:
    cluster.json             what `up` started: every PID, port and address
    <daemon>-<r>.pid / .log  each replica's PID and its stdout and stderr
    redis-cluster/, kafka/   the servers' data, logs and pidfiles

`down` signals exactly the recorded PIDs, after checking each still runs
`agentmesh.server.<daemon>` (a recycled PID is never hit): SIGTERM to all,
wait for the drains, SIGKILL what is left; the servers are stopped by their
scripts, which do the same with their own pidfiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agentmesh.cli.stack import (
    START_ORDER,
    StackError,
    _tail,
    is_our_daemon,
    pid_alive,
    port_free,
    repo_root,
    stop_pid,
)
from agentmesh.client.base import DAEMONS
from agentmesh.runtime.files import write_json_atomic

STATE_FILE = "cluster.json"
REDIS_NODES = 6
#: Topic settings the bus gets on three or more brokers: a write acked with
#: acks=all is on two brokers at least, so one broker's death loses nothing.
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2


@dataclass
class ReplicaState:
    """One started daemon replica."""

    name: str
    replica: int
    pid: int
    port: int
    metrics_port: int
    log: str

    @property
    def target(self) -> str:
        """`127.0.0.1:<port>`."""
        return f"127.0.0.1:{self.port}"


@dataclass
class ClusterState:
    """What `up` started, persisted as cluster.json.

    Attributes:
        redis_nodes: `127.0.0.1:p1,...` of the six Redis nodes
            (AGENTMESH_REDIS_CLUSTER_NODES).
        kafka_bootstrap: `127.0.0.1:p1,...` of the brokers.
        kafka_brokers: how many brokers run (3, or 1 without `kafka.sh cluster`).
        replicas: every daemon replica, in start order.
    """

    run_dir: str
    redis_dir: str = ""
    redis_nodes: str = ""
    kafka_dir: str = ""
    kafka_bootstrap: str = ""
    kafka_brokers: int = 0
    kafka_mode: str = ""
    started_ms: int = 0
    replicas: list[ReplicaState] = field(default_factory=list)

    def save(self) -> None:
        """Write cluster.json atomically."""
        write_json_atomic(Path(self.run_dir) / STATE_FILE, asdict(self), indent=2)

    @classmethod
    def load(cls, run_dir: Path) -> ClusterState | None:
        """Read cluster.json, or None when there is none."""
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        reps = [ReplicaState(**r) for r in doc.pop("replicas", [])]
        return cls(**doc, replicas=reps)

    def of(self, name: str) -> list[ReplicaState]:
        """The replicas of daemon `name`, by replica index."""
        return sorted((r for r in self.replicas if r.name == name), key=lambda r: r.replica)

    def targets(self) -> dict[str, str]:
        """daemon -> `host:port,host:port` of its replicas (a balanced target)."""
        return {d: ",".join(r.target for r in self.of(d)) for d in DAEMONS if self.of(d)}


@dataclass(frozen=True)
class ClusterOptions:
    """Settings of the cluster `up`.

    Attributes:
        run_dir: where PID files, logs, server data and cluster.json go.
        replicas: processes of each daemon (>= 1).
        brokers: Kafka brokers wanted, 3 or 1; 3 needs `kafka.sh cluster`,
            without which one broker is started (and said so).
        redis_ports: the six Redis node ports (their cluster bus ports,
            +10000, must be free too).
        kafka_port: the first broker's port; the script lays out the rest.
        base_port: gRPC port of replica 0 of the bus (see the module docstring).
        metrics_base_port: its metrics port.
        timeout_s: how long to wait for every replica to be SERVING.
        extra_env: environment added to every replica (e.g. lease TTLs).
    """

    run_dir: Path
    replicas: int = 2
    brokers: int = 3
    redis_ports: tuple[int, ...] = tuple(range(7000, 7000 + REDIS_NODES))
    kafka_port: int = 19092
    base_port: int = 50151
    metrics_base_port: int = 9201
    timeout_s: float = 120.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def ports(self, daemon: str, replica: int) -> tuple[int, int]:
        """(gRPC port, metrics port) of replica `replica` of `daemon`."""
        i = DAEMONS.index(daemon)
        return self.base_port + 10 * replica + i, self.metrics_base_port + 10 * replica + i


def free_redis_ports(count: int = REDIS_NODES, *, lo: int = 20_000, hi: int = 32_000) -> list[int]:
    """`count` consecutive free ports whose Redis Cluster bus ports (+10000) are free too.

    Raises:
        OSError: when no such block is found.
    """
    import random

    rnd = random.Random()
    for _ in range(200):
        base = rnd.randrange(lo, hi - count)
        ports = list(range(base, base + count))
        if all(port_free(p) and port_free(p + 10_000) for p in ports):
            return ports
    raise OSError(f"no {count} free Redis Cluster ports in [{lo}, {hi})")


# ---- servers ------------------------------------------------------------------
def _script(name: str) -> Path:
    return repo_root() / "deploy" / "local" / name


def kafka_has_cluster_mode() -> bool:
    """True when deploy/local/kafka.sh has a `cluster` action (three brokers)."""
    try:
        text = _script("kafka.sh").read_text()
    except OSError:
        return False
    return "cmd_cluster" in text


def _run(args: list[str], *, what: str, timeout_s: float, env: dict[str, str] | None = None) -> str:
    try:
        res = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{what} did not finish within {timeout_s:.0f}s") from e
    if res.returncode != 0:
        raise StackError(f"{what} failed:\n{res.stdout}{res.stderr}".rstrip())
    return res.stdout + res.stderr


def _start_redis(opts: ClusterOptions, directory: Path) -> subprocess.Popen[str]:
    ports = ",".join(map(str, opts.redis_ports))
    return subprocess.Popen(
        ["bash", str(_script("redis.sh")), "cluster", "start", ports, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _start_kafka(opts: ClusterOptions, directory: Path) -> tuple[subprocess.Popen[str], str]:
    script = str(_script("kafka.sh"))
    if opts.brokers >= 3 and kafka_has_cluster_mode():
        args, mode = (
            ["bash", script, "cluster", "start", str(opts.kafka_port), str(directory)],
            "cluster",
        )
        env = dict(os.environ)
    else:
        args, mode = ["bash", script, "start", str(opts.kafka_port), str(directory)], "single"
        env = {**os.environ, "KAFKA_CONTROLLER_PORT": str(opts.kafka_port + 1)}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    return proc, mode


def _finish(proc: subprocess.Popen[str], what: str, timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.communicate()
        raise StackError(f"{what} did not start within {timeout_s:.0f}s") from e
    if proc.returncode != 0:
        raise StackError(f"{what} failed to start:\n{out}".rstrip())
    return out


def _kafka_bootstrap(directory: Path, mode: str, port: int) -> tuple[str, int]:
    """(bootstrap servers, broker count) of what `_start_kafka` started."""
    if mode == "cluster":
        text = (directory / "bootstrap").read_text().strip()
        return text, len([b for b in text.split(",") if b])
    return f"127.0.0.1:{port}", 1


# ---- daemons --------------------------------------------------------------------
def replica_env(opts: ClusterOptions, state: ClusterState, name: str) -> dict[str, str]:
    """The environment of every replica of `name`: the caller's, plus the wiring."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "NONE"}
    # A single-node or Sentinel setting in the caller's environment would fight the cluster's.
    for key in list(env):
        if key.startswith("AGENTMESH_REDIS_SENTINEL") or (
            key.endswith(("_PORT", "_TARGET")) and key.startswith("AGENTMESH_")
        ):
            env.pop(key)
    first = state.redis_nodes.split(",")[0]
    env["AGENTMESH_REDIS_URL"] = f"redis://{first}/0"  # cluster mode reads only auth from it
    env["AGENTMESH_REDIS_CLUSTER_NODES"] = state.redis_nodes
    env["AGENTMESH_KAFKA_BOOTSTRAP"] = state.kafka_bootstrap
    if name == "bus" and state.kafka_brokers >= REPLICATION_FACTOR:
        env["AGENTMESH_BUS_KAFKA_TOPIC_REPLICATION_FACTOR"] = str(REPLICATION_FACTOR)
        env["AGENTMESH_BUS_KAFKA_TOPIC_MIN_INSYNC_REPLICAS"] = str(MIN_INSYNC_REPLICAS)
    for d in DAEMONS:
        env[f"AGENTMESH_{d.upper()}_TARGET"] = ",".join(
            f"127.0.0.1:{opts.ports(d, r)[0]}" for r in range(opts.replicas)
        )
    env.update(opts.extra_env)
    return env


def spawn_replica(
    opts: ClusterOptions, state: ClusterState, name: str, replica: int
) -> ReplicaState:
    """Start replica `replica` of `name` in the background, in its own session."""
    port, metrics_port = opts.ports(name, replica)
    log_path = opts.run_dir / f"{name}-{replica}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                f"agentmesh.server.{name}",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=replica_env(opts, state, name),
            start_new_session=True,  # a Ctrl-C in the shell must not take the stack down
        )
    (opts.run_dir / f"{name}-{replica}.pid").write_text(f"{proc.pid}\n")
    return ReplicaState(name, replica, proc.pid, port, metrics_port, str(log_path))


async def replica_health(targets: Sequence[str], *, timeout_s: float = 1.0) -> list[str]:
    """grpc.health.v1 status of each single `host:port`: SERVING, NOT_SERVING,
    UNREACHABLE, ... (`Client.health`, one client per replica so each check
    reaches that replica and no other)."""
    from agentmesh.client import Client

    async def one(target: str) -> str:
        async with Client(registry=target, retry_attempts=1) as c:
            return await c.health("registry", timeout_s=timeout_s)

    return list(await asyncio.gather(*(one(t) for t in targets)))


def _wait_serving(
    state: ClusterState, timeout_s: float, on_progress: Callable[[str, str], None]
) -> None:
    pending = {f"{r.name}-{r.replica}": r for r in state.replicas}
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    while pending:
        for key, r in list(pending.items()):
            if not pid_alive(r.pid):
                raise StackError(
                    f"{key} exited during startup (pid {r.pid}); last log lines "
                    f"of {r.log}:\n{_tail(Path(r.log))}"
                )
        keys = list(pending)
        statuses = asyncio.run(replica_health([pending[k].target for k in keys]))
        for key, status in zip(keys, statuses, strict=True):
            if status != last.get(key):
                on_progress(key, status)
                last[key] = status
            if status == "SERVING":
                del pending[key]
        if not pending:
            return
        if time.monotonic() > deadline:
            detail = "\n".join(
                f"  {k}: {last.get(k, '?')} — log {r.log}:\n{_tail(Path(r.log), 5)}"
                for k, r in pending.items()
            )
            raise StackError(f"not SERVING after {timeout_s:.0f}s: {', '.join(pending)}\n{detail}")
        time.sleep(0.2)


# ---- up / down / status -------------------------------------------------------
def up(
    opts: ClusterOptions, *, on_progress: Callable[[str, str], None] = lambda n, s: None
) -> ClusterState:
    """Start Redis Cluster, Kafka and `opts.replicas` replicas of every daemon;
    wait until every replica is SERVING.

    Returns:
        The saved state (every PID, port and address).

    Raises:
        StackError: something of an earlier `up` in the run directory still
            runs, a server or replica fails to start, or a replica is not
            SERVING within `opts.timeout_s`. Everything this call started is
            stopped first.
    """
    if opts.replicas < 1:
        raise StackError("--replicas must be at least 1")
    run_dir = opts.run_dir.resolve()
    opts = ClusterOptions(**{**asdict(opts), "run_dir": run_dir})
    run_dir.mkdir(parents=True, exist_ok=True)
    old = ClusterState.load(run_dir)
    if old is not None:
        alive = [r for r in old.replicas if is_our_daemon(r.pid, r.name)]
        if alive or (Path(old.redis_dir) / "nodes").exists():
            raise StackError(
                f"a cluster stack from {run_dir} is still running. Run "
                f"`python -m agentmesh.cli.cluster down --run-dir {run_dir}` first."
            )
    taken = [p for p in opts.redis_ports if not port_free(p) or not port_free(p + 10_000)]
    if taken:
        raise StackError(
            f"Redis Cluster ports taken: {taken} (or their +10000 bus ports); "
            "pick others with --redis-port"
        )
    state = ClusterState(
        run_dir=str(run_dir),
        redis_dir=str(run_dir / "redis-cluster"),
        kafka_dir=str(run_dir / "kafka"),
        started_ms=int(time.time() * 1000),
    )
    state.save()
    try:
        # The two servers start in parallel: the brokers' JVMs take the longest.
        on_progress("redis-cluster", "starting")
        on_progress("kafka", "starting")
        redis_proc = _start_redis(opts, Path(state.redis_dir))
        kafka_proc, state.kafka_mode = _start_kafka(opts, Path(state.kafka_dir))
        state.save()
        _finish(redis_proc, "Redis Cluster (deploy/local/redis.sh cluster)", 180.0)
        state.redis_nodes = (Path(state.redis_dir) / "nodes").read_text().strip()
        state.save()
        on_progress("redis-cluster", "SERVING")
        _finish(kafka_proc, f"Kafka (deploy/local/kafka.sh, {state.kafka_mode})", 600.0)
        state.kafka_bootstrap, state.kafka_brokers = _kafka_bootstrap(
            Path(state.kafka_dir), state.kafka_mode, opts.kafka_port
        )
        state.save()
        on_progress("kafka", "SERVING")
        for name in START_ORDER:
            for r in range(opts.replicas):
                state.replicas.append(spawn_replica(opts, state, name, r))
                state.save()
                on_progress(f"{name}-{r}", "starting")
        _wait_serving(state, opts.timeout_s, on_progress)
    except BaseException:
        down(run_dir, grace_s=10.0)
        raise
    return state


def down(run_dir: Path, *, grace_s: float = 15.0) -> list[tuple[str, str]]:
    """Stop what `up` started from `run_dir`, by PID.

    Returns:
        (component, outcome) pairs, e.g. ("router-1", "stopped"); empty when
        nothing was started there.
    """
    run_dir = run_dir.resolve()
    state = ClusterState.load(run_dir)
    results: list[tuple[str, str]] = []
    reps: dict[str, tuple[str, int]] = {}
    if state is not None:
        reps = {f"{r.name}-{r.replica}": (r.name, r.pid) for r in state.replicas}
    # PID files cover a crash between spawning and saving cluster.json.
    for pidfile in sorted(run_dir.glob("*-*.pid")):
        key = pidfile.stem
        name = key.rsplit("-", 1)[0]
        if name in DAEMONS and key not in reps:
            with contextlib.suppress(ValueError):
                reps[key] = (name, int(pidfile.read_text().strip()))
    # SIGTERM all first so they drain in parallel, then wait for each.
    signalled = set()
    for key, (name, pid) in reps.items():
        if is_our_daemon(pid, name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            signalled.add(key)
    for key, (name, pid) in reps.items():
        outcome = stop_pid(pid, name, grace_s=grace_s)
        if outcome == "not running" and key in signalled:
            outcome = "stopped"
        results.append((key, outcome))
        (run_dir / f"{key}.pid").unlink(missing_ok=True)
    kafka_dir = Path(state.kafka_dir) if state and state.kafka_dir else run_dir / "kafka"
    if kafka_dir.exists():
        mode = (
            state.kafka_mode
            if state
            else ("cluster" if not (kafka_dir / "kafka.pid").exists() else "single")
        )
        args = (
            ["cluster", "stop", str(kafka_dir)] if mode == "cluster" else ["stop", str(kafka_dir)]
        )
        try:
            results.append(
                (
                    "kafka",
                    _run(
                        ["bash", str(_script("kafka.sh")), *args],
                        what="kafka.sh stop",
                        timeout_s=180,
                    ).strip(),
                )
            )
        except StackError as e:
            results.append(("kafka", str(e)))
    redis_dir = Path(state.redis_dir) if state and state.redis_dir else run_dir / "redis-cluster"
    if redis_dir.exists():
        try:
            results.append(
                (
                    "redis-cluster",
                    _run(
                        ["bash", str(_script("redis.sh")), "cluster", "stop", str(redis_dir)],
                        what="redis.sh cluster stop",
                        timeout_s=120,
                    ).strip(),
                )
            )
        except StackError as e:
            results.append(("redis-cluster", str(e)))
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return results


def addresses(state: ClusterState) -> list[tuple[str, str]]:
    """(component, address) rows to print: the servers, then each daemon's balanced target."""
    rows = [
        ("redis-cluster", state.redis_nodes),
        (
            f"kafka ({state.kafka_brokers} broker{'s' if state.kafka_brokers != 1 else ''})",
            state.kafka_bootstrap,
        ),
    ]
    rows += [(d, t) for d, t in state.targets().items()]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """`up`, `down` or `status` of the cluster stack; prints addresses and PIDs."""
    p = argparse.ArgumentParser(
        prog="python -m agentmesh.cli.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--run-dir", type=Path, default=Path(".run/cluster"))
    d = ClusterOptions(run_dir=Path("."))
    p.add_argument("--replicas", type=int, default=d.replicas, help="processes of each daemon")
    p.add_argument(
        "--brokers",
        type=int,
        choices=[1, 3],
        default=d.brokers,
        help="Kafka brokers (3 needs deploy/local/kafka.sh cluster)",
    )
    p.add_argument(
        "--redis-port", type=int, default=d.redis_ports[0], help="first of the six Redis node ports"
    )
    p.add_argument("--kafka-port", type=int, default=d.kafka_port, help="first broker's port")
    p.add_argument(
        "--base-port",
        type=int,
        default=d.base_port,
        help="gRPC port of bus replica 0; replica r of daemon i: +10r+i",
    )
    p.add_argument("--metrics-base-port", type=int, default=d.metrics_base_port)
    p.add_argument("--timeout-s", type=float, default=d.timeout_s)
    p.add_argument("--json", action="store_true", help="print cluster.json instead of a table")
    a = p.parse_args(argv)
    if a.action == "down":
        for comp, outcome in down(a.run_dir):
            print(f"{comp:16} {outcome}")
        return 0
    if a.action == "status":
        state = ClusterState.load(a.run_dir.resolve())
        if state is None:
            print(f"no cluster stack in {a.run_dir}")
            return 3
        health = asyncio.run(replica_health([r.target for r in state.replicas]))
        for r, h in zip(state.replicas, health, strict=True):
            print(f"{r.name + '-' + str(r.replica):12} {r.target:22} {h:12} pid {r.pid}")
        return 0 if all(h == "SERVING" for h in health) else 3
    opts = ClusterOptions(
        run_dir=a.run_dir,
        replicas=a.replicas,
        brokers=a.brokers,
        redis_ports=tuple(range(a.redis_port, a.redis_port + REDIS_NODES)),
        kafka_port=a.kafka_port,
        base_port=a.base_port,
        metrics_base_port=a.metrics_base_port,
        timeout_s=a.timeout_s,
    )
    try:
        state = up(opts, on_progress=lambda n, s: print(f"  {n}: {s.lower()}", file=sys.stderr))
    except StackError as e:
        print(f"error: {e}\nlogs are in {a.run_dir}/", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(asdict(state), indent=2))
        return 0
    if state.kafka_brokers < opts.brokers:
        print(
            f"note: deploy/local/kafka.sh has no cluster mode yet: {state.kafka_brokers} "
            "broker, topics with the broker's default replication",
            file=sys.stderr,
        )
    print(
        f"AgentMesh cluster stack is up ({opts.replicas} replicas of each daemon); "
        f"run dir {state.run_dir}"
    )
    for comp, addr in addresses(state):
        print(f"  {comp:18} {addr}")
    for r in state.replicas:
        print(
            f"  {r.name + '-' + str(r.replica):18} {r.target:22} pid {r.pid:<8} metrics "
            f":{r.metrics_port}  log {r.log}"
        )
    print(
        "Use the balanced targets, e.g. export "
        + " ".join(f"AGENTMESH_{d.upper()}_TARGET={t}" for d, t in state.targets().items())
    )
    print(
        f"Stop it with `make down` (or python -m agentmesh.cli.cluster down --run-dir {a.run_dir})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
