"""Retention of finished swarms (Temporal's namespace retention period), real Redis DB 4.

With `--retention-s 1` a finished swarm's keys expire and it disappears from
GetSwarm, ListSwarms and `idx:created`, while a running swarm in the same daemon
keeps its keys without a TTL; with `--retention-s 0` nothing gets a TTL.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from agentmesh.swarm.v1 import swarm_pb2 as pb
from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.integration.swarm.conftest import FAST_FLAGS
from tests.procs import daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration
P = "am:swarm:{swarms}:"


def short_task() -> pb.SwarmTask:
    """Finishes after 30 iterations (MAX_ITERATIONS)."""
    task = pb.SwarmTask(
        agents_required=10,
        max_iterations=30,
        seed=3,
        builtin=pb.BuiltinFitness(
            function=pb.BENCHMARK_FUNCTION_SPHERE, space=pb.SearchSpace(dimensions=3)
        ),
    )
    task.convergence_threshold = 1e-300  # run all 30 iterations
    return task


def long_task() -> pb.SwarmTask:
    """Runs until stopped: convergence needs a full window of max_iterations first."""
    task = pb.SwarmTask(
        agents_required=20,
        max_iterations=10_000_000,
        builtin=pb.BuiltinFitness(
            function=pb.BENCHMARK_FUNCTION_RASTRIGIN, space=pb.SearchSpace(dimensions=10)
        ),
    )
    task.convergence_window = 10_000_000
    return task


def own_keys(r: redis.Redis, swarm_id: str) -> list[str]:
    """Every swarm-engine key named after the swarm (SCAN)."""
    return [str(k) for k in r.scan_iter(match=f"{P}*{swarm_id}*", count=1000)]


@pytest.fixture(scope="module")
def rsync(swarm_redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(swarm_redis_url, decode_responses=True)


async def _stub(url: str, tmp_path: Path, retention_s: str) -> AsyncIterator[Any]:
    with daemon("swarm", tmp_path, "--redis-url", url, *FAST_FLAGS,
                "--retention-s", retention_s).start() as p:
        async with grpc.aio.insecure_channel(p.target) as ch:
            yield swarm_pb2_grpc.SwarmServiceStub(ch)


@pytest.fixture
async def stub_1s(swarm_redis_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    async for s in _stub(swarm_redis_url, tmp_path, "1"):
        yield s


@pytest.fixture
async def stub_forever(swarm_redis_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    async for s in _stub(swarm_redis_url, tmp_path, "0"):
        yield s


async def wait_ended(stub: Any, swarm_id: str) -> pb.Swarm:
    async for m in stub.WatchSwarm(pb.WatchSwarmRequest(swarm_id=swarm_id), timeout=60):
        if m.HasField("swarm"):
            return m.swarm
    raise AssertionError(f"watch of {swarm_id} ended without the final swarm")


async def test_finished_swarm_expires_running_swarm_stays(stub_1s: Any, rsync: Any) -> None:
    stub = stub_1s
    long_id = (await stub.DeploySwarm(pb.DeploySwarmRequest(task=long_task()))).swarm.swarm_id
    done_id = (await stub.DeploySwarm(pb.DeploySwarmRequest(task=short_task()))).swarm.swarm_id
    done = await wait_ended(stub, done_id)
    assert done.state == pb.SWARM_STATE_COMPLETED

    await eventually(lambda: not own_keys(rsync, done_id), timeout_s=15, what="keys expired")
    await eventually(
        lambda: rsync.zscore(f"{P}idx:created", done_id) is None,
        timeout_s=15,
        what="created index pruned",
    )
    assert rsync.zscore(f"{P}idx:expiry", done_id) is None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSwarm(pb.GetSwarmRequest(swarm_id=done_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StopSwarm(pb.StopSwarmRequest(swarm_id=done_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not own_keys(rsync, done_id), "StopSwarm of an expired swarm left a key behind"
    page = await stub.ListSwarms(pb.ListSwarmsRequest(page_size=500))
    listed = [s.swarm_id for s in page.swarms]
    assert done_id not in listed and long_id in listed

    # the running swarm in the same daemon: its keys are there, none with a TTL
    # (the lease key has its own lease TTL and is not retention's business)
    await eventually(
        lambda: rsync.exists(f"{P}snap:{long_id}"), timeout_s=30, what="long swarm snapshot"
    )
    for kind in ("swarm", "stats", "snap", "fence"):
        assert rsync.ttl(f"{P}{kind}:{long_id}") == -1, kind
    got = (await stub.GetSwarm(pb.GetSwarmRequest(swarm_id=long_id))).swarm
    assert got.state == pb.SWARM_STATE_RUNNING

    # once stopped, it too goes after its retention
    stopped = (await stub.StopSwarm(pb.StopSwarmRequest(swarm_id=long_id))).swarm
    assert stopped.state == pb.SWARM_STATE_STOPPED
    await eventually(lambda: not own_keys(rsync, long_id), timeout_s=15, what="long expired")


async def test_retention_zero_keeps_finished_swarms(stub_forever: Any, rsync: Any) -> None:
    stub = stub_forever
    sid = (await stub.DeploySwarm(pb.DeploySwarmRequest(task=short_task()))).swarm.swarm_id
    assert (await wait_ended(stub, sid)).state == pb.SWARM_STATE_COMPLETED
    await eventually(lambda: not rsync.exists(f"{P}lease:{sid}"), what="lease released")
    keys = sorted(own_keys(rsync, sid))
    assert keys == sorted(f"{P}{k}:{sid}" for k in ("swarm", "stats", "snap", "fence"))
    assert [rsync.ttl(k) for k in keys] == [-1] * 4
    assert rsync.zscore(f"{P}idx:expiry", sid) is None
    assert rsync.zscore(f"{P}idx:created", sid) is not None


def test_negative_retention_stops_startup(swarm_redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentmesh.server.swarm", "--port", "0", "--metrics-port", "-1",
         "--redis-url", swarm_redis_url, "--retention-s", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode != 0
    assert "--retention-s='-1' must be >= 0 s" in out.stderr
