"""Start AgentMesh daemons and agents as real processes in tests.

A daemon started with `--port 0` logs `{"msg": "serving", "port": N}` on
stderr once it is bound; `DaemonProcess` waits for that line, so tests never
guess ports or sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """One daemon process.

    Args:
        args: the command after the Python interpreter, e.g. ["-m", "services.registry", ...].
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
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def daemon(
    name: str, log_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> DaemonProcess:
    """A DaemonProcess for `python -m services.<name> --port 0 --metrics-port 0 <flags>`."""
    return DaemonProcess(
        ["-m", f"services.{name}", "--port", "0", "--metrics-port", "0", *flags],
        log_dir / f"{name}-{time.monotonic_ns()}.log",
        env=env,
    )
