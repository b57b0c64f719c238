"""Real Redis and Kafka processes for integration tests.

A plain module (no pytest hooks) so tests, fixtures and ad-hoc scripts can all
use it. The processes are started by the shell scripts in `deploy/local/`, the
same ones `make` and developers use, so tests exercise the real setup:

    from tests.infra import RedisServer, KafkaBroker

    with RedisServer(workdir=tmp_path / "redis") as redis:
        client = redis_lib.Redis.from_url(redis.url)
        redis.restart()  # same port; health checks see it go away and return

    with KafkaBroker(workdir=tmp_path / "kafka") as kafka:
        Producer({"bootstrap.servers": kafka.bootstrap})

Every failure raises `InfraError` carrying the script output and the tail of
the server log, so a broken CI run says why without a second attempt.

Servers started here that are still running when the interpreter exits are
stopped by an `atexit` hook: Kafka runs in its own session (so a developer's
Ctrl-C cannot kill a shared broker) and would otherwise outlive a crashed run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import tempfile
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from agentmesh.cli.stack import pid_alive

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "deploy" / "local"
REDIS_SH = SCRIPTS / "redis.sh"
KAFKA_SH = SCRIPTS / "kafka.sh"
LOOPBACK = "127.0.0.1"

__all__ = [
    "ExternalKafka",
    "ExternalRedis",
    "InfraError",
    "KafkaBroker",
    "KafkaCluster",
    "RedisServer",
    "flush_db",
    "free_port",
    "free_ports",
    "pid_alive",
    "redis_url_with_db",
    "unique_name",
]


class InfraError(RuntimeError):
    """A test server failed to start or stop; the message holds the log tail."""


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it by binding port 0. Another process may take it before
    the caller binds, so callers that can retry with a new port should.
    """
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Returns `count` distinct free loopback ports.

    All sockets stay bound until every port is picked, so the kernel cannot
    hand out the same port twice (Kafka needs a broker and a controller port).
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def unique_name(prefix: str = "t") -> str:
    """Returns `<prefix>-<12 hex chars>`, for topics and groups that must not collide."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def redis_url_with_db(url: str, db: int) -> str:
    """Returns `url` pointing at logical database `db`, keeping host, port and auth."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def flush_db(url: str) -> str:
    """FLUSHDB the logical database `url` names; returns `url` (for fixtures).

    Only for a test area's own DB (team rule: flush nothing else).
    """
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _run_script(
    script: Path, args: list[str], *, env: dict[str, str], timeout_s: float, logs: list[Path]
) -> str:
    """Runs a deploy/local script; returns stdout or raises InfraError with logs."""
    cmd = ["bash", str(script), *args]
    try:
        proc = subprocess.run(
            cmd,
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        tails = "".join(f"\n--- {p} ---\n{_tail(p)}" for p in logs if p.exists())
        raise InfraError(f"{' '.join(cmd)} timed out after {timeout_s}s{tails}") from e
    if proc.returncode != 0:
        tails = "".join(f"\n--- {p} ---\n{_tail(p)}" for p in logs if p.exists())
        raise InfraError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}{tails}"
        )
    return proc.stdout


