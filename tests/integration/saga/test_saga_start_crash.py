"""A coordinator SIGKILLed right after the combined start script (create, lease
and first plan in one Redis call, issue 25): the saga is durable and leased by
the dead replica, its first step logged STARTED but never sent; a restarted
replica takes it over when the lease expires, and every effect happens once."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import grpc
import pytest
import redis

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.engine import KILL_AFTER_START_ENV
from agentmesh.server.saga.events import verify_chain
from tests.integration.saga.conftest import FAST, chain, effects, events, wait_final
from tests.procs import daemon

pytestmark = pytest.mark.integration
S = saga_pb2


def _log(r: Any, saga_id: str) -> list[saga_pb2.SagaEvent]:
    log = r.xrange(f"am:saga:{{sagas}}:log:{saga_id}")
    return [S.SagaEvent.FromString(f[b"pb"]) for _, f in log]


async def test_sigkill_right_after_the_start_script(agent, saga_redis_url, rsync, tmp_path) -> None:
    rbytes = redis.Redis.from_url(saga_redis_url)
    key = f"start-crash-{uuid.uuid4().hex[:8]}"
    req = S.StartSagaRequest(
        definition=S.SagaDefinition(steps=chain("a", "b", "c")), idempotency_key=key
    )
    first = daemon(
        "saga", tmp_path, "--redis-url", saga_redis_url, *FAST, env={KILL_AFTER_START_ENV: "1"}
    ).start()
    try:
        async with grpc.aio.insecure_channel(first.target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await saga_pb2_grpc.SagaServiceStub(ch).StartSaga(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # it killed itself, by SIGKILL, inside the StartSaga call
        assert first.wait(timeout_s=10) == -signal.SIGKILL
    finally:
        first.kill()

    # What the one script left: the saga, its lease (the dead replica's, token
    # 1) and the first plan, written ahead of a call that was never sent.
    saga_id = rsync.get(f"am:saga:{{sagas}}:idem:{key}").split("\n")[0]
    logged = _log(rbytes, saga_id)
    assert [(e.type, e.step_name) for e in logged] == [
        (S.SAGA_EVENT_TYPE_SAGA_STARTED, ""),
        (S.SAGA_EVENT_TYPE_LEASE_ACQUIRED, ""),
        (S.SAGA_EVENT_TYPE_STEP_STARTED, "a"),
    ]
    assert logged[1].fencing_token == 1 and logged[2].attempt == 1
    assert rsync.hget(f"am:saga:{{sagas}}:saga:{saga_id}", "state") == "SAGA_STATE_RUNNING"
    assert rsync.hget(f"am:saga:{{sagas}}:lease:{saga_id}", "token") == "1"
    assert float(rsync.zscore("am:saga:{sagas}:active", saga_id) or 0) > 0  # leased, not free
    assert effects(rsync, saga_id) == {}

    second = daemon("saga", tmp_path, "--redis-url", saga_redis_url, *FAST).start()
    try:
        async with grpc.aio.insecure_channel(second.target) as ch:
            stub = saga_pb2_grpc.SagaServiceStub(ch)
            # a client retrying its start joins the saga the dead replica created
            again = await stub.StartSaga(req)
            assert again.already_started and again.saga.saga_id == saga_id
            saga = await wait_final(stub, saga_id)
            evs = await events(stub, saga_id)
    finally:
        second.stop()
    assert saga.state == S.SAGA_STATE_COMPLETED
    assert effects(rsync, saga_id) == {f"{saga_id}/{n}": 1 for n in "abc"}
    verify_chain(evs)
    leases = [e for e in evs if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED]
    assert [e.fencing_token for e in leases] == [1, 2]
    assert leases[0].coordinator_id != leases[1].coordinator_id
    a_starts = [
        e.attempt for e in evs if e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "a"
    ]
    assert a_starts == [1, 2]  # sent for the first time by the second replica, as attempt 2
    # only the lease holder of the moment wrote, and tokens only went up
    fence, owner = 0, ""
    for e in evs[1:]:
        if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED:
            assert e.fencing_token > fence
            fence, owner = e.fencing_token, e.coordinator_id
        assert (e.fencing_token, e.coordinator_id) == (fence, owner)
