"""The registry's store layer on a single Redis and on Redis Cluster (`store_redis`).

Every catalog script (register, heartbeat, heartbeat batch, deregister, the
fenced sweep), discovery's SINTER/SUNION, the reaper's SCAN, the locks and the
proposals run on both; on the cluster the test also checks the documented
layout: the whole catalog in one slot, each lock and proposal in its own.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.crc import key_slot

from agentmesh import catalog
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import coordination_pb2, registry_pb2
from agentmesh.runtime.deps import is_cluster
from agentmesh.server.registry.coordination_store import CoordinationStore
from agentmesh.server.registry.reaper import Reaper
from agentmesh.server.registry.settings import RegistrySettings
from agentmesh.server.registry.store import RegistryStore
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: Heartbeat interval of the test agents, ms; silence past DEREG_MS removes them.
INTERVAL_MS = 100
DEREG_MS = 600


def agent(agent_id: str, caps: list[str], tags: list[str], stype: str) -> registry_pb2.Agent:
    """A descriptor as the servicer passes it to the store."""
    return registry_pb2.Agent(
        agent_id=agent_id, endpoint=f"127.0.0.1:{40000 + len(agent_id)}", version="1.2.0",
        capabilities=caps, tags=tags, service_types=[stype], location="eu",
    )


async def slots_of(client: Any, pattern: str) -> set[int]:
    """Hash slots of the keys matching `pattern` (SCAN over every master on a cluster)."""
    return {key_slot(k) async for k in client.scan_iter(match=pattern, count=1000)}


async def test_catalog_scripts_discovery_and_sweep(store_redis: Any) -> None:
    settings = RegistrySettings(replica_id="t", deregistration_timeout_ms=DEREG_MS)
    store = RegistryStore(store_redis, settings)
    ids = [f"a{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    specs = [(["calc", "ghg"], ["prod"], "compute"), (["calc"], ["prod", "eu"], "compute"),
             (["ghg"], [], "report")]
    for aid, (caps, tags, stype) in zip(ids, specs, strict=True):
        res = await store.register(agent(aid, caps, tags, stype), interval_ms=INTERVAL_MS)
        assert res.created and res.agent.status == registry_pb2.AGENT_STATUS_ACTIVE
    again = await store.register(agent(ids[0], *specs[0][:2], "compute"), interval_ms=INTERVAL_MS)
    assert not again.created

    load = common_pb2.LoadMetrics(cpu_percent=10.0, error_rate=0.0)
    hb = await store.heartbeat(ids[0], load)
    assert hb is not None and hb.status == "ACTIVE"
    many = await store.heartbeat_many([(ids[1], None), ("nobody", None), (ids[2], load)])
    assert [m.status if m else None for m in many] == ["ACTIVE", None, "ACTIVE"]

    both = await catalog.find_agents(
        store_redis, common_pb2.AgentSelector(capabilities=["calc"], tags=["prod"])
    )
    assert sorted(a.agent_id for a in both) == sorted(ids[:2])
    reports = await catalog.find_agents(
        store_redis, common_pb2.AgentSelector(service_types=["report", "nothing"])
    )
    assert [a.agent_id for a in reports] == [ids[2]]
    assert len(await catalog.find_agents(store_redis, common_pb2.AgentSelector())) == 3
    assert (await store.status_counts()).get("ACTIVE") == 3
    got = await store.get_many([ids[0], "nobody"])
    assert got[0] is not None and got[0].agent_id == ids[0] and got[1] is None

    gone = await store.deregister(ids[2], reason="test")
    assert gone is not None and gone.status == registry_pb2.AGENT_STATUS_DECOMMISSIONED
    assert await store.deregister(ids[2], reason="test") is None
    types = [e.event.type for e in await store.events(start=1, count=100)]
    assert types.count(registry_pb2.AGENT_EVENT_TYPE_REGISTERED) == 3
    assert types[-1] == registry_pb2.AGENT_EVENT_TYPE_DEREGISTERED

    reaper = Reaper(store, interval_ms=100)
    counts, present = await reaper.healthy_by_capability()
    assert counts == {"calc": 2, "ghg": 1} and present == {"calc", "ghg"}
    if is_cluster(store_redis):
        # The documented layout: every catalog key, the reaper lease included, in one slot.
        await reaper.sweep_once()
        assert len(await slots_of(store_redis, "am:reg:{catalog}:*")) == 1

    # Silent agents go stale, then expire, through the fenced sweep script.
    async def expired() -> bool:
        await reaper.sweep_once()
        return await store.count() == 0

    await eventually(expired, timeout_s=15, every_s=0.1, what="silent agents expire")
    assert not await catalog.find_agents(store_redis, common_pb2.AgentSelector())
    assert (await store.status_counts()).get("ACTIVE", 0) == 0


async def test_locks_and_proposals(store_redis: Any) -> None:
    coord = CoordinationStore(store_redis)
    names = [f"res-{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    tokens = []
    for name in names:
        a = await coord.acquire(name, "a", ttl_ms=5000)
        assert a.acquired and a.token == 1
        held = await coord.acquire(name, "b", ttl_ms=5000)
        assert not held.acquired and held.holder == "a"
        assert (await coord.renew(name, "a", token=a.token, ttl_ms=5000))[0] == 1
        assert await coord.release(name, "a", token=a.token) == 1
        b = await coord.acquire(name, "b", ttl_ms=5000)
        assert b.acquired and b.token > a.token  # fencing tokens only increase
        tokens.append(b.token)
    assert tokens == [2] * len(names)

    proposal = coordination_pb2.Proposal(
        topic="scale", required_approval_ratio=0.5, voters=["v1", "v2", "v3"]
    )
    sec, _ = await store_redis.time()
    p = await coord.create_proposal(proposal, deadline_ms=sec * 1000 + 60_000, expected_votes=3)
    assert (await coord.vote(p.proposal_id, "v1", coordination_pb2.VOTE_CHOICE_APPROVE))[0] == "OK"
    assert (await coord.vote(p.proposal_id, "x", coordination_pb2.VOTE_CHOICE_APPROVE))[0] == (
        "NOT_ELIGIBLE"
    )
    await coord.vote(p.proposal_id, "v2", coordination_pb2.VOTE_CHOICE_APPROVE)
    got = await coord.get_proposal(p.proposal_id)
    assert got is not None and got.approvals == 2
    assert got.state == coordination_pb2.PROPOSAL_STATE_ACHIEVED

    if is_cluster(store_redis):
        # Each lock (record + fence) and each proposal (3 keys) is one slot of its
        # own, and the locks spread over the slots instead of sharing one.
        lock_slots = set()
        for name in names:
            keys = coord.lock_keys(name)
            assert key_slot(keys.record.encode()) == key_slot(keys.fence.encode())
            lock_slots.add(key_slot(keys.record.encode()))
        assert len(lock_slots) == len(names)
        assert len({key_slot(k.encode()) for k in coord._keys(p.proposal_id)}) == 1