# Managed servers still running at exit; weak so a dropped object is not kept alive.
_RUNNING: weakref.WeakSet[_ManagedServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


class _ManagedServer:
    """Shared start/stop plumbing for servers run by a deploy/local script."""

    managed = True
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 60.0
    _script: Path
    _pidfile_name: str
    _kind: str

    def __init__(self, port: int | None, workdir: str | os.PathLike[str] | None) -> None:
        self._fixed_port = port is not None
        self.port: int = port or 0
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix=f"agentmesh-{self._kind}-")
        self.workdir = Path(workdir).resolve()

    # Subclasses fill these in.
    def _start_args(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _logs(self) -> list[Path]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """PID from the pidfile, or None when not running."""
        try:
            pid = int((self.workdir / self._pidfile_name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        """True while the server process from our pidfile is alive."""
        return self.pid is not None

    def start(self) -> _ManagedServer:
        """Starts the server (no-op if already running) and waits until it answers.

        A port picked here is kept for the object's lifetime, so `stop()` then
        `start()` brings the server back where clients expect it.

        Raises:
            InfraError: the script failed; the message has its output and the log tail.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        first_start = self.port == 0
        # A port picked by us can be stolen between picking and binding; only
        # then is retrying with new ports safe (clients have not seen it yet).
        attempts = 3 if first_start and not self._fixed_port else 1
        for attempt in range(attempts):
            if self.port == 0:
                self._pick_ports()
            args, env = self._start_args()
            try:
                _run_script(
                    self._script,
                    ["start", *args],
                    env=env,
                    timeout_s=self.start_timeout_s,
                    logs=self._logs(),
                )
            except InfraError:
                # The script may have been killed by our timeout with the
                # server half up; the pidfile still lets us clean that up.
                with contextlib.suppress(InfraError):
                    self.stop()
                if attempt + 1 == attempts:
                    raise
                self.port = 0
                continue
            break
        _RUNNING.add(self)
        return self

    def stop(self) -> None:
        """Stops the server via its pidfile and waits for the process to exit.

        Safe to call when not running.

        Raises:
            InfraError: the process could not be stopped.
        """
        pid = self.pid
        _run_script(
            self._script,
            ["stop", str(self.workdir)],
            env={},
            timeout_s=self.stop_timeout_s,
            logs=self._logs(),
        )
        _RUNNING.discard(self)
        if pid is not None and pid_alive(pid):
            raise InfraError(f"{self._kind} pid {pid} still alive after stop")

    def restart(self) -> None:
        """Stops, then starts on the same port and workdir."""
        self.stop()
        self.start()

    def __enter__(self) -> _ManagedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_ManagedServer):
    """A private redis-server on loopback, run by `deploy/local/redis.sh`.

    Args:
        port: TCP port; None picks a free one on first start.
        workdir: directory for pidfile, log and AOF; None makes a temp dir.
        appendonly: turn on the AOF so data survives `restart()`.

    Attributes:
        port: the TCP port (0 until first start when picked automatically).
        url: `redis://127.0.0.1:<port>/0`.
        managed: always True; `ExternalRedis` has False.
    """

    _script = REDIS_SH
    _pidfile_name = "redis.pid"
    _kind = "redis"
    # redis.sh may apt-get install redis-server first on a fresh machine.
    start_timeout_s = 300.0
    stop_timeout_s = 30.0

    def __init__(
        self,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        appendonly: bool = False,
    ) -> None:
        super().__init__(port, workdir)
        self.appendonly = appendonly

    host = LOOPBACK

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        if not self.port:
            raise InfraError("RedisServer has no port yet; call start() first")
        return f"redis://{LOOPBACK}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        """URL of logical database `db` (0..15) on this server."""
        return redis_url_with_db(self.url, db)

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _start_args(self) -> tuple[list[str], dict[str, str]]:
        env = {"REDIS_APPENDONLY": "yes" if self.appendonly else "no"}
        return [str(self.port), str(self.workdir)], env

    def _logs(self) -> list[Path]:
        return [self.workdir / "redis.log"]

    def start(self) -> RedisServer:
        super().start()
        return self

    def __enter__(self) -> RedisServer:
        return self.start()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, workdir={str(self.workdir)!r})"


def cluster_ports(count: int) -> list[int]:
    """`count` free loopback ports whose Redis Cluster bus ports (port + 10000) are free too.

    Candidates are held bound while picking so none repeats.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(a)
            a.bind((LOOPBACK, 0))
            port = a.getsockname()[1]
            if port + 10000 > 65535:
                continue
            b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                b.bind((LOOPBACK, port + 10000))
            except OSError:
                b.close()
                continue
            held.append(b)
            ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


class _ScriptCluster:
    """A cluster of local server processes run by a deploy/local script's
    `cluster start|stop <ports> <dir>` (each node in `<dir>/node-<port>/`
    with its own pidfile). Subclasses name the script, the pidfile and
    which ports the nodes are found by."""

    script: Path
    kind = ""
    pidfile = ""
    start_timeout_s = 120.0
    stop_timeout_s = 60.0

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix=f"agentmesh-{self.kind}-cluster-")
        self.workdir = Path(workdir).resolve()
        self.ports: list[int] = []

    def _pick_ports(self) -> list[int]:
        raise NotImplementedError

    def _node_ports(self) -> list[int]:
        """The ports whose `node-<port>/` directories hold the nodes."""
        return self.ports

    def _logs(self) -> list[Path]:
        raise NotImplementedError

    def pids(self) -> dict[int, int]:
        """Node port -> PID of each node process that is alive."""
        out: dict[int, int] = {}
        for port in self._node_ports():
            try:
                pid = int((self.workdir / f"node-{port}" / self.pidfile).read_text().strip())
            except (OSError, ValueError):
                continue
            if pid_alive(pid):
                out[port] = pid
        return out

    def start(self) -> Self:
        """Start the nodes that are not running (`<script> cluster start`)
        and wait until the script says the cluster is up.

        Raises:
            InfraError: a node did not start or the cluster did not form.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = self._pick_ports()
        try:
            _run_script(
                self.script,
                ["cluster", "start", ",".join(map(str, self.ports)), str(self.workdir)],
                env={},
                timeout_s=self.start_timeout_s,
                logs=self._logs(),
            )
        except InfraError:
            with contextlib.suppress(InfraError):
                self.stop()
            raise
        _RUNNING.add(self)  # type: ignore[arg-type]
        return self

    def stop(self) -> None:
        """Stop every node by the PID in its pidfile (`<script> cluster stop`).

        Raises:
            InfraError: a node could not be stopped.
        """
        pids = self.pids()
        _run_script(
            self.script,
            ["cluster", "stop", str(self.workdir)],
            env={},
            timeout_s=self.stop_timeout_s,
            logs=self._logs(),
        )
        _RUNNING.discard(self)  # type: ignore[arg-type]
        alive = [pid for pid in pids.values() if pid_alive(pid)]
        if alive:
            raise InfraError(f"{self.kind} cluster pids {alive} still alive after stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisClusterServer(_ScriptCluster):
    """A 3-master, 3-replica Redis Cluster on loopback, run by
    `deploy/local/redis.sh cluster` (six redis-server processes).

    Args:
        workdir: directory of the nodes (`node-<port>/` each); None makes a temp dir.

    Attributes:
        ports: the six node ports (after `start`).
        nodes: `127.0.0.1:p1,...` for AGENTMESH_REDIS_CLUSTER_NODES / `--redis-cluster`.
        url: `redis://127.0.0.1:<first port>/0` (cluster mode reads only auth from it).
    """

    script = REDIS_SH
    kind = "redis"
    pidfile = "redis.pid"

    def _pick_ports(self) -> list[int]:
        return cluster_ports(6)

    @property
    def nodes(self) -> str:
        """Startup nodes, `127.0.0.1:p1,...,127.0.0.1:p6`."""
        return ",".join(f"{LOOPBACK}:{p}" for p in self.ports)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """The nodes as (host, port) pairs, for `create_redis(cluster_nodes=...)`."""
        return [(LOOPBACK, p) for p in self.ports]

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<first port>/0`."""
        return f"redis://{LOOPBACK}:{self.ports[0]}/0"

    def _logs(self) -> list[Path]:
        return [self.workdir / f"node-{p}" / "redis.log" for p in self.ports] + [
            self.workdir / "cluster-create.out"
        ]

    def flush_all(self) -> None:
        """FLUSHALL on every master (the test cluster belongs to the session)."""
        import redis

        for port in self.ports:
            client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=5)
            try:
                if client.info("replication").get("role") == "master":
                    client.flushall()
            finally:
                client.close()

    def __repr__(self) -> str:
        return f"RedisClusterServer(ports={self.ports}, workdir={str(self.workdir)!r})"


class KafkaBroker(_ManagedServer):
    """A private single-node KRaft Kafka broker, run by `deploy/local/kafka.sh`.

    Args:
        port: PLAINTEXT port; None picks a free one on first start. The
            controller listener gets its own free port.
        workdir: directory for config, data, logs and pidfile; None makes a temp dir.
        sasl_users: when given ({user: password}), the broker also opens a
            SASL_PLAINTEXT listener (mechanism PLAIN) on `sasl_port` that
            accepts exactly these users.

    Attributes:
        bootstrap: `127.0.0.1:<port>`, for `bootstrap.servers`.
        sasl_bootstrap: `127.0.0.1:<sasl_port>`, the SASL_PLAINTEXT listener.
        controller_port: the KRaft controller listener port.
        managed: always True; `ExternalKafka` has False.
    """

    _script = KAFKA_SH
    _pidfile_name = "kafka.pid"
    _kind = "kafka"
    # First run may download ~40 MB of jars through Maven; JVM start is ~10 s.
    start_timeout_s = 600.0
    stop_timeout_s = 90.0

    def __init__(
        self,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        sasl_users: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port, workdir)
        self.controller_port = 0
        self.sasl_users = dict(sasl_users or {})
        self.sasl_port = 0

    @property
    def sasl_bootstrap(self) -> str:
        """`127.0.0.1:<sasl_port>`; only with `sasl_users`."""
        if not self.sasl_port:
            raise InfraError("KafkaBroker has no SASL listener (sasl_users) or is not started")
        return f"{LOOPBACK}:{self.sasl_port}"

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:<port>`."""
        if not self.port:
            raise InfraError("KafkaBroker has no port yet; call start() first")
        return f"{LOOPBACK}:{self.port}"

    def _pick_ports(self) -> None:
        self.port, self.controller_port = free_ports(2)

    def _start_args(self) -> tuple[list[str], dict[str, str]]:
        while not self.controller_port or self.controller_port == self.port:
            self.controller_port = free_port()
        env = {"KAFKA_CONTROLLER_PORT": str(self.controller_port)}
        if self.sasl_users:
            while self.sasl_port in (0, self.port, self.controller_port):
                self.sasl_port = free_port()
            env["KAFKA_SASL_PORT"] = str(self.sasl_port)
            env["KAFKA_SASL_USERS"] = ",".join(f"{u}:{p}" for u, p in self.sasl_users.items())
        return [str(self.port), str(self.workdir)], env

    def _logs(self) -> list[Path]:
        return [self.workdir / "kafka.out", self.workdir / "logs" / "server.log"]

    def start(self) -> KafkaBroker:
        super().start()
        return self

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __repr__(self) -> str:
        return f"KafkaBroker(port={self.port}, workdir={str(self.workdir)!r})"


class KafkaCluster(_ScriptCluster):
    """Three KRaft Kafka nodes (each broker and controller) on loopback, run by
    `deploy/local/kafka.sh cluster` (three JVMs, -Xmx512m each).

    Args:
        workdir: directory of the nodes (`node-<broker port>/` each, with its
            own pidfile, config, data and logs); None makes a temp dir.

    Attributes:
        ports: six ports after `start`: the brokers' three, then the
            controllers' three (kafka.sh's `b1,b2,b3,c1,c2,c3`).
        broker_ports: the three PLAINTEXT ports.
        bootstrap: `127.0.0.1:b1,127.0.0.1:b2,127.0.0.1:b3`, for
            `bootstrap.servers` / AGENTMESH_KAFKA_BOOTSTRAP (the same string
            kafka.sh writes to `<workdir>/bootstrap`).
        managed: always True (tests may kill and restart nodes).
    """

    managed = True
    nodes = 3
    # Three JVMs start at once on a small shared machine; the first run may
    # also fetch the jars.
    start_timeout_s = 600.0
    stop_timeout_s = 120.0
    script = KAFKA_SH
    kind = "kafka"
    pidfile = "kafka.pid"

    def _pick_ports(self) -> list[int]:
        return free_ports(2 * self.nodes)

    def _node_ports(self) -> list[int]:
        return self.broker_ports

    @property
    def broker_ports(self) -> list[int]:
        """The brokers' PLAINTEXT ports (empty before `start`)."""
        return self.ports[: self.nodes]

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:b1,127.0.0.1:b2,127.0.0.1:b3`."""
        if not self.ports:
            raise InfraError("KafkaCluster has no ports yet; call start() first")
        return ",".join(f"{LOOPBACK}:{p}" for p in self.broker_ports)

    def node_dir(self, port: int) -> Path:
        """The directory of the node whose broker listens on `port`."""
        return self.workdir / f"node-{port}"

    def node_id(self, port: int) -> int:
        """The Kafka node id (1..3) of the broker on `port`."""
        return self.broker_ports.index(port) + 1

    def port_of(self, node_id: int) -> int:
        """The broker port of Kafka node `node_id` (1..3)."""
        return self.broker_ports[node_id - 1]

    def kill(self, port: int, sig: int = 9) -> int:
        """Send `sig` (default SIGKILL) to the node on broker `port`, by the
        PID in its pidfile, and wait (up to 30 s) for it to exit when the
        signal is SIGKILL or SIGTERM. Returns the PID. `start()` brings the
        node back on the same ports and data.

        Raises:
            InfraError: the node is not running or did not exit.
        """
        import signal as _signal
        import time as _time

        pid = self.pids().get(port)
        if pid is None:
            raise InfraError(f"kafka cluster node on port {port} is not running")
        os.kill(pid, sig)
        if sig in (_signal.SIGKILL, _signal.SIGTERM):
            deadline = _time.monotonic() + 30.0
            while pid_alive(pid):
                if _time.monotonic() > deadline:
                    raise InfraError(f"kafka pid {pid} still alive 30 s after signal {sig}")
                _time.sleep(0.05)
        return pid

    def _logs(self) -> list[Path]:
        return [self.node_dir(p) / "logs" / "server.log" for p in self.broker_ports] + [
            self.node_dir(p) / "kafka.out" for p in self.broker_ports
        ]

    def __repr__(self) -> str:
        return f"KafkaCluster(ports={self.ports}, workdir={str(self.workdir)!r})"


class ExternalRedis:
    """An already running Redis named by a URL (e.g. `AGENTMESH_TEST_REDIS_URL`).

    Exposes the read-only part of `RedisServer`. It is not ours to stop, so
    `start()` is a no-op and `stop()`/`restart()` raise.
    """

    managed = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise InfraError(f"not a redis:// URL: {url!r}")
        self.url = url
        self.host: str = parts.hostname
        self.port: int = parts.port or 6379

    def url_for_db(self, db: int) -> str:
        """URL of logical database `db` on this server."""
        return redis_url_with_db(self.url, db)

    def start(self) -> ExternalRedis:
        return self

    def stop(self) -> None:
        raise InfraError("external Redis is not managed by the tests; stop() is not allowed")

    def restart(self) -> None:
        raise InfraError("external Redis is not managed by the tests; restart() is not allowed")

    def __repr__(self) -> str:
        return f"ExternalRedis({self.url!r})"


class ExternalKafka:
    """An already running Kafka named by `AGENTMESH_TEST_KAFKA_BOOTSTRAP`."""

    managed = False

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        self.host = host or LOOPBACK
        self.port = int(port) if port.isdigit() else 9092

    def start(self) -> ExternalKafka:
        return self

    def stop(self) -> None:
        raise InfraError("external Kafka is not managed by the tests; stop() is not allowed")

    def __repr__(self) -> str:
        return f"ExternalKafka({self.bootstrap!r})"
