"""Invoke: failover when an agent process dies, circuit breaker transitions,
retries, and deadline propagation, with real processes and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime.errors import from_rpc_error

pytestmark = pytest.mark.integration

OPEN_MS = 1500


@pytest.fixture(scope="module")
def router(procs: Any) -> Any:
    """A router whose breakers open after 3 failures for 1.5 s; outlier
    ejection is kept out of the way (it needs 1000 calls)."""
    return procs.router(
        "--breaker-failure-threshold",
        "3",
        "--breaker-open-ms",
        str(OPEN_MS),
        "--outlier-min-requests",
        "1000",
        "--invoke-initial-backoff-ms",
        "5",
    )


async def states(stub: Any) -> dict[str, R.TargetState]:
    resp = await stub.ListTargetStates(R.ListTargetStatesRequest(page_size=1000))
    return {s.agent_id: s for s in resp.states}


def ids(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}{i}-{tag}" for i in range(1, n + 1)]


async def test_invoke_fails_over_when_an_agent_process_is_killed(procs, router, stub_for) -> None:
    stub = stub_for(router)
    cap = f"inv-{uuid.uuid4().hex[:6]}"
    k1, k2, k3 = ids("k", 3)
    agents = await procs.agents([(a, ("--capability", cap)) for a in (k1, k2, k3)])
    msg = R.RouteMessage(message_type=cap)
    msg.payload.struct_value.update({"n": 1})
    req = R.InvokeRequest(message=msg, action="work", strategy=R.STRATEGY_ROUND_ROBIN)
    first = await stub.Invoke(req, timeout=10)
    assert first.agent_id in (k1, k2, k3) and first.output["input"]["n"] == 1
    agents[0].kill()  # SIGKILL: the registry still says ACTIVE
    answered = []
    failed_over = 0
    for _ in range(15):
        resp = await stub.Invoke(req, timeout=10)
        answered.append(resp.agent_id)
        assert resp.attempts[-1].code == 0
        if len(resp.attempts) > 1:
            failed_over += 1
            assert resp.attempts[0].agent_id == k1
            assert resp.attempts[0].code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert resp.attempts[1].agent_id != k1
    assert k1 not in answered
    assert set(answered) == {k2, k3}
    assert failed_over >= 3
    # three connection failures opened k1's breaker: later calls skip it
    st = (await states(stub))[k1]
    assert st.breaker_state == R.BREAKER_STATE_OPEN
    for _ in range(6):
        resp = await stub.Invoke(req, timeout=10)
        assert len(resp.attempts) == 1 and resp.agent_id != k1


async def test_breaker_trips_after_k_failures_then_half_opens(procs, router, rdb, stub_for) -> None:
    stub = stub_for(router)
    b1, b2 = ids("b", 2)
    fail_key = f"am:rt:test:fail:{b1}"
    await procs.agents([(b1, ("--fail-key", fail_key)), (b2, ())])
    await rdb.set(fail_key, 1)
    msg = R.RouteMessage(target_ids=[b1, b2])
    req = R.InvokeRequest(
        message=msg,
        action="work",
        strategy=R.STRATEGY_FAILOVER,
        retry_policy=R.RetryPolicy(max_attempts=1),
    )
    for i in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        st = (await states(stub))[b1]
        want = R.BREAKER_STATE_OPEN if i == 2 else R.BREAKER_STATE_CLOSED
        assert st.breaker_state == want and st.consecutive_failures == i + 1
    # open: traffic goes to b2 without trying b1
    resp = await stub.Invoke(req, timeout=10)
    assert resp.agent_id == b2 and len(resp.attempts) == 1
    route = R.RouteRequest(message=msg, strategy=R.STRATEGY_FAILOVER)
    assert (await stub.Route(route)).targets[0].agent_id == b2
    # after the open interval: half-open, b1 is tried again; a failure reopens it
    await asyncio.sleep(OPEN_MS / 1000 + 0.3)
    assert (await states(stub))[b1].breaker_state == R.BREAKER_STATE_HALF_OPEN
    assert (await stub.Route(route)).targets[0].agent_id == b1
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Invoke(req, timeout=10)
    assert (await states(stub))[b1].breaker_state == R.BREAKER_STATE_OPEN
    # half-open again, and the agent has recovered: one success closes it
    await asyncio.sleep(OPEN_MS / 1000 + 0.3)
    await rdb.delete(fail_key)
    resp = await stub.Invoke(req, timeout=10)
    assert resp.agent_id == b1
    st = (await states(stub))[b1]
    assert st.breaker_state == R.BREAKER_STATE_CLOSED and st.consecutive_failures == 0


async def test_retries_with_backoff_until_attempts_run_out(procs, router, rdb, stub_for) -> None:
    stub = stub_for(router)
    (r1,) = ids("r", 1)
    fail_key = f"am:rt:test:fail:{r1}"
    procs.agent(r1, "--fail-key", fail_key)
    await rdb.set(fail_key, 1)
    # Without an idempotency key Execute is IDEMPOTENCY_UNKNOWN: an UNAVAILABLE
    # the agent itself answered may have taken effect, so it is not repeated.
    unkeyed = R.InvokeRequest(
        message=R.RouteMessage(target_ids=[r1]),
        action="work",
        retry_policy=R.RetryPolicy(max_attempts=3),
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Invoke(unkeyed, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() == "injected failure"
    # With one it is IDEMPOTENT (the contract's idempotency_key_field): retried.
    req = R.InvokeRequest(
        message=R.RouteMessage(target_ids=[r1]),
        action="work",
        idempotency_key=f"retry-{r1}",
        retry_policy=R.RetryPolicy(max_attempts=3),
    )
    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Invoke(req, timeout=10)
    assert time.monotonic() - t0 < 10
    err = from_rpc_error(e.value)
    info = err.detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "ATTEMPTS_EXHAUSTED" and info.metadata["attempts"] == "3"
    # the agent recovers: the next call's first attempt succeeds
    await rdb.delete(fail_key)
    req.idempotency_key = f"retry-{r1}-2"
    resp = await stub.Invoke(req, timeout=10)
    assert resp.agent_id == r1 and resp.output["attempt"] == 1


async def test_deadline_propagates_to_the_agent(procs, router, stub_for) -> None:
    stub = stub_for(router)
    (d1,) = ids("d", 1)
    procs.agent(d1)
    req = R.InvokeRequest(message=R.RouteMessage(target_ids=[d1]), action="work")
    resp = await stub.Invoke(req, timeout=2.0)
    # gRPC re-derives the deadline from the grpc-timeout header on each hop,
    # and gRPC core rounds that header up to a few significant digits: allow
    # 1% of wire-encoding slack
    seen = resp.output["remaining_ms"]
    assert 0 < seen <= 2000 * 1.01
    # a per-attempt timeout tighter than the caller's deadline wins
    req.retry_policy.attempt_timeout.CopyFrom(duration_pb2.Duration(nanos=300_000_000))
    resp = await stub.Invoke(req, timeout=5.0)
    assert 0 < resp.output["remaining_ms"] <= 300 * 1.01
    # no caller deadline and no attempt timeout: the default budget applies
    resp = await stub.Invoke(R.InvokeRequest(message=req.message, action="work"))
    assert 0 < resp.output["remaining_ms"] <= 30_000 * 1.01


async def test_invoke_rejects_bad_input(router, stub_for) -> None:
    stub = stub_for(router)
    for req in (
        R.InvokeRequest(message=R.RouteMessage(target_ids=["x"])),  # no action
        R.InvokeRequest(
            message=R.RouteMessage(target_ids=["x"]), action="a", strategy=R.STRATEGY_BROADCAST
        ),
        R.InvokeRequest(message=R.RouteMessage(target_ids=["x"]), action="a", strategy=77),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(req, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_outlier_detection_ejects_a_failing_agent(procs, rdb, stub_for) -> None:
    # breakers out of the way (100 consecutive failures): only ejection acts
    router = procs.router(
        "--breaker-failure-threshold",
        "100",
        "--outlier-min-requests",
        "4",
        "--outlier-failure-rate",
        "0.5",
        "--outlier-base-ejection-ms",
        "60000",
        "--invoke-initial-backoff-ms",
        "1",
    )
    stub = stub_for(router)
    e1, e2 = ids("e", 2)
    fail_key = f"am:rt:test:fail:{e1}"
    await procs.agents([(e1, ("--fail-key", fail_key)), (e2, ())])
    await rdb.set(fail_key, 1)
    req = R.InvokeRequest(
        message=R.RouteMessage(target_ids=[e1, e2]),
        action="work",
        idempotency_key=f"outlier-{e1}",  # keyed: IDEMPOTENT, so Invoke fails over
        strategy=R.STRATEGY_FAILOVER,
        retry_policy=R.RetryPolicy(max_attempts=2),
    )
    for _ in range(4):  # each call fails on e1, then succeeds on e2
        resp = await stub.Invoke(req, timeout=10)
        assert [a.agent_id for a in resp.attempts] == [e1, e2]
    st = (await states(stub))[e1]
    assert st.ejected and st.ejection_count == 1
    assert st.breaker_state == R.BREAKER_STATE_CLOSED
    assert st.ejected_until.ToMilliseconds() > time.time() * 1000 + 50_000
    # ejected: e1 is no longer tried (1 of 2 is within the 50% ejection cap)
    resp = await stub.Invoke(req, timeout=10)
    assert [a.agent_id for a in resp.attempts] == [e2]
