"""Crash recovery and lease exclusivity with real coordinator processes:
SIGKILL mid-step and mid-compensation, and several replicas on one Redis."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
import redis

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.events import verify_chain
from tests.integration.saga.conftest import (
    chain,
    effects,
    events,
    order,
    start_coordinator,
    wait_final,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration
S = saga_pb2


def _log_types(r: Any, saga_id: str) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    for _, fields in r.xrange(f"am:saga:{{sagas}}:log:{saga_id}"):
        ev = S.SagaEvent.FromString(fields[b"pb"])
        out.append((ev.type, ev.step_name))
    return out


async def _wait_for_event(
    r: Any, saga_id: str, type_: Any, step: str, timeout_s: float = 15.0
) -> None:
    await eventually(
        lambda: (type_, step) in _log_types(r, saga_id),
        timeout_s=timeout_s,
        every_s=0.02,
        what=f"{S.SagaEventType.Name(type_)} for {step}",
    )


def _check_single_driver(evs: list[S.SagaEvent]) -> None:
    """Fencing tokens never go down, and between two LEASE_ACQUIRED events only
    the replica that took the lease appended."""
    fence, owner = 0, ""
    for e in evs[1:]:
        if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED:
            assert e.fencing_token > fence
            fence, owner = e.fencing_token, e.coordinator_id
        assert (e.fencing_token, e.coordinator_id) == (fence, owner)


@pytest.fixture
def rbytes(saga_redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(saga_redis_url)


@pytest.mark.parametrize("phase", ["step", "compensation"])
async def test_sigkill_then_restart_resumes_exactly_once(
    phase, agent, saga_redis_url, rsync, rbytes, tmp_path
) -> None:
    first = start_coordinator(saga_redis_url, tmp_path)
    steps = chain("a", "b", "c")
    if phase == "step":
        steps[1].action = "slow_b"
        watch = (S.SAGA_EVENT_TYPE_STEP_STARTED, "b")
    else:
        steps[1].compensation_action = "cslow_b"
        steps[2].action = "fail_c"
        watch = (S.SAGA_EVENT_TYPE_STEP_COMPENSATION_STARTED, "b")
    try:
        async with grpc.aio.insecure_channel(first.target) as ch:
            started = await saga_pb2_grpc.SagaServiceStub(ch).StartSaga(
                S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
            )
        saga_id = started.saga.saga_id
        await _wait_for_event(rbytes, saga_id, *watch)
        first.kill()  # SIGKILL while b's call (or its compensation) is in flight
    finally:
        first.kill()
    second = start_coordinator(saga_redis_url, tmp_path)
    try:
        async with grpc.aio.insecure_channel(second.target) as ch:
            stub = saga_pb2_grpc.SagaServiceStub(ch)
            saga = await wait_final(stub, saga_id)
            evs = await events(stub, saga_id)
    finally:
        second.stop()
    verify_chain(evs)
    _check_single_driver(evs)
    leases = [e for e in evs if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED]
    assert len(leases) == 2 and leases[0].coordinator_id != leases[1].coordinator_id
    if phase == "step":
        assert saga.state == S.SAGA_STATE_COMPLETED
        assert effects(rsync, saga_id) == {f"{saga_id}/{n}": 1 for n in "abc"}
        b_starts = [
            e.attempt
            for e in evs
            if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "b"
        ]
        assert b_starts == [1, 2]  # re-sent after the crash with the next attempt number
    else:
        assert saga.state == S.SAGA_STATE_COMPENSATED
        assert effects(rsync, saga_id, "comp") == {f"{saga_id}/{n}/compensate": 1 for n in "abc"}
        assert order(rsync, saga_id) == ["c", "b", "a"]


async def test_two_coordinators_never_drive_one_saga_twice(
    agent, saga_redis_url, rsync, tmp_path
) -> None:
    # The API replica drives nothing (max 0 sagas), so the two workers race for
    # every saga through their recovery loops; each drives at most 4 at once, so
    # both must take part.
    api = start_coordinator(saga_redis_url, tmp_path, "--max-active-sagas", "0")
    worker_ids = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(2)]
    workers = [
        start_coordinator(
            saga_redis_url, tmp_path, "--max-active-sagas", "4", "--coordinator-id", wid
        )
        for wid in worker_ids
    ]
    try:
        async with grpc.aio.insecure_channel(api.target) as ch:
            stub = saga_pb2_grpc.SagaServiceStub(ch)
            ids = []
            for i in range(12):
                steps = chain("a", "b", "c")
                if i % 2 == 0:
                    steps[1].action = "slow_b"
                req = S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
                req.input.update({"delay_ms": 1000})
                ids.append((await stub.StartSaga(req)).saga.saga_id)
            # kill one worker while it is inside a slow step (1 s), so the other
            # must take that saga over; a fixed 1 s sleep could fire before the
            # worker had picked anything up on a loaded machine.
            async def first_worker_in_slow_step() -> bool:
                for saga_id in ids[::2]:  # the sagas with slow_b
                    evs = await events(stub, saga_id)
                    started = any(
                        e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "b"
                        and e.coordinator_id == worker_ids[0]
                        for e in evs
                    )
                    done = any(
                        e.type == S.SAGA_EVENT_TYPE_STEP_COMPLETED and e.step_name == "b"
                        for e in evs
                    )
                    if started and not done:
                        return True
                return False

            await eventually(first_worker_in_slow_step, timeout_s=30, every_s=0.05,
                             what="first worker inside a slow step")
            workers[0].kill()
            sagas = [await wait_final(stub, i, timeout_s=40) for i in ids]
            logs = [await events(stub, i) for i in ids]
    finally:
        for w in workers:
            w.kill()
        api.stop()
    assert all(s.state == S.SAGA_STATE_COMPLETED for s in sagas)
    drivers = set()
    for saga_id, evs in zip(ids, logs, strict=True):
        verify_chain(evs)
        _check_single_driver(evs)
        drivers |= {e.coordinator_id for e in evs if e.coordinator_id}
        assert effects(rsync, saga_id) == {f"{saga_id}/{n}": 1 for n in "abc"}
    assert len(drivers) == 2
    taken_over = [
        evs
        for evs in logs
        if len({e.coordinator_id for e in evs if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED}) > 1
    ]
    assert taken_over, "the killed worker held no saga; the takeover path was not exercised"
