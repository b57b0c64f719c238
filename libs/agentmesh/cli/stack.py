"""The local stack behind `agentmesh up|down|status`: Redis and the five daemons
as background processes, with PID files and logs in a run directory.

Run directory layout (default `.run`):
    stack.json            what `up` started: ports, PIDs, Redis, start time
    <daemon>.pid          PID of each daemon
    <daemon>.log          its stdout and stderr (JSON log lines)
    redis/                Redis pidfile, log and data (deploy/local/redis.sh)

`down` signals exactly the PIDs recorded here, after checking each still runs
`agentmesh.server.<daemon>` (so a recycled PID is never hit): SIGTERM, wait for the
drain, then SIGKILL that PID. Redis is stopped through the same script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentmesh.client.base import DAEMONS
from agentmesh.runtime.config import DEFAULT_PORTS
from agentmesh.runtime.files import write_json_atomic

#: Start order: the registry first (others read it), the bus last but one.
START_ORDER = ("registry", "bus", "router", "saga", "swarm")
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """`up` or `down` failed; the message says why and what to do."""


def repo_root() -> Path:
    """The source checkout (where deploy/local lives), or the current directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "deploy" / "local" / "redis.sh").exists():
            return parent
    return Path.cwd()


@dataclass
class DaemonState:
    """One started daemon."""

    name: str
    pid: int
    port: int
    metrics_port: int
    log: str

    @property
    def target(self) -> str:
        """`127.0.0.1:<port>`."""
        return f"127.0.0.1:{self.port}"


@dataclass
class StackState:
    """What `up` started, persisted as stack.json."""

    run_dir: str
    redis_url: str
    redis_port: int = 0
    redis_managed: bool = False
    redis_dir: str = ""
    started_ms: int = 0
    daemons: dict[str, DaemonState] = field(default_factory=dict)

    def save(self) -> None:
        """Write stack.json atomically."""
        write_json_atomic(Path(self.run_dir) / STATE_FILE, asdict(self), indent=2)

    @classmethod
    def load(cls, run_dir: Path) -> StackState | None:
        """Read stack.json, or None when there is none."""
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        daemons = {k: DaemonState(**v) for k, v in doc.pop("daemons", {}).items()}
        return cls(**doc, daemons=daemons)


@dataclass(frozen=True)
class UpOptions:
    """Settings of `agentmesh up`.

    Attributes:
        run_dir: where PID files, logs and stack.json go.
        redis_port: port of the Redis `up` starts (ignored with redis_url).
        redis_url: use this running Redis instead of starting one.
        base_port: gRPC port of the bus; the others follow in DESIGN.md order
            (bus, router, registry, saga, swarm → base+0..4).
        metrics_base_port: metrics port of the bus; the others follow likewise.
        timeout_s: how long to wait for every daemon to be SERVING.
        daemons: which daemons to start.
        extra_env: environment added to every daemon.
    """

    run_dir: Path
    redis_port: int = 6379
    redis_url: str = ""
    base_port: int = DEFAULT_PORTS["bus"][0]
    metrics_base_port: int = DEFAULT_PORTS["bus"][1]
    timeout_s: float = 60.0
    daemons: tuple[str, ...] = START_ORDER
    extra_env: dict[str, str] = field(default_factory=dict)

    def ports(self, daemon: str) -> tuple[int, int]:
        """(gRPC port, metrics port) of `daemon`."""
        i = DAEMONS.index(daemon)
        return self.base_port + i, self.metrics_base_port + i


