"""Start AgentMesh daemons and agents as real processes in tests (and benchmarks).

A daemon started with `--port 0` logs `{"msg": "serving", "port": N}` on
stderr once it is bound; `DaemonProcess` waits for that line, so tests never
guess ports or sleep. `serve_until_signal` is the other side of that protocol
for plain grpc.aio servers written on the generated stubs (test agents,
benchmark baselines).

    daemon("registry", tmp_path, "--redis-url", url)      # python -m agentmesh.server.registry
    testing_agent("counting", tmp_path, "--redis-url", url)  # python -m agentmesh.agent.testing
    group = ProcessGroup(); group.start(p); ...; group.stop_all()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import grpc

ROOT = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """One daemon process.

    Args:
        args: the command after the Python interpreter,
            e.g. ["-m", "agentmesh.server.registry", ...].
        log_path: file that receives stdout and stderr.
        env: extra environment variables.
    """

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0
        #: the daemon's `serving` log record, once started
        self.serving: dict[str, Any] = {}

    @property
    def target(self) -> str:
        """`127.0.0.1:<port>` of the gRPC server."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the running process."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> DaemonProcess:
        """Spawn and wait for the `serving` log line.

        Raises:
            RuntimeError: with the log tail if the process exits or is not ready in time.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.args], stdout=log, stderr=log, env=self.env, cwd=ROOT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for doc in self._log_docs(offset):
                if doc.get("msg") == "serving":
                    self.serving = doc
                    self.port = int(doc["port"])
                    self.metrics_port = int(doc.get("metrics_port") or 0)
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.args} not serving after {timeout_s}s:\n{self.tail()}")

    def _log_docs(self, offset: int) -> list[dict[str, Any]]:
        docs = []
        with self.log_path.open("rb") as f:
            f.seek(offset)
            for line in f:
                if line.startswith(b"{"):
                    try:
                        docs.append(json.loads(line))
                    except ValueError:
                        pass
        return docs

    def tail(self, lines: int = 40) -> str:
        """The last lines of the log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send `sig` to the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for exit; returns the exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL this PID if it is still alive."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL this PID and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            return self.proc.wait(timeout=10)
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> DaemonProcess:
        # A process started by a helper (e.g. `daemon(...).start()`) is only stopped on exit.
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def daemon(
    name: str, log_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> DaemonProcess:
    """A DaemonProcess for `python -m agentmesh.server.<name> --port 0 --metrics-port 0 <flags>`."""
    return DaemonProcess(
        ["-m", f"agentmesh.server.{name}", "--port", "0", "--metrics-port", "0", *flags],
        log_dir / f"{name}-{time.monotonic_ns()}.log",
        env=env,
    )


class AgentProcess(DaemonProcess):
    """A DaemonProcess serving AgentService for a known agent id."""

    def __init__(
        self, args: list[str], log_path: Path, *, agent_id: str, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(args, log_path, env=env)
        self.agent_id = agent_id


def testing_agent(
    kind: str, log_dir: Path, *flags: str, agent_id: str = "", env: dict[str, str] | None = None
) -> AgentProcess:
    """An AgentProcess (not started) for the SDK's ready-made test agents:
    `python -m agentmesh.agent.testing <kind> --agent-id ID --port 0 <flags>`.

    Args:
        kind: `noop` or `counting` (see agentmesh/agent/testing.py).
        log_dir: folder of the log file `<agent id>-<ns>.log`.
        agent_id: defaults to `agent-t-<10 hex chars>`.
    """
    agent_id = agent_id or f"agent-t-{uuid.uuid4().hex[:10]}"
    return AgentProcess(
        ["-m", "agentmesh.agent.testing", kind, "--agent-id", agent_id, "--port", "0", *flags],
        log_dir / f"{agent_id}-{time.monotonic_ns()}.log",
        agent_id=agent_id,
        env=env,
    )


# Test modules import this helper; its name must not make pytest collect it as a test.
testing_agent.__test__ = False  # type: ignore[attr-defined]

P = TypeVar("P", bound=DaemonProcess)


class ProcessGroup:
    """Processes started for one test or module; `stop_all` stops every one, newest first."""

    def __init__(self) -> None:
        self.started: list[DaemonProcess] = []

    def start(self, proc: P, timeout_s: float = 30.0) -> P:
        """Start `proc` (see `DaemonProcess.start`) and remember it for `stop_all`."""
        self.started.append(proc)
        proc.start(timeout_s)
        return proc

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """SIGTERM each process (SIGKILL after `timeout_s`)."""
        for p in reversed(self.started):
            p.stop(timeout_s=timeout_s)


def scrape_metrics(port: int, *, timeout_s: float = 5.0) -> str:
    """The Prometheus text exposition served on `http://127.0.0.1:<port>/metrics`.

    Blocking; from async tests call it through `asyncio.to_thread`.
    """
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        return str(r.read().decode())


def log_serving(port: int, **fields: Any) -> None:
    """Log the `{"msg": "serving", "port": N}` line DaemonProcess waits for, on stderr."""
    print(json.dumps({"msg": "serving", "port": port, **fields}), file=sys.stderr, flush=True)


async def serve_until_signal(
    server: grpc.aio.Server,
    *,
    before_serving: Callable[[int], Awaitable[None]] | None = None,
    **fields: Any,
) -> None:
    """Serve a plain grpc.aio server on a free loopback port until SIGTERM/SIGINT.

    The caller adds its servicers first. Once bound and started, this awaits
    `before_serving(port)` (e.g. writing a registration), logs the serving line
    with `fields`, and on the signal stops the server with a 1 s grace.
    """
    import asyncio

    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if before_serving is not None:
        await before_serving(port)
    log_serving(port, **fields)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
