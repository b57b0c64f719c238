"""Agent worker processes: many `Agent`s in one process, and their launcher.

One Python process per agent does not fit a 2-core machine at 100 agents, so
a worker process hosts a group of them in one event loop. Each agent is still
a full `agentmesh.agent.Agent`: its own gRPC server on its own port, its own
registry identity, registration and heartbeats with its own load.

    python -m agentmesh.demo.fleet calculators --first 0 --count 25 \\
        --registry-target 127.0.0.1:50053 --ready-file /tmp/w0.json
    python -m agentmesh.demo.fleet csrd --out-dir demo-out --registry-target ... \\
        --swarm-target ... --bus-target ... --ready-file /tmp/csrd.json

Once every agent is registered the worker writes its ready file (atomically):
    {"pid": 123, "agents": [{"agent_id": "agent-calc-000", "endpoint": "127.0.0.1:41234"}]}
or `{"pid": 123, "error": "..."}` and exits 1 when an agent fails to start.
SIGTERM (or SIGINT) deregisters and drains every agent, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmesh.runtime.files import write_json_atomic

log = logging.getLogger("agentmesh.demo.fleet")

#: Agents started at once inside a worker (bounds the registration burst).
START_CONCURRENCY = 8


def calculator_id(i: int) -> str:
    """Registry id of calculator number `i`, e.g. "agent-calc-007"."""
    return f"agent-calc-{i:03d}"


# ---- inside the worker ------------------------------------------------------------
def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(path, doc)


async def _serve(args: argparse.Namespace) -> int:
    from agentmesh.agent import Agent
    from agentmesh.demo.calculator import DatasetCache, build_calculator
    from agentmesh.demo.data import load_factors

    cache = DatasetCache(load_factors())
    common: dict[str, Any] = {
        "registry_target": args.registry_target,
        "heartbeat_interval_s": args.heartbeat_interval_s,
        "grace_period_s": args.grace_period_s,
        "location": "local",
    }
    agents: list[Agent]
    if args.kind == "calculators":
        agents = [
            build_calculator(calculator_id(i), cache, **common)
            for i in range(args.first, args.first + args.count)
        ]
    else:
        from agentmesh.demo.csrd import CsrdSettings, build_csrd_agents

        agents = build_csrd_agents(
            cache,
            CsrdSettings(out_dir=args.out_dir, swarm_target=args.swarm_target,
                         bus_target=args.bus_target, topic=args.topic),
            redis_url=args.redis_url,  # durable dedupe: a saga step takes effect once
            **common,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Agent] = []
    sem = asyncio.Semaphore(START_CONCURRENCY)

    async def start(a: Agent) -> None:
        async with sem:
            await a.start()
            started.append(a)

    ready = Path(args.ready_file)
    code = 0
    try:
        starting: asyncio.Future[Any] = asyncio.gather(*(start(a) for a in agents))
        waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:  # stopped while starting
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
        else:
            waiter.cancel()
            await starting  # raises when an agent failed to start
            _write_json(ready, {
                "pid": os.getpid(),
                "agents": [{"agent_id": a.agent_id, "endpoint": a.endpoint} for a in agents],
            })
            log.info("fleet ready", extra={"agents": len(agents), "kind": args.kind})
            await stop.wait()
    except Exception as e:
        log.error("fleet failed to start", extra={"error": f"{type(e).__name__}: {e}"})
        _write_json(ready, {"pid": os.getpid(), "error": f"{type(e).__name__}: {e}"})
        code = 1
    finally:
        # Deregister and drain every agent at once (each is bounded by its grace period).
        await asyncio.gather(*(a.stop() for a in started), return_exceptions=True)
        log.info("fleet stopped", extra={"agents": len(started)})
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a worker process."""
    p = argparse.ArgumentParser(prog="python -m agentmesh.demo.fleet",
                                description="Host a group of demo agents in one process.")
    p.add_argument("kind", choices=("calculators", "csrd"))
    p.add_argument("--first", type=int, default=0, help="index of the first calculator")
    p.add_argument("--count", type=int, default=25, help="calculators in this process")
    p.add_argument("--registry-target", required=True)
    p.add_argument("--swarm-target", default="")
    p.add_argument("--bus-target", default="")
    p.add_argument("--redis-url", default="")
    p.add_argument("--out-dir", default="demo-out")
    p.add_argument("--topic", default="demo.csrd.reports")
    p.add_argument("--ready-file", required=True)
    p.add_argument("--heartbeat-interval-s", type=float, default=5.0)
    p.add_argument("--grace-period-s", type=float, default=5.0)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    args.out_dir = Path(args.out_dir).resolve()
    from agentmesh.runtime.logs import configure_logging

    configure_logging(f"fleet-{args.kind}-{args.first}", args.log_level)
    # Per-RPC access logs of 25 agents would drown the worker's log.
    logging.getLogger("agentmesh.server").setLevel(logging.WARNING)
    sys.exit(asyncio.run(_serve(args)))