# ---- processes ------------------------------------------------------------
def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _reap(pid: int) -> None:
    # When `up` ran in this very process (tests), the daemon is our child and
    # becomes a zombie after exiting until reaped.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_free(port: int) -> bool:
    """True when 127.0.0.1:`port` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int, *, lo: int = 20_000, hi: int = 32_000, tries: int = 200) -> int:
    """First port of `n` consecutive free ports in [lo, hi), below Linux's
    ephemeral range so outgoing connections do not take them meanwhile.

    Raises:
        OSError: when no block is found.
    """
    rnd = random.Random()
    for _ in range(tries):
        base = rnd.randrange(lo, hi - n)
        if all(port_free(base + i) for i in range(n)):
            return base
    raise OSError(f"no {n} consecutive free ports in [{lo}, {hi})")


def pid_alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def is_our_daemon(pid: int, name: str) -> bool:
    """True when `pid` is alive and still runs `agentmesh.server.<name>`."""
    return pid_alive(pid) and f"agentmesh.server.{name}" in _cmdline(pid)


def stop_pid(pid: int, name: str, *, grace_s: float) -> str:
    """SIGTERM `pid` if it still runs `agentmesh.server.<name>`, wait, then SIGKILL it.

    Returns:
        "stopped", "killed", "not running", or "skipped" when the PID now
        belongs to another program (a recycled PID is never signalled).
    """
    if not pid_alive(pid):
        return "not running"
    if not is_our_daemon(pid, name):
        return f"skipped (pid {pid} is not agentmesh.server.{name})"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return "stopped"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    return "killed"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- redis ------------------------------------------------------------------
def start_redis(port: int, directory: Path) -> None:
    """Start Redis with deploy/local/redis.sh, or redis-server directly without it.

    Raises:
        StackError: with the script's output when Redis does not come up.
    """
    script = repo_root() / "deploy" / "local" / "redis.sh"
    directory.mkdir(parents=True, exist_ok=True)
    if script.exists():
        res = subprocess.run(
            ["bash", str(script), "start", str(port), str(directory)],
            capture_output=True, text=True, timeout=120,
        )
        if res.returncode != 0:
            raise StackError(
                f"Redis did not start on port {port}:\n{res.stdout}{res.stderr}".rstrip()
                + "\nIs the port taken? Pick another with --redis-port, or use a running "
                "Redis with --redis-url."
            )
        return
    if shutil.which("redis-server") is None:
        raise StackError("redis-server is not installed; run `make setup` or use --redis-url")
    subprocess.run(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
         "--pidfile", str(directory / "redis.pid"), "--logfile", str(directory / "redis.log"),
         "--dir", str(directory), "--save", ""],
        check=True, timeout=30,
    )


def stop_redis(directory: Path) -> str:
    """Stop the Redis whose pidfile is in `directory`; returns what happened."""
    script = repo_root() / "deploy" / "local" / "redis.sh"
    if script.exists():
        res = subprocess.run(
            ["bash", str(script), "stop", str(directory)], capture_output=True, text=True,
            timeout=60,
        )
        return (res.stdout + res.stderr).strip()
    pidfile = directory / "redis.pid"
    if not pidfile.exists():
        return "no pidfile; nothing to stop"
    pid = int(pidfile.read_text().strip())
    if pid_alive(pid) and "redis-server" in _cmdline(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return f"redis pid {pid} stopped"


# ---- up / down / status -------------------------------------------------------
def spawn_daemon(name: str, opts: UpOptions, env: dict[str, str]) -> DaemonState:
    """Start `python -m agentmesh.server.<name>` in the background, in its own session."""
    port, metrics_port = opts.ports(name)
    log_path = opts.run_dir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"agentmesh.server.{name}", "--port", str(port),
             "--metrics-port", str(metrics_port)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a Ctrl-C in the shell must not take the stack down
        )
    (opts.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return DaemonState(name, proc.pid, port, metrics_port, str(log_path))


def daemon_env(opts: UpOptions, redis_url: str) -> dict[str, str]:
    """The environment of every daemon: the caller's, plus the stack's wiring."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **opts.extra_env}
    env["AGENTMESH_REDIS_URL"] = redis_url
    for d in DAEMONS:
        env[f"AGENTMESH_{d.upper()}_TARGET"] = f"127.0.0.1:{opts.ports(d)[0]}"
        # A per-daemon port in the caller's environment would fight our flags.
        env.pop(f"AGENTMESH_{d.upper()}_PORT", None)
        env.pop(f"AGENTMESH_{d.upper()}_METRICS_PORT", None)
    env.pop("AGENTMESH_PORT", None)
    env.pop("AGENTMESH_METRICS_PORT", None)
    return env


async def health_of(targets: dict[str, str], *, timeout_s: float = 1.0) -> dict[str, str]:
    """grpc.health.v1 status of each daemon: SERVING, NOT_SERVING, UNREACHABLE, ..."""
    from agentmesh.client import Client

    async with Client(
        registry=targets.get("registry"), router=targets.get("router"), bus=targets.get("bus"),
        saga=targets.get("saga"), swarm=targets.get("swarm"), retry_attempts=1,
    ) as c:
        names = list(targets)
        results = await asyncio.gather(*(c.health(n, timeout_s=timeout_s) for n in names))
    return dict(zip(names, results, strict=True))


