"""A coordinator SIGKILLed with tasks queued and running: after a restart every
task reaches a terminal state and each task's effect happens exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from agentmesh.task.v1 import task_pb2, task_pb2_grpc
from tests.integration.tasks.conftest import (
    run_log,
    runs,
    start_agent,
    start_coordinator,
    wait_final,
)
from tests.procs import AgentProcess

T = task_pb2
pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def recovery_agents(
    task_redis_url: str, rsync: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[AgentProcess]]:
    """Two agents of capability `recov`, capacity 3 each."""
    log_dir = tmp_path_factory.mktemp("ragents")
    procs = [
        start_agent(aid, task_redis_url, log_dir, rsync, capabilities=["recov"], max_concurrency=3)
        for aid in ("tr-1", "tr-2")
    ]
    yield procs
    for p in procs:
        p.stop()


async def test_sigkill_with_tasks_queued_and_running_recovers_exactly_once(
    task_redis_url: str, rsync: redis.Redis, recovery_agents: list[AgentProcess], tmp_path: Path
) -> None:
    first = start_coordinator(task_redis_url, tmp_path)
    try:
        async with grpc.aio.insecure_channel(first.target) as ch:
            stub = task_pb2_grpc.TaskServiceStub(ch)
            ids = []
            for i in range(14):
                r = T.ScheduleTaskRequest(task_type="slow")
                r.selector.capabilities.append("recov")
                r.payload.update({"delay_ms": 700, "tag": f"r{i}"})
                ids.append((await stub.ScheduleTask(r)).task.task_id)
            # wait until both agents are full (6 running) and the rest is queued
            for _ in range(200):
                states = [
                    (await stub.GetTask(T.GetTaskRequest(task_id=i))).task.state for i in ids
                ]
                if states.count(T.TASK_STATE_RUNNING) == 6:
                    break
                await asyncio.sleep(0.02)
            assert states.count(T.TASK_STATE_RUNNING) == 6
            assert states.count(T.TASK_STATE_PENDING) == 8
    finally:
        first.signal(signal.SIGKILL)
        first.wait()
    second = start_coordinator(task_redis_url, tmp_path)
    try:
        async with grpc.aio.insecure_channel(second.target) as ch:
            stub = task_pb2_grpc.TaskServiceStub(ch)
            done = await asyncio.gather(*(wait_final(stub, i, timeout_s=60) for i in ids))
    finally:
        second.stop()
    assert all(d.state == T.TASK_STATE_COMPLETED for d in done), [d.state for d in done]
    for d in done:
        key = f"task/{d.task_id}"
        assert runs(rsync, "tr-1", key) + runs(rsync, "tr-2", key) == 1, (
            d.assigned_agent_id, d.attempt, [e for e in run_log(rsync) if e[1] == key]
        )
    resumed = [d for d in done if d.attempt > 1]
    assert resumed, "no task was running when the coordinator died"
    for agent in ("tr-1", "tr-2"):
        assert int(rsync.get(f"am:tasktest:{agent}:max") or 0) <= 3


async def test_agent_killed_mid_task_is_retried_on_another_with_the_same_key(
    task_redis_url: str, rsync: redis.Redis, tmp_path: Path
) -> None:
    agents = {
        aid: start_agent(aid, task_redis_url, tmp_path, rsync, capabilities=["die"])
        for aid in ("td-1", "td-2")
    }
    coord = start_coordinator(task_redis_url, tmp_path)
    try:
        async with grpc.aio.insecure_channel(coord.target) as ch:
            stub = task_pb2_grpc.TaskServiceStub(ch)
            r = T.ScheduleTaskRequest(task_type="slow")
            r.selector.capabilities.append("die")
            r.payload.update({"delay_ms": 3000})
            tid = (await stub.ScheduleTask(r)).task.task_id
            for _ in range(250):
                t = (await stub.GetTask(T.GetTaskRequest(task_id=tid))).task
                if t.state == T.TASK_STATE_RUNNING:
                    break
                await asyncio.sleep(0.02)
            assert t.state == T.TASK_STATE_RUNNING
            first = t.assigned_agent_id
            key = f"task/{tid}"
            # RUNNING is committed before the call is made: wait until the agent has the call.
            for _ in range(250):
                if any(e[0] == first and e[1] == key for e in run_log(rsync)):
                    break
                await asyncio.sleep(0.02)
            agents[first].kill()  # SIGKILL mid-call: its run never takes effect
            done = await wait_final(stub, tid, timeout_s=60)
    finally:
        coord.stop()
        for p in agents.values():
            p.stop()
    assert done.state == T.TASK_STATE_COMPLETED, done
    assert done.assigned_agent_id != first and done.attempt == 2
    assert runs(rsync, done.assigned_agent_id, key) == 1
    assert runs(rsync, first, key) == 0
    # both attempts carried the task's one idempotency key
    assert [e[0] for e in run_log(rsync) if e[1] == key] == [first, done.assigned_agent_id]
