"""The swarm store's leases and fenced writes on a real Redis and on Redis Cluster
(`store_redis`: a flushed single-Redis DB, then a 3-master cluster)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agentmesh.server.swarm.store import LeaseLost, SwarmStore
from agentmesh.swarm.v1 import swarm_pb2 as pb
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: Lease TTL of the first holder, ms.
A_TTL_MS = 1500


async def test_fencing(store_redis: Any) -> None:
    store = SwarmStore(store_redis)
    sid = f"fence-{uuid.uuid4().hex[:8]}"
    swarm = pb.Swarm(swarm_id=sid, state=pb.SWARM_STATE_PENDING)
    swarm.create_time.GetCurrentTime()
    assert await store.create(swarm)
    assert not await store.create(swarm)  # ids are unique
    assert sid in await store.active_ids()

    # a's TTL must outlast the "held" checks below even on a loaded machine
    # (a 200 ms TTL expired before them under CPU load).
    a = await store.acquire(sid, owner="a", ttl_ms=A_TTL_MS)
    assert a is not None
    assert await store.acquire(sid, owner="b", ttl_ms=200) is None  # held
    assert await store.count_partitions(a, [(0, b"x"), (1, b"y")]) == [True, True]
    assert await store.count_partitions(a, [(1, b"z"), (2, b"w")]) == [False, True]

    # a's lease expires (a paused replica): b gets it once the TTL has run
    # out; a failed acquire hands out no token, so polling is harmless.
    b = await eventually(
        lambda: store.acquire(sid, owner="b", ttl_ms=5000),
        timeout_s=A_TTL_MS / 1000 + 10, every_s=0.05, what="b acquires the expired lease",
    )
    assert b.token > a.token
    # The old holder can write nothing any more.
    assert not await store.renew(a, ttl_ms=5000)
    with pytest.raises(LeaseLost):
        await store.commit(a, swarm=swarm, snapshot=b"stale")
    with pytest.raises(LeaseLost):
        await store.count_partitions(a, [(3, b"stale")])
    assert await store.load_snapshot(sid) is None
    assert set(await store.partition_results(sid)) == {0, 1, 2}
    assert (await store.partition_results(sid))[1] == b"y"  # first write won

    # The new holder commits; a terminal state leaves the active index.
    await store.request_stop(sid)
    swarm.state = pb.SWARM_STATE_STOPPED
    res = await store.commit(b, swarm=swarm, snapshot=b"snap")
    assert res.stop_requested
    assert await store.load_snapshot(sid) == b"snap"
    assert sid not in await store.active_ids()
    assert (await store.get(sid)).state == pb.SWARM_STATE_STOPPED  # type: ignore[union-attr]
    await store.release(b)
    c = await store.acquire(sid, owner="c", ttl_ms=1000)
    assert c is not None and c.token == b.token + 1
