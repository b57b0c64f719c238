"""TaskService on a real coordinator with real SDK agents: states and
transitions, strategies, priority order, the capacity cap, cancel, delayed
start, idempotent scheduling and bad input."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.task.v1 import task_pb2, task_pb2_grpc
from tests.integration.tasks.conftest import (
    run_log,
    runs,
    start_coordinator,
    states_of,
    wait_final,
    wait_state,
)

T = task_pb2
B = task_pb2.BalanceStrategy
pytestmark = pytest.mark.asyncio


def req(action: str, *, agent_id: str = "ta-a", payload: dict[str, Any] | None = None,
        capabilities: list[str] | None = None, **kw: Any) -> task_pb2.ScheduleTaskRequest:
    r = T.ScheduleTaskRequest(task_type=action, **kw)
    if capabilities is not None:
        r.selector.capabilities.extend(capabilities)
    else:
        r.agent_id = agent_id
    if payload:
        r.payload.update(payload)
    return r


async def schedule(stub: task_pb2_grpc.TaskServiceStub, action: str, **kw: Any) -> task_pb2.Task:
    return (await stub.ScheduleTask(req(action, **kw))).task


def violations(e: grpc.aio.AioRpcError) -> dict[str, str]:
    for k, v in e.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(v)
            for d in st.details:
                br = error_details_pb2.BadRequest()
                if d.Unpack(br):
                    return {f.field: f.description for f in br.field_violations}
    return {}


# ---- states ----------------------------------------------------------------------------
async def test_completed_goes_pending_scheduled_running_completed(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    t = await schedule(stub, "echo", payload={"x": 1})
    assert t.state == T.TASK_STATE_PENDING
    assert await states_of(stub, t.task_id) == ["PENDING", "SCHEDULED", "RUNNING", "COMPLETED"]
    done = await wait_final(stub, t.task_id)
    assert done.result["echo"]["x"] == 1
    assert done.assigned_agent_id == "ta-a" and done.attempt == 1
    assert done.HasField("start_time") and done.HasField("end_time")
    assert runs(rsync, "ta-a", f"task/{t.task_id}") == 1


async def test_retryable_failure_goes_retrying_then_completes(
    stub: task_pb2_grpc.TaskServiceStub,
) -> None:
    t = await schedule(stub, "flaky", payload={"fail_attempts": 1},
                       retry_policy=T.TaskRetryPolicy(max_attempts=3))
    assert await states_of(stub, t.task_id) == [
        "PENDING", "SCHEDULED", "RUNNING", "RETRYING", "SCHEDULED", "RUNNING", "COMPLETED"
    ]
    done = await wait_final(stub, t.task_id)
    assert done.attempt == 2 and done.failed_attempts == 1


async def test_non_retryable_failure_is_failed(stub: task_pb2_grpc.TaskServiceStub) -> None:
    t = await schedule(stub, "fail")
    done = await wait_final(stub, t.task_id)
    assert done.state == T.TASK_STATE_FAILED
    assert done.error.code == "FAILED_PRECONDITION" and done.attempt == 1


async def test_retries_exhausted_is_failed(stub: task_pb2_grpc.TaskServiceStub) -> None:
    t = await schedule(stub, "flaky", payload={"fail_attempts": 5},
                       retry_policy=T.TaskRetryPolicy(max_attempts=2))
    done = await wait_final(stub, t.task_id)
    assert done.state == T.TASK_STATE_FAILED
    assert done.error.code == "UNAVAILABLE" and done.failed_attempts == 2


async def test_attempt_past_its_timeout_is_timeout(stub: task_pb2_grpc.TaskServiceStub) -> None:
    r = req("slow", payload={"delay_ms": 3000}, retry_policy=T.TaskRetryPolicy(max_attempts=1))
    r.timeout.FromMilliseconds(300)
    t = (await stub.ScheduleTask(r)).task
    done = await wait_final(stub, t.task_id)
    assert done.state == T.TASK_STATE_TIMEOUT
    assert done.error.code == "DEADLINE_EXCEEDED"


async def test_no_agent_with_the_capability_stays_pending_then_times_out(
    stub: task_pb2_grpc.TaskServiceStub,
) -> None:
    r = req("echo", capabilities=["nobody_has_this"])
    r.schedule_to_start_timeout.FromMilliseconds(800)
    t = (await stub.ScheduleTask(r)).task
    await asyncio.sleep(0.4)
    mid = (await stub.GetTask(T.GetTaskRequest(task_id=t.task_id))).task
    assert mid.state == T.TASK_STATE_PENDING
    done = await wait_final(stub, t.task_id)
    assert done.state == T.TASK_STATE_TIMEOUT and done.attempt == 0
    assert await states_of(stub, t.task_id) == ["PENDING", "TIMEOUT"]


async def test_schedule_to_start_timeout_holds_behind_a_long_backlog(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    # More waiting tasks than one scheduling pass reads (BATCH per class), all
    # with a long timeout, then one with a short one at the back of the queue.
    backlog = []
    for _ in range(300):
        b = req("echo", capabilities=["nobody_backlog"])
        b.schedule_to_start_timeout.FromMilliseconds(60_000)
        backlog.append(b)
    ids = [t.task.task_id for t in await asyncio.gather(*(stub.ScheduleTask(b) for b in backlog))]
    try:
        late = req("echo", capabilities=["nobody_backlog"])
        late.schedule_to_start_timeout.FromMilliseconds(500)
        t = (await stub.ScheduleTask(late)).task
        done = await wait_final(stub, t.task_id, timeout_s=10)
        assert done.state == T.TASK_STATE_TIMEOUT and done.attempt == 0
    finally:  # cancelled so they leave nothing queued for the next tests
        for tid in ids:
            await stub.CancelTask(T.CancelTaskRequest(task_id=tid))


# ---- cancel, delayed start, idempotency --------------------------------------------------
async def test_cancel_of_a_queued_task_never_starts_it(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    nb = timestamp_pb2.Timestamp()
    nb.FromMilliseconds(int(time.time() * 1000) + 60_000)
    t = await schedule(stub, "echo", not_before=nb)
    c = (await stub.CancelTask(T.CancelTaskRequest(task_id=t.task_id))).task
    assert c.state == T.TASK_STATE_CANCELLED
    await asyncio.sleep(0.3)
    assert (await stub.GetTask(T.GetTaskRequest(task_id=t.task_id))).task.state == (
        T.TASK_STATE_CANCELLED
    )
    assert all(key != f"task/{t.task_id}" for _, key, _ in run_log(rsync))
    assert await states_of(stub, t.task_id) == ["PENDING", "CANCELLED"]


async def test_cancel_of_a_running_task_cancels_its_call(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    t = await schedule(stub, "slow", payload={"delay_ms": 10_000})
    await wait_state(stub, t.task_id, T.TASK_STATE_RUNNING)
    await asyncio.sleep(0.2)
    c = (await stub.CancelTask(T.CancelTaskRequest(task_id=t.task_id))).task
    assert c.cancel_requested
    t0 = time.monotonic()
    done = await wait_final(stub, t.task_id, timeout_s=5)
    assert done.state == T.TASK_STATE_CANCELLED
    assert time.monotonic() - t0 < 3.0
    assert runs(rsync, "ta-a", f"task/{t.task_id}") == 0


async def test_delayed_start_waits_for_not_before(stub: task_pb2_grpc.TaskServiceStub) -> None:
    nb_ms = int(time.time() * 1000) + 1200
    nb = timestamp_pb2.Timestamp()
    nb.FromMilliseconds(nb_ms)
    t = await schedule(stub, "echo", not_before=nb)
    await asyncio.sleep(0.5)
    assert (await stub.GetTask(T.GetTaskRequest(task_id=t.task_id))).task.state == (
        T.TASK_STATE_PENDING
    )
    done = await wait_final(stub, t.task_id)
    assert done.state == T.TASK_STATE_COMPLETED
    assert done.start_time.ToMilliseconds() >= nb_ms


async def test_same_idempotency_key_returns_the_first_task(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    a = await stub.ScheduleTask(req("echo", payload={"v": 1}, idempotency_key="idem-1"))
    b = await stub.ScheduleTask(req("echo", payload={"v": 2}, idempotency_key="idem-1"))
    assert not a.already_scheduled and b.already_scheduled
    assert a.task.task_id == b.task.task_id
    done = await wait_final(stub, a.task.task_id)
    assert done.result["echo"]["v"] == 1
    c = await stub.ScheduleTask(req("echo", payload={"v": 3}, idempotency_key="idem-1"))
    assert c.already_scheduled and c.task.state == T.TASK_STATE_COMPLETED
    assert runs(rsync, "ta-a", f"task/{a.task.task_id}") == 1


# ---- capacity and priority ---------------------------------------------------------------
async def test_capacity_two_never_runs_three_at_once(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    ids = [
        (await schedule(stub, "slow", payload={"delay_ms": 300}, capabilities=["cap2"])).task_id
        for _ in range(8)
    ]
    done = await asyncio.gather(*(wait_final(stub, i) for i in ids))
    assert all(d.state == T.TASK_STATE_COMPLETED for d in done)
    assert int(rsync.get("am:tasktest:ta-cap2:max") or 0) == 2  # used, never exceeded


async def test_capacity_holds_across_two_coordinator_replicas(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis, task_redis_url: str,
    tmp_path: Path,
) -> None:
    # the slots are shared in Redis: two replicas scheduling from the same
    # queues still never run more than 2 at once on the capacity-2 agent
    rsync.delete("am:tasktest:ta-cap2:max")
    with start_coordinator(task_redis_url, tmp_path) as second:
        async with grpc.aio.insecure_channel(second.target) as ch:
            other = task_pb2_grpc.TaskServiceStub(ch)
            ids = [
                (await schedule(s, "slow", payload={"delay_ms": 250},
                                capabilities=["cap2"])).task_id
                for _ in range(6) for s in (stub, other)
            ]
            done = await asyncio.gather(*(wait_final(stub, i) for i in ids))
    assert all(d.state == T.TASK_STATE_COMPLETED for d in done)
    assert int(rsync.get("am:tasktest:ta-cap2:max") or 0) == 2


async def test_priority_order_under_a_backlog_still_serves_low(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    blocker = await schedule(stub, "slow", payload={"delay_ms": 1000, "tag": "blocker"},
                             capabilities=["cap1"])
    await wait_state(stub, blocker.task_id, T.TASK_STATE_RUNNING)
    ids = []
    for prio, tag in ((common_pb2.PRIORITY_LOW, "low"), (common_pb2.PRIORITY_CRITICAL, "crit")):
        for i in range(6):
            ids.append((await schedule(stub, "echo", capabilities=["cap1"], priority=prio,
                                       payload={"tag": f"{tag}{i}"})).task_id)
    await asyncio.gather(*(wait_final(stub, i) for i in ids))
    tags = [tag for agent, _, tag in run_log(rsync) if agent == "ta-cap1" and tag != "blocker"]
    assert len(tags) == 12
    # CRITICAL first (8:1 weights), FIFO within a class, LOW served before CRITICAL ran out
    assert tags[0] == "crit0"
    assert [t for t in tags if t.startswith("crit")] == [f"crit{i}" for i in range(6)]
    assert [t for t in tags if t.startswith("low")] == [f"low{i}" for i in range(6)]
    assert tags.index("low0") < tags.index("crit5")
    assert tags.index("low0") >= 3


# ---- strategies --------------------------------------------------------------------------
async def _agents_of(stub: task_pb2_grpc.TaskServiceStub, n: int, **kw: Any) -> list[str]:
    out = []
    action = kw.pop("action", "echo")
    for _ in range(n):
        t = await schedule(stub, action, capabilities=["pool"], **kw)
        out.append((await wait_final(stub, t.task_id)).assigned_agent_id)
    return out


async def test_round_robin_rotates(stub: task_pb2_grpc.TaskServiceStub) -> None:
    got = await _agents_of(stub, 6, strategy=B.BALANCE_STRATEGY_ROUND_ROBIN)
    assert Counter(got) == {"ta-p1": 2, "ta-p2": 2, "ta-p3": 2}
    assert got[:3] == got[3:]


async def test_round_robin_is_the_default_of_its_task_type(
    stub: task_pb2_grpc.TaskServiceStub,
) -> None:
    got = await _agents_of(stub, 3, action="rr_type")
    assert sorted(got) == ["ta-p1", "ta-p2", "ta-p3"]


async def test_least_loaded_spreads_concurrent_tasks(stub: task_pb2_grpc.TaskServiceStub) -> None:
    ts = [
        await schedule(stub, "slow", payload={"delay_ms": 500}, capabilities=["pool"],
                       strategy=B.BALANCE_STRATEGY_LEAST_LOADED)
        for _ in range(3)
    ]
    done = await asyncio.gather(*(wait_final(stub, t.task_id) for t in ts))
    assert sorted(d.assigned_agent_id for d in done) == ["ta-p1", "ta-p2", "ta-p3"]


async def test_random_uses_more_than_one_agent(stub: task_pb2_grpc.TaskServiceStub) -> None:
    got = await _agents_of(stub, 12, strategy=B.BALANCE_STRATEGY_RANDOM)
    assert len(set(got)) > 1


async def test_priority_weighted_sends_critical_to_the_healthiest(
    stub: task_pb2_grpc.TaskServiceStub,
) -> None:
    got = await _agents_of(stub, 4, strategy=B.BALANCE_STRATEGY_PRIORITY_WEIGHTED,
                           priority=common_pb2.PRIORITY_CRITICAL)
    assert set(got) == {"ta-p1"}


async def test_capability_match_prefers_the_best_match(
    stub: task_pb2_grpc.TaskServiceStub,
) -> None:
    got = await _agents_of(stub, 3, strategy=B.BALANCE_STRATEGY_CAPABILITY_MATCH)
    assert set(got) == {"ta-p1"}  # exactly "pool"; the others have more
    t = (await stub.ScheduleTask(T.ScheduleTaskRequest(
        task_type="echo", selector=common_pb2.AgentSelector(capabilities=["pool", "extra1"]),
        strategy=B.BALANCE_STRATEGY_CAPABILITY_MATCH))).task
    assert (await wait_final(stub, t.task_id)).assigned_agent_id == "ta-p2"


# ---- list and bad input --------------------------------------------------------------------
async def test_list_filters_by_state_type_and_agent_with_paging(
    stub: task_pb2_grpc.TaskServiceStub,
) -> None:
    ids = [(await schedule(stub, "listed_type")).task_id for _ in range(5)]
    await asyncio.gather(*(wait_final(stub, i) for i in ids))
    seen: list[str] = []
    token = ""
    while True:
        resp = await stub.ListTasks(T.ListTasksRequest(
            task_type="listed_type", states=[T.TASK_STATE_COMPLETED], agent_id="ta-a",
            page_size=2, page_token=token))
        assert len(resp.tasks) <= 2
        seen += [t.task_id for t in resp.tasks]
        token = resp.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    none = await stub.ListTasks(T.ListTasksRequest(task_type="listed_type",
                                                   states=[T.TASK_STATE_FAILED]))
    assert not none.tasks


async def test_bad_input_is_invalid_argument_and_stores_nothing(
    stub: task_pb2_grpc.TaskServiceStub, rsync: redis.Redis
) -> None:
    before = rsync.zcard("am:task:index")
    bad: list[tuple[task_pb2.ScheduleTaskRequest, str]] = []
    bad.append((req(""), "task_type"))
    r = req("echo")
    r.timeout.seconds = -1
    bad.append((r, "timeout"))
    big = req("echo")
    big.payload.update({"blob": "x" * 5000})
    bad.append((big, "payload"))
    bad.append((T.ScheduleTaskRequest(task_type="echo"), "target"))
    for r, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.ScheduleTask(r)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(ei.value)
    for states in ([T.TASK_STATE_UNSPECIFIED], [99]):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.ListTasks(T.ListTasksRequest(states=states))  # type: ignore[arg-type]
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(ei.value)
    assert rsync.zcard("am:task:index") == before
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.GetTask(T.GetTaskRequest(task_id="t-nope"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND

