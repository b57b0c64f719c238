"""`Client.lock`, `Client.run_saga` and `Client.deploy_swarm(wait=True)` against real
daemons (registry, saga coordinator, swarm engine) and a real SDK agent process; the
lock's holder in `test_lock_lost_after_sigstop` is its own process."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh.client import Client, LockLost, LockNotAcquired, SagaCompensated, SagaFailed
from agentmesh.runtime.errors import Aborted, NotFound
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2
from tests.integration.sdk.conftest import SDK_DB
from tests.procs import DaemonProcess, ProcessGroup, daemon, testing_agent
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
HERE = Path(__file__).resolve().parent
S = saga_pb2


@pytest.fixture(scope="module")
def mesh(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """registry + saga + swarm daemons and one noop agent whose `charge` action and
    `undo_pack` compensation fail."""
    url = str(redis_server.url_for_db(SDK_DB))
    tmp = tmp_path_factory.mktemp("client-helpers")
    group = ProcessGroup()
    try:
        registry = group.start(daemon("registry", tmp, "--redis-url", url))
        saga = group.start(daemon("saga", tmp, "--redis-url", url))
        swarm = group.start(daemon("swarm", tmp, "--redis-url", url))
        agent = group.start(testing_agent(
            "noop", tmp, "--registry-target", registry.target, "--fail-actions", "charge",
            "--fail-compensations", "undo_pack",
            agent_id=f"agent-helpers-{uuid.uuid4().hex[:8]}",
        ))
        yield {"registry": registry, "saga": saga, "swarm": swarm, "agent": agent, "tmp": tmp}
    finally:
        group.stop_all()


def client(mesh: dict[str, Any]) -> Client:
    return Client(registry=mesh["registry"].target, saga=mesh["saga"].target,
                  swarm=mesh["swarm"].target)


async def test_lock_tokens_increase_renewals_and_refusal(mesh: dict[str, Any]) -> None:
    name = f"helpers/{uuid.uuid4().hex[:8]}"
    async with client(mesh) as c:
        async with c.lock(name, ttl_ms=300) as first:
            await asyncio.sleep(0.7)  # past two TTLs: only the renewals keep it
            assert first.renewals >= 2 and not first.lost
            with pytest.raises(LockNotAcquired) as ei:
                async with c.lock(name, ttl_ms=300, wait_timeout_s=0.2):
                    pytest.fail("a held lock was granted to another owner")
            assert ei.value.holder == first.owner
        async with c.lock(name, ttl_ms=300, wait_timeout_s=0) as second:
            pass  # the first was released on exit: granted at once
        async with c.lock(name, ttl_ms=300, wait_timeout_s=0) as third:
            pass
    assert first.fencing_token < second.fencing_token < third.fencing_token


async def test_lock_lost_after_sigstop(mesh: dict[str, Any]) -> None:
    name = f"helpers/{uuid.uuid4().hex[:8]}"
    holder = DaemonProcess(
        [str(HERE / "lock_holder.py"), mesh["registry"].target, name, "600"],
        mesh["tmp"] / f"holder-{uuid.uuid4().hex[:6]}.log",
    ).start()
    try:
        held = next(d for d in holder._log_docs(0) if d.get("msg") == "serving")["token"]
        holder.signal(signal.SIGSTOP)
        async with client(mesh) as c:
            # The paused holder cannot renew: its lease expires and ours is granted.
            async with c.lock(name, ttl_ms=10_000, wait_timeout_s=10) as mine:
                assert mine.fencing_token > held
                holder.signal(signal.SIGCONT)
                lost = await eventually(
                    lambda: next((d for d in holder._log_docs(0) if d.get("msg") == "lost"),
                                 None),
                    timeout_s=20, what="the holder's LockLost",
                )
                assert holder.wait(10) == 0
                assert not mine.lost
        assert lost == {"msg": "lost", "token": held, "cause": "Aborted",
                        "cancelled_body": True}
    finally:
        holder.signal(signal.SIGCONT)
        holder.stop()


async def steal(c: Client, name: str, lease: Any) -> int:
    """Free `lease` as its owner would, then take the lock as another owner; the token."""
    await c.release_lock(resource=name, owner=lease.owner, fencing_token=lease.fencing_token)
    got = await c.acquire_lock(resource=name, owner="thief", ttl=10.0)
    assert got.acquired
    return int(got.fencing_token)


async def test_lock_lost_cancels_the_body_and_spares_outside_cancels(
    mesh: dict[str, Any],
) -> None:
    name = f"helpers/{uuid.uuid4().hex[:8]}"
    async with client(mesh) as c:
        # A body that swallows the cancellation still ends in LockLost.
        swallowed = False
        with pytest.raises(LockLost) as ei:
            async with c.lock(name, ttl_ms=300) as lease:
                thief = await steal(c, name, lease)
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    swallowed = True
        assert swallowed and ei.value.fencing_token == lease.fencing_token < thief
        assert ei.value.__cause__ is None  # no CancelledError reached the exit
        assert isinstance(ei.value.cause, (Aborted, NotFound))
        await c.release_lock(resource=name, owner="thief")

        # The usual body: its await raises CancelledError, the block LockLost from it.
        with pytest.raises(LockLost) as ei:
            async with c.lock(name, ttl_ms=300) as lease:
                await steal(c, name, lease)
                await asyncio.sleep(10)
        assert isinstance(ei.value.__cause__, asyncio.CancelledError)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await c.release_lock(resource=name, owner="thief")

        # A cancellation from outside propagates as itself, and the lock is released.
        entered = asyncio.Event()

        async def hold() -> None:
            async with c.lock(name, ttl_ms=5_000):
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(hold())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with c.lock(name, ttl_ms=300, wait_timeout_s=0):
            pass  # free at once: the cancelled block released it


def steps(agent_id: str, *actions: str) -> list[dict[str, Any]]:
    return [
        {"name": a, "agent_id": agent_id, "action": a, "compensation_action": f"undo_{a}",
         "depends_on": [actions[i - 1]] if i else []}
        for i, a in enumerate(actions)
    ]


async def test_run_saga_returns_output_or_raises_compensated(mesh: dict[str, Any]) -> None:
    aid = mesh["agent"].agent_id
    async with client(mesh) as c:
        out = await c.run_saga({"name": "helpers-ok", "steps": steps(aid, "reserve", "ship")},
                               {"order": 7}, timeout_s=30)
        assert set(out) == {"reserve", "ship"}
        assert out["ship"]["action"] == "ship" and out["ship"]["agent_id"] == aid
        with pytest.raises(SagaCompensated) as ei:
            await c.run_saga(
                {"name": "helpers-bad", "steps": steps(aid, "reserve", "ship", "charge")},
                {"order": 8}, timeout_s=30,
            )
    e = ei.value
    assert e.step == "charge" and e.error.code == "FAILED_PRECONDITION"
    assert (e.step_error.step_name, e.step_error.code) == ("charge", "FAILED_PRECONDITION")
    assert "then:" not in str(e)
    # The failed step is compensated too (its call may have taken effect), first.
    assert e.step_status == S.STEP_STATUS_COMPENSATED
    assert [(r.step, r.status) for r in e.compensations] == [
        ("charge", S.STEP_STATUS_COMPENSATED), ("ship", S.STEP_STATUS_COMPENSATED),
        ("reserve", S.STEP_STATUS_COMPENSATED)]
    assert e.saga.state == S.SAGA_STATE_COMPENSATED and e.reason == "COMPENSATED"


async def test_run_saga_raises_failed_when_a_compensation_fails(mesh: dict[str, Any]) -> None:
    aid = mesh["agent"].agent_id
    definition = {"name": "helpers-stuck", "steps": steps(aid, "pack", "charge")}
    definition["steps"][0]["retry_policy"] = {"max_attempts": 1}  # the compensation too
    async with client(mesh) as c:
        with pytest.raises(SagaFailed) as ei:
            await c.run_saga(definition, {"order": 9}, timeout_s=30)
    e = ei.value
    # The step that turned the saga back, and then the compensation that could not undo it.
    assert e.saga.state == S.SAGA_STATE_FAILED and e.step == "charge"
    assert e.step_error.code == "FAILED_PRECONDITION"
    assert e.error.step_name == "pack" and "undo_pack" in e.error.message
    assert [(r.step, r.status) for r in e.compensations] == [
        ("charge", S.STEP_STATUS_COMPENSATED), ("pack", S.STEP_STATUS_COMPENSATION_FAILED)]


async def test_deploy_swarm_wait_returns_the_result(mesh: dict[str, Any]) -> None:
    task = {"agents_required": 10, "max_iterations": 30, "seed": 3,
            "builtin": {"function": "BENCHMARK_FUNCTION_SPHERE", "space": {"dimensions": 3}}}
    async with client(mesh) as c:
        deployed = await c.deploy_swarm(task)
        assert deployed.state in (swarm_pb2.SWARM_STATE_PENDING, swarm_pb2.SWARM_STATE_RUNNING)
        done = await c.deploy_swarm(task, wait=True, timeout_s=60)
    assert done.state == swarm_pb2.SWARM_STATE_COMPLETED
    assert done.WhichOneof("result") == "optimization"
    assert done.optimization.iterations > 0 and len(done.optimization.best_position) == 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
