"""Retention of finished sagas (Temporal's namespace retention period), real Redis DB 3.

With `--retention-s 1` a finished saga's keys expire and it disappears from
GetSaga, ListSagas and the indexes, while a running saga in the same daemon keeps
its keys without a TTL; with `--retention-s 0` nothing gets a TTL.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.integration.saga.conftest import chain, start_coordinator, step, wait_final
from tests.procs import DaemonProcess
from tests.waiting import eventually

pytestmark = pytest.mark.integration
S = saga_pb2
P = "am:saga:{sagas}:"


def own_keys(r: redis.Redis, saga_id: str, idem: str) -> list[str]:
    """Every coordinator key named after the saga (SCAN) plus its idempotency key.

    The agent SDK's own idempotency records (`am:agent:...`) are the agent's, not
    the coordinator's, and have their own TTL.
    """
    keys = [str(k) for k in r.scan_iter(match=f"{P}*{saga_id}*", count=1000)]
    if r.exists(f"{P}idem:{idem}"):
        keys.append(f"{P}idem:{idem}")
    return keys


def indexed(r: redis.Redis, saga_id: str, name: str, state: str) -> list[str]:
    """The index ZSETs that still list the saga."""
    idx = [f"{P}idx:all", f"{P}idx:name:{name}", f"{P}idx:state:{state}"]
    return [k for k in idx if r.zscore(k, saga_id) is not None]


async def start(
    stub: saga_pb2_grpc.SagaServiceStub, steps: list[S.Step], *, name: str, idem: str
) -> str:
    req = S.StartSagaRequest(
        definition=S.SagaDefinition(name=name, steps=steps), idempotency_key=idem
    )
    return (await stub.StartSaga(req)).saga.saga_id


def long_step() -> S.Step:
    """A step that fails once (UNAVAILABLE) and then waits a 120 s backoff: RUNNING for
    the whole test, and a cancel ends it at once (a step waiting for a retry fails)."""
    s = step("wait", "flaky_wait")
    s.retry_policy.max_attempts = 5
    s.retry_policy.initial_backoff.FromSeconds(120)
    s.retry_policy.max_backoff.FromSeconds(120)
    return s


@pytest.fixture
async def coordinator_1s(
    saga_redis_url: str, agent: DaemonProcess, tmp_path: Path
) -> AsyncIterator[saga_pb2_grpc.SagaServiceStub]:
    with start_coordinator(saga_redis_url, tmp_path, "--retention-s", "1") as p:
        async with grpc.aio.insecure_channel(p.target) as ch:
            yield saga_pb2_grpc.SagaServiceStub(ch)


@pytest.fixture
async def coordinator_forever(
    saga_redis_url: str, agent: DaemonProcess, tmp_path: Path
) -> AsyncIterator[saga_pb2_grpc.SagaServiceStub]:
    with start_coordinator(saga_redis_url, tmp_path, "--retention-s", "0") as p:
        async with grpc.aio.insecure_channel(p.target) as ch:
            yield saga_pb2_grpc.SagaServiceStub(ch)


async def test_finished_saga_expires_running_saga_stays(coordinator_1s: Any, rsync: Any) -> None:
    stub = coordinator_1s
    tag = uuid.uuid4().hex[:8]
    long_id = await start(stub, [long_step()], name=f"ret_long_{tag}", idem=f"long-{tag}")
    done_idem = f"done-{tag}"
    done_id = await start(stub, chain("a", "b"), name=f"ret_done_{tag}", idem=done_idem)
    done = await wait_final(stub, done_id)
    assert done.state == S.SAGA_STATE_COMPLETED
    # the long saga is RUNNING (its first attempt failed, it waits for the retry)
    await eventually(
        lambda: rsync.hget(f"{P}saga:{long_id}", "state") == "SAGA_STATE_RUNNING",
        what="long saga running",
    )

    # every key of the finished saga expires, and the sweep takes it out of the indexes
    await eventually(
        lambda: not own_keys(rsync, done_id, done_idem), timeout_s=15, what="keys expired"
    )
    await eventually(
        lambda: not indexed(rsync, done_id, f"ret_done_{tag}", "SAGA_STATE_COMPLETED"),
        timeout_s=15,
        what="index entries pruned",
    )
    assert not [m for m in rsync.zrange(f"{P}expiry", 0, -1) if m.startswith(done_id + "\n")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSaga(S.GetSagaRequest(saga_id=done_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.WatchSaga(S.WatchSagaRequest(saga_id=done_id)):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListSagas(S.ListSagasRequest(page_size=500))
    ids = [s.saga_id for s in listed.sagas]
    assert done_id not in ids and long_id in ids
    by_name = await stub.ListSagas(S.ListSagasRequest(definition_name=f"ret_done_{tag}"))
    assert not by_name.sagas

    # the running saga, in the same daemon, has all its keys and no TTL on any of them
    for key in (f"{P}saga:{long_id}", f"{P}log:{long_id}", f"{P}idem:long-{tag}"):
        assert rsync.ttl(key) == -1, key
    got = await stub.GetSaga(S.GetSagaRequest(saga_id=long_id))
    assert got.saga.state == S.SAGA_STATE_RUNNING

    # once it ends (cancel), it too gets its retention and goes
    await stub.CancelSaga(S.CancelSagaRequest(saga_id=long_id, reason="test over"))
    await eventually(
        lambda: not own_keys(rsync, long_id, f"long-{tag}"), timeout_s=15, what="long expired"
    )


async def test_retention_zero_keeps_finished_sagas(coordinator_forever: Any, rsync: Any) -> None:
    stub = coordinator_forever
    tag = uuid.uuid4().hex[:8]
    idem = f"keep-{tag}"
    saga_id = await start(stub, chain("a"), name=f"ret_keep_{tag}", idem=idem)
    assert (await wait_final(stub, saga_id)).state == S.SAGA_STATE_COMPLETED
    keys = own_keys(rsync, saga_id, idem)
    assert sorted(keys) == sorted([f"{P}saga:{saga_id}", f"{P}log:{saga_id}", f"{P}idem:{idem}"])
    assert [rsync.ttl(k) for k in keys] == [-1, -1, -1]
    assert not [m for m in rsync.zrange(f"{P}expiry", 0, -1) if m.startswith(saga_id + "\n")]
    assert indexed(rsync, saga_id, f"ret_keep_{tag}", "SAGA_STATE_COMPLETED")


def test_negative_retention_stops_startup(saga_redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentmesh.server.saga", "--port", "0", "--metrics-port", "-1",
         "--redis-url", saga_redis_url, "--retention-s", "-5"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode != 0
    assert "--retention-s='-5' must be >= 0 s" in out.stderr
