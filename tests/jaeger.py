"""A real Jaeger (v2, `cmd/jaeger` built by deploy/local/tools.sh) on free
loopback ports, with deploy/local/jaeger.yaml: OTLP/gRPC in, memory storage,
the HTTP query API out. Used by the tracing e2e test and perf/tracing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.infra import free_ports

ROOT = Path(__file__).resolve().parent.parent


def jaeger_binary() -> str | None:
    """The `jaeger` tools.sh built (on PATH or in ~/go/bin), or None."""
    found = shutil.which("jaeger") or str(Path.home() / "go" / "bin" / "jaeger")
    return found if Path(found).exists() else None


class Jaeger:
    """A Jaeger process on free ports; `otlp` is its OTLP/gRPC endpoint."""

    def __init__(self, log_dir: Path) -> None:
        otlp, http, grpc_port, health = free_ports(4)
        self.otlp = f"127.0.0.1:{otlp}"
        self.api = f"http://127.0.0.1:{http}"
        self._health = f"http://127.0.0.1:{health}/status"
        env = {
            "JAEGER_OTLP_GRPC_PORT": str(otlp),
            "JAEGER_QUERY_HTTP_PORT": str(http),
            "JAEGER_QUERY_GRPC_PORT": str(grpc_port),
            "JAEGER_HEALTH_PORT": str(health),
            "PATH": "/usr/bin:/bin",
        }
        self._log = open(log_dir / "jaeger.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [jaeger_binary() or "jaeger", "--config", str(ROOT / "deploy/local/jaeger.yaml")],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self._health, timeout=1) as r:
                    if json.load(r).get("healthy"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jaeger did not start; see {log_dir / 'jaeger.log'}")
            time.sleep(0.1)

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as Jaeger's query API returns it, or None while unknown."""
        try:
            with urllib.request.urlopen(f"{self.api}/api/traces/{trace_id}", timeout=5) as r:
                data = json.load(r).get("data") or []
        except OSError:
            return None
        return data[0] if data else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
