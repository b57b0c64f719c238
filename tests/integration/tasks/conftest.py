"""TaskService integration fixtures: Redis DB 14, real SDK test agents, real coordinators.

Agents are registered the way the registry does it (the agent hash, the
index sets, and the descriptor `am:reg:pb:<id>` with the agent's
ServiceLevel.max_concurrency, capabilities and tags), so the scheduler reads
capacity exactly as it does from a live registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from agentmesh import catalog
from agentmesh.registry.v1 import registry_pb2
from agentmesh.task.v1 import task_pb2, task_pb2_grpc
from tests.infra import flush_db
from tests.procs import AgentProcess, DaemonProcess, daemon
from tests.registry_records import queue_agent_record

TASK_DB = 14
HERE = Path(__file__).resolve().parent
FAST = (
    "--lease-ttl-ms", "1500", "--renew-interval-ms", "200", "--recovery-interval-ms", "300",
    "--task-poll-interval-ms", "10",
)
T = task_pb2
TERMINAL = {T.TASK_STATE_COMPLETED, T.TASK_STATE_FAILED, T.TASK_STATE_TIMEOUT,
            T.TASK_STATE_CANCELLED}


@pytest.fixture(scope="module")
def task_redis_url(redis_server: Any) -> str:
    """URL of the task test DB (14), flushed once per module."""
    return flush_db(redis_server.url_for_db(TASK_DB))


@pytest.fixture(scope="module")
def rsync(task_redis_url: str) -> redis.Redis:
    """A synchronous client on the task test DB (decoded strings)."""
    return redis.Redis.from_url(task_redis_url, decode_responses=True)


def register(
    r: redis.Redis,
    agent_id: str,
    endpoint: str,
    *,
    capabilities: Iterable[str] = ("task_test",),
    tags: Iterable[str] = (),
    max_concurrency: int = 0,
    health: float = 1.0,
) -> None:
    """Write the registry records of one agent (hash, indexes, descriptor)."""
    caps, tg = list(capabilities), list(tags)
    desc = registry_pb2.Agent(
        agent_id=agent_id, endpoint=endpoint, capabilities=caps, tags=tg,
        sla=registry_pb2.ServiceLevel(max_concurrency=max_concurrency),
    )
    with r.pipeline() as pipe:
        queue_agent_record(pipe, agent_id, endpoint=endpoint, capabilities=caps, tags=tg,
                           health=health)
        pipe.set(catalog.descriptor_key(agent_id), desc.SerializeToString())
        pipe.execute()


def start_agent(
    agent_id: str, url: str, log_dir: Path, r: redis.Redis, **reg: Any
) -> AgentProcess:
    """Start a task_agent.py process and register it."""
    p = AgentProcess(
        [str(HERE / "task_agent.py"), "--agent-id", agent_id, "--port", "0",
         "--metrics-port", "-1", "--redis-url", url],
        log_dir / f"agent-{agent_id}.log",
        agent_id=agent_id,
    ).start()
    register(r, agent_id, p.target, **reg)
    return p


def start_coordinator(url: str, log_dir: Path, *extra: str) -> DaemonProcess:
    """Start `python -m agentmesh.server.saga` on free ports with fast leases."""
    return daemon("saga", log_dir, "--redis-url", url, *FAST, *extra).start()


@pytest.fixture(scope="module")
def agents(
    task_redis_url: str, rsync: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, AgentProcess]]:
    """The module's agents: `ta-a` (unlimited), `ta-cap2` (capacity 2),
    `ta-cap1` (capacity 1), and three `pool` agents for the strategies."""
    log_dir = tmp_path_factory.mktemp("agents")
    specs: dict[str, dict[str, Any]] = {
        "ta-a": {},
        "ta-cap2": {"capabilities": ["cap2"], "max_concurrency": 2},
        "ta-cap1": {"capabilities": ["cap1"], "max_concurrency": 1},
        "ta-p1": {"capabilities": ["pool"], "health": 1.0},
        "ta-p2": {"capabilities": ["pool", "extra1"], "tags": ["t1"], "health": 0.6},
        "ta-p3": {"capabilities": ["pool", "extra1", "extra2"], "health": 0.5},
    }
    procs: dict[str, AgentProcess] = {}
    try:
        for aid, spec in specs.items():
            procs[aid] = start_agent(aid, task_redis_url, log_dir, rsync, **spec)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="module")
def coordinator(
    task_redis_url: str, agents: dict[str, AgentProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DaemonProcess]:
    """One saga coordinator (serving TaskService) for the module."""
    with start_coordinator(
        task_redis_url, tmp_path_factory.mktemp("saga"), "--task-max-payload-bytes", "4096",
        "--task-default-strategy", "rr_type=ROUND_ROBIN,*=LEAST_LOADED",
    ) as p:
        yield p


@pytest.fixture
async def stub(coordinator: DaemonProcess) -> AsyncIterator[task_pb2_grpc.TaskServiceStub]:
    """A TaskService client on the module's coordinator."""
    async with grpc.aio.insecure_channel(coordinator.target) as ch:
        yield task_pb2_grpc.TaskServiceStub(ch)


# ---- helpers ------------------------------------------------------------------------
async def wait_final(
    stub: task_pb2_grpc.TaskServiceStub, task_id: str, timeout_s: float = 30.0
) -> task_pb2.Task:
    """Poll GetTask until the task is terminal."""
    deadline = time.monotonic() + timeout_s
    while True:
        t = (await stub.GetTask(T.GetTaskRequest(task_id=task_id))).task
        if t.state in TERMINAL:
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {t}")
        await asyncio.sleep(0.02)


async def wait_state(
    stub: task_pb2_grpc.TaskServiceStub, task_id: str, state: int, timeout_s: float = 15.0
) -> task_pb2.Task:
    """Poll GetTask until the task is in `state`."""
    deadline = time.monotonic() + timeout_s
    while True:
        t = (await stub.GetTask(T.GetTaskRequest(task_id=task_id))).task
        if t.state == state:
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} never {T.TaskState.Name(state)}: {t}")
        await asyncio.sleep(0.02)


async def states_of(stub: task_pb2_grpc.TaskServiceStub, task_id: str) -> list[str]:
    """Every state the task went through (WaitTask from revision 0)."""
    out = []
    async for resp in stub.WaitTask(T.WaitTaskRequest(task_id=task_id), timeout=30):
        out.append(T.TaskState.Name(resp.task.state).removeprefix("TASK_STATE_"))
    return out


def runs(r: redis.Redis, agent_id: str, key: str) -> int:
    """Times the task with idempotency key `key` took effect on the agent."""
    return int(r.hget(f"am:tasktest:{agent_id}:exec", key) or 0)


def run_log(r: redis.Redis) -> list[tuple[str, str, str]]:
    """(agent, key, tag) of every run, in the order runs began."""
    return [tuple(e.split("|", 2)) for e in r.lrange("am:tasktest:log", 0, -1)]  # type: ignore[misc]
