"""The DBOS Transact peer of bench_saga.py, run as its own process.

`bench_saga.py` starts this process once and sends it one JSON command per
line on stdin; each command runs one bounded phase and answers one JSON line
on stdout. Between phases the bench runs the saga coordinator's phases, so the
two systems are measured interleaved on the same machine and the same agent.

The workflow is five sequential DBOS steps, each one `AgentService.Execute`
call (action `step<i>`, idempotency key `<workflow id>/s<i>`) to the same SDK
agent the sagas call. Two APIs:
  * `sync`: `@DBOS.workflow()` functions called from a pool of threads (one
    per workflow in flight), steps on a blocking grpc channel;
  * `async`: `async` workflow and steps on asyncio, steps on grpc.aio.

Durability: the system database is SQLite (the file `--db`) with
`journal_mode=WAL` and `synchronous=NORMAL` (set on every connection DBOS
opens): a commit survives a process crash; on power loss WAL+NORMAL can lose
the last commits, as Redis `appendfsync everysec` can lose the last second.

Command: {"api": "sync"|"async", "concurrency": N, "seconds": S, "limit": N}
Answer:  {"latencies_ms": [...], "wall_s": S, "cpu_s": S, "errors": N}
where cpu_s is this process's user+system CPU time over the phase (DBOS,
its SQLite writes, the gRPC client of the agent and the workflow driver:
everything a DBOS application process spends on the workflows).

    python perf/saga/dbos_peer.py --agent HOST:PORT --db PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "libs"))

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

#: SQLite connections opened with the pragmas below (reported at start).
_TUNED = [0]


@sa.event.listens_for(sa.engine.Engine, "connect")
def _wal(dbapi_conn: Any, _record: Any) -> None:
    """WAL with synchronous=NORMAL on every SQLite connection (DBOS sets neither)."""
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        _TUNED[0] += 1


class Agent:
    """Blocking and asyncio stubs of the agent (one channel each, shared by all steps)."""

    sync: agent_pb2_grpc.AgentServiceStub
    aio: agent_pb2_grpc.AgentServiceStub


AGENT = Agent()


def _request(i: int) -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(
        action=f"step{i}", idempotency_key=f"{DBOS.workflow_id}/s{i}", attempt=1
    )


@DBOS.step()
def sync_step(i: int) -> int:
    """One Execute call (blocking)."""
    AGENT.sync.Execute(_request(i), timeout=30)
    return i


@DBOS.workflow()
def sync_workflow() -> int:
    """Five sequential steps."""
    for i in range(5):
        sync_step(i)
    return 5


@DBOS.step()
async def async_step(i: int) -> int:
    """One Execute call (asyncio)."""
    await AGENT.aio.Execute(_request(i), timeout=30)
    return i


@DBOS.workflow()
async def async_workflow() -> int:
    """Five sequential steps."""
    for i in range(5):
        await async_step(i)
    return 5


async def phase(cmd: dict[str, Any], pool: ThreadPoolExecutor) -> dict[str, Any]:
    """One closed-loop phase: `concurrency` workflows in flight until `seconds` or `limit`."""
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    errors = 0
    started = 0
    stop_at = time.perf_counter() + float(cmd["seconds"])
    limit = int(cmd["limit"])
    sync = cmd["api"] == "sync"

    async def worker() -> None:
        nonlocal started, errors
        while time.perf_counter() < stop_at and started < limit:
            started += 1
            t0 = time.perf_counter()
            try:
                if sync:
                    await loop.run_in_executor(pool, sync_workflow)
                else:
                    await async_workflow()
            except Exception as e:  # counted and reported, never silent
                errors += 1
                print(f"dbos_peer: workflow failed: {e!r}", file=sys.stderr, flush=True)
                continue
            lat.append((time.perf_counter() - t0) * 1000)

    me = psutil.Process()
    c0 = me.cpu_times()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(int(cmd["concurrency"]))))
    wall = time.perf_counter() - t0
    c1 = me.cpu_times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"latencies_ms": lat, "wall_s": wall, "cpu_s": cpu, "errors": errors}


async def serve(args: argparse.Namespace) -> None:
    """Answer commands from stdin until it closes."""
    AGENT.aio = agent_pb2_grpc.AgentServiceStub(grpc.aio.insecure_channel(args.agent))
    pool = ThreadPoolExecutor(max_workers=128, thread_name_prefix="wf")
    loop = asyncio.get_running_loop()
    with sqlite3.connect(args.db) as c:  # journal_mode is a property of the file
        mode = c.execute("PRAGMA journal_mode").fetchone()[0]
    print(
        json.dumps({"ready": True, "journal_mode": mode, "tuned_connections": _TUNED[0]}),
        flush=True,
    )
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        out = await phase(json.loads(line), pool)
        print(json.dumps(out), flush=True)
    pool.shutdown(wait=True)


def main() -> None:
    """Launch DBOS on the SQLite file and serve commands."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", required=True)
    ap.add_argument("--db", required=True)
    args = ap.parse_args()
    AGENT.sync = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(args.agent))
    config: DBOSConfig = {
        "name": "bench-saga-peer",
        "system_database_url": f"sqlite:///{args.db}",
        "log_level": "WARNING",
        "sys_db_pool_size": 64,
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        asyncio.run(serve(args))
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main()