# ---- launcher (in the demo process) ----------------------------------------------
class FleetError(RuntimeError):
    """A worker process failed to start; the message carries its log tail."""


@dataclass
class WorkerProcess:
    """One worker process started by the demo.

    Attributes:
        name: e.g. "calculators-0".
        args: arguments after `python -m agentmesh.demo.fleet`.
        log_path: where its stdout and stderr go.
        ready_file: the file it writes when its agents are registered.
    """

    name: str
    args: list[str]
    log_path: Path
    ready_file: Path
    proc: subprocess.Popen[bytes] | None = None
    agents: list[dict[str, str]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """PID of the process (0 before `spawn`)."""
        return self.proc.pid if self.proc else 0

    def spawn(self, env: dict[str, str]) -> None:
        """Start the process in its own session (a Ctrl-C reaches only the demo,
        which then stops its workers in order)."""
        self.ready_file.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentmesh.demo.fleet", *self.args,
                 "--ready-file", str(self.ready_file)],
                stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )

    def poll_ready(self) -> bool:
        """True once the ready file lists the agents.

        Raises:
            FleetError: when the worker exited or reported an error.
        """
        assert self.proc is not None
        if self.ready_file.exists():
            doc = json.loads(self.ready_file.read_text())
            if "error" in doc:
                raise FleetError(f"{self.name}: {doc['error']}\n{self.tail()}")
            self.agents = list(doc["agents"])
            return True
        if self.proc.poll() is not None:
            raise FleetError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
        return False

    def tail(self, lines: int = 15) -> str:
        """Last lines of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """Send SIGTERM to this PID if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout_s: float) -> str:
        """Wait for exit after `terminate`; SIGKILL this PID past `timeout_s`.

        Returns:
            "stopped", "killed" or "not running".
        """
        if self.proc is None:
            return "not running"
        try:
            self.proc.wait(timeout=timeout_s)
            return "stopped"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return "killed"


def worker_plan(n_agents: int, per_process: int) -> list[tuple[int, int]]:
    """(first index, count) of each calculator worker: `n_agents` spread evenly
    over ceil(n_agents / per_process) processes."""
    if n_agents < 1:
        return []
    n_proc = -(-n_agents // max(1, per_process))
    base, extra = divmod(n_agents, n_proc)
    plan = []
    first = 0
    for i in range(n_proc):
        count = base + (1 if i < extra else 0)
        plan.append((first, count))
        first += count
    return plan


def wait_all_ready(workers: Sequence[WorkerProcess], *, timeout_s: float,
                   on_ready: Any = None) -> None:
    """Block until every worker is ready.

    Args:
        workers: spawned workers.
        timeout_s: overall limit.
        on_ready: called with each worker as it becomes ready.

    Raises:
        FleetError: when one fails or the time is up.
    """
    pending = list(workers)
    deadline = time.monotonic() + timeout_s
    while pending:
        for w in list(pending):
            if w.poll_ready():
                pending.remove(w)
                if on_ready is not None:
                    on_ready(w)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(w.name for w in pending)
            raise FleetError(f"not ready after {timeout_s:.0f}s: {names}\n{pending[0].tail()}")
        time.sleep(0.1)


def stop_all(workers: Sequence[WorkerProcess], *, grace_s: float = 15.0) -> list[tuple[str, str]]:
    """SIGTERM every worker (they deregister and drain in parallel), then wait
    for each, SIGKILLing any still alive after `grace_s`."""
    for w in workers:
        w.terminate()
    deadline = time.monotonic() + grace_s
    return [(w.name, w.wait_stopped(max(0.1, deadline - time.monotonic()))) for w in workers]


if __name__ == "__main__":
    main()