def up(
    opts: UpOptions,
    *,
    on_progress: Callable[[str, str], None] = lambda name, status: None,
) -> StackState:
    """Start Redis and the daemons, wait until every one is SERVING.

    Args:
        opts: settings.
        on_progress: called with (component, status) as things come up.

    Returns:
        The saved stack state.

    Raises:
        StackError: when something is already running in the run directory,
            Redis fails, a daemon exits, or a daemon is not SERVING within
            `opts.timeout_s`. Everything this call started is stopped first.
    """
    run_dir = opts.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    old = StackState.load(run_dir)
    if old is not None:
        alive = [d for d in old.daemons.values() if is_our_daemon(d.pid, d.name)]
        if alive:
            names = ", ".join(f"{d.name} (pid {d.pid})" for d in alive)
            raise StackError(
                f"a stack from {run_dir} is still running: {names}. "
                f"Run `agentmesh down --run-dir {run_dir}` first."
            )
    state = StackState(run_dir=str(run_dir), redis_url=opts.redis_url,
                       started_ms=int(time.time() * 1000))
    try:
        if not opts.redis_url:
            redis_dir = run_dir / "redis"
            on_progress("redis", "starting")
            start_redis(opts.redis_port, redis_dir)
            state.redis_managed = True
            state.redis_port = opts.redis_port
            state.redis_dir = str(redis_dir)
            state.redis_url = f"redis://127.0.0.1:{opts.redis_port}/0"
            state.save()
            on_progress("redis", "SERVING")
        env = daemon_env(opts, state.redis_url)
        for name in opts.daemons:
            state.daemons[name] = spawn_daemon(name, opts, env)
            state.save()
            on_progress(name, "starting")
        _wait_serving(state, opts.timeout_s, on_progress)
    except BaseException:
        down(run_dir, grace_s=10.0)
        raise
    return state


def _wait_serving(
    state: StackState, timeout_s: float, on_progress: Callable[[str, str], None]
) -> None:
    pending = dict(state.daemons)
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    while pending:
        for name, d in list(pending.items()):
            if not pid_alive(d.pid):
                raise StackError(
                    f"{name} exited during startup (pid {d.pid}); last log lines of "
                    f"{d.log}:\n{_tail(Path(d.log))}"
                )
        statuses = asyncio.run(health_of({n: d.target for n, d in pending.items()}))
        for name, status in statuses.items():
            if status != last.get(name):
                on_progress(name, status)
                last[name] = status
            if status == "SERVING":
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            detail = "\n".join(
                f"  {n}: {last.get(n, '?')} — log {d.log}:\n{_tail(Path(d.log), 5)}"
                for n, d in pending.items()
            )
            raise StackError(
                f"not SERVING after {timeout_s:.0f}s: {', '.join(pending)}\n{detail}"
            )
        time.sleep(0.2)


def down(run_dir: Path, *, grace_s: float = 15.0) -> list[tuple[str, str]]:
    """Stop what `up` started from `run_dir`.

    Returns:
        (component, outcome) pairs, e.g. ("router", "stopped").
    """
    results: list[tuple[str, str]] = []
    state = StackState.load(run_dir)
    daemons: dict[str, int] = {}
    if state is not None:
        daemons = {n: d.pid for n, d in state.daemons.items()}
    # PID files cover a crash between spawning and saving stack.json.
    for name in DAEMONS:
        pidfile = run_dir / f"{name}.pid"
        if pidfile.exists() and name not in daemons:
            with contextlib.suppress(ValueError):
                daemons[name] = int(pidfile.read_text().strip())
    # SIGTERM all first so they drain in parallel, then wait for each.
    signalled: set[str] = set()
    for name, pid in daemons.items():
        if is_our_daemon(pid, name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            signalled.add(name)
    for name, pid in daemons.items():
        outcome = stop_pid(pid, name, grace_s=grace_s)
        if outcome == "not running" and name in signalled:
            outcome = "stopped"
        results.append((name, outcome))
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
    redis_dir = Path(state.redis_dir) if state and state.redis_dir else run_dir / "redis"
    if (redis_dir / "redis.pid").exists():
        results.append(("redis", stop_redis(redis_dir)))
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return results


def targets_for(run_dir: Path | None, overrides: dict[str, str | None]) -> dict[str, str]:
    """Daemon targets: explicit overrides, else the run dir's stack, else defaults/env."""
    from agentmesh.client.base import default_target

    state = StackState.load(run_dir) if run_dir is not None else None
    out: dict[str, str] = {}
    for d in DAEMONS:
        if overrides.get(d):
            out[d] = str(overrides[d])
        elif state is not None and d in state.daemons:
            out[d] = state.daemons[d].target
        else:
            out[d] = default_target(d)
    return out


def status_rows(run_dir: Path | None, targets: dict[str, str]) -> list[dict[str, Any]]:
    """One row per daemon: name, target, health, pid (when started by `up`)."""
    state = StackState.load(run_dir) if run_dir is not None else None
    health = asyncio.run(health_of(targets))
    rows = []
    for d in DAEMONS:
        ds = state.daemons.get(d) if state else None
        rows.append({
            "daemon": d,
            "target": targets[d],
            "health": health[d],
            "pid": ds.pid if ds and pid_alive(ds.pid) else None,
            "metrics_port": ds.metrics_port if ds else None,
        })
    return rows
