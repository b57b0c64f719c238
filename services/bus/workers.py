"""`--workers N`: N bus gateway processes serving one port.

One Python process is bound by its GIL: the gateway's per-message work runs
on one core. With `--workers N` the process started becomes a supervisor: it
holds the port, starts N workers (`python -m agentmesh.server.bus` with the
same flags) that bind it with SO_REUSEPORT, and the kernel spreads incoming
connections over them (Linux `SO_REUSEPORT`, socket(7)). Each worker is a
whole gateway: its own producer, consumers, hash chains (writer id
`<instance id>-w<i>`, so the workers' chains never mix) and metrics port
(`--metrics-port` + i). A client's stream stays on the worker its connection
reached; clients spread load by opening several channels (or several
subchannels with `round_robin`).

The supervisor logs one `serving` line (port, workers, their metrics ports)
once every worker serves, forwards SIGTERM/SIGINT to the workers and waits
for their drain, and stops all of them when one exits on its own (the
process manager, e.g. Kubernetes, restarts the whole group). A supervisor
that dies without that chance (SIGKILL, OOM kill) takes its workers with it:
each worker asks the kernel for SIGTERM when its parent dies
(`prctl(PR_SET_PDEATHSIG)`, prctl(2)) and drains as on any SIGTERM, so no
orphaned gateway keeps serving the port or holding its partitions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from agentmesh.runtime.config import ServerConfig
from agentmesh.server.bus.settings import BusSettings

log = logging.getLogger("agentmesh.bus.workers")

#: Set in a worker's environment to its index: it binds with SO_REUSEPORT
#: and does not supervise.
WORKER_ENV = "AGENTMESH_BUS_WORKER_INDEX"

#: Set in a worker's environment to the supervisor's PID (see die_with_supervisor).
SUPERVISOR_ENV = "AGENTMESH_BUS_SUPERVISOR_PID"

#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

#: Seconds the workers get to start before the supervisor gives up.
START_TIMEOUT_S = 120.0


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker."""
    raw = os.environ.get(WORKER_ENV, "")
    return int(raw) if raw.isdigit() else None


def die_with_supervisor() -> None:
    """In a worker: have the kernel send this process SIGTERM when the
    supervisor dies (Linux prctl(PR_SET_PDEATHSIG)), and send it now if the
    supervisor is already gone (it died between the fork and this call, so
    the worker's parent is no longer the PID in `SUPERVISOR_ENV`). A no-op
    outside a worker and where prctl is not available (not Linux)."""
    raw = os.environ.get(SUPERVISOR_ENV, "")
    if worker_index() is None or not raw.isdigit():
        return
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        log.warning("no prctl here: this worker outlives a SIGKILLed supervisor")
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed",
                    extra={"errno": ctypes.get_errno()})
        return
    if os.getppid() != int(raw):
        os.kill(os.getpid(), signal.SIGTERM)


def _hold_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket on the port: it keeps
    the port for the workers (another process without SO_REUSEPORT cannot
    take it) and picks the port when it is 0; a socket that does not listen
    gets no connections."""
    h = host.strip("[]")
    fam = socket.AF_INET6 if ":" in h else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((h, port))
    return s


def _pump_stderr(i: int, stream: IO[bytes], served: dict[int, dict[str, Any]],
                 cond: threading.Condition) -> None:
    """Forward a worker's log lines to our stderr, except its `serving` line,
    which is noted for the supervisor's own."""
    for line in stream:
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("msg") == "serving":
            with cond:
                served[i] = doc
                cond.notify_all()
            continue
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()


def run_workers(config: ServerConfig, settings: BusSettings, argv: Sequence[str]) -> int:
    """Supervise `settings.workers` gateway processes on one port until
    SIGTERM/SIGINT or until one of them exits; returns the exit status.

    Args:
        config: the parsed configuration (host, port, metrics port).
        settings: the resolved bus settings (workers, instance id, backend).
        argv: the command-line flags, passed on to every worker (with
            `--port`, `--metrics-port`, `--instance-id` and `--workers 1`
            after them, which argparse lets win).

    Raises:
        SystemExit: more than one worker on the memory backend (each worker
            would have its own, unshared log).
    """
    n = settings.workers
    if settings.backend != "kafka":
        raise SystemExit("--workers > 1 needs the Kafka backend: every memory backend "
                         "is private to its process")
    held = _hold_port(config.host, config.port)
    port = held.getsockname()[1]
    stop = threading.Event()
    served: dict[int, dict[str, Any]] = {}
    cond = threading.Condition()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(n):
        metrics_port = config.metrics_port + i if config.metrics_port > 0 else config.metrics_port
        args = [sys.executable, "-m", "agentmesh.server.bus", *argv,
                "--port", str(port), "--metrics-port", str(metrics_port),
                "--instance-id", f"{settings.instance_id}-w{i}", "--workers", "1"]
        p = subprocess.Popen(args, env={**os.environ, WORKER_ENV: str(i),
                                        SUPERVISOR_ENV: str(os.getpid())},
                             stderr=subprocess.PIPE)
        assert p.stderr is not None
        threading.Thread(target=_pump_stderr, args=(i, p.stderr, served, cond),
                         daemon=True, name=f"bus-worker-{i}-log").start()
        procs.append(p)
    status = 0
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with cond:
            while len(served) < n and not stop.is_set():
                if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                    log.error("a worker did not start", extra={"workers": n})
                    return 1
                cond.wait(0.1)
        if not stop.is_set():
            log.info("serving", extra={
                "port": port, "workers": n,
                "metrics_ports": [served[i].get("metrics_port") for i in range(n)],
                "metrics_port": served[0].get("metrics_port"),
                "worker_pids": [p.pid for p in procs],
            })
        while not stop.is_set():
            ended = [p for p in procs if p.poll() is not None]
            if ended:
                # A worker ending on its own is a failure of the group, even
                # with status 0; a signal's negative status becomes 128 + n.
                rc = ended[0].returncode
                status = rc if rc > 0 else 128 - rc if rc < 0 else 1
                log.error("a worker exited; stopping the others",
                          extra={"pid": ended[0].pid, "status": ended[0].returncode})
                break
            stop.wait(0.2)
        return status
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        grace = time.monotonic() + config.grace_period_s + 5
        for p in procs:
            try:
                p.wait(max(0.1, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        held.close()
