"""The saga store on a single Redis and on Redis Cluster (`store_redis`).

Every script of the store (start, create, acquire, renew, release, the fenced
append with retention, cancel, prune) and its reads (load, paging, states,
definitions under WATCH/MULTI) run on both; on the cluster the test also
checks the documented layout: every saga key in the one `{sagas}` slot.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.crc import key_slot

from agentmesh.runtime.deps import is_cluster
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.events import GENESIS, seal, verify_chain
from agentmesh.server.saga.store import PREFIX, Fenced, SagaStore
from tests.waiting import eventually

pytestmark = pytest.mark.integration
S = saga_pb2
OWNER_A, OWNER_B = "coord-a", "coord-b"
TTL_MS = 60_000


def _event(
    saga_id: str, seq: int, kind: S.SagaEventType.ValueType, state: S.SagaState.ValueType,
    prev: str, **kw: Any,
) -> S.SagaEvent:
    """A sealed event `seq` of `saga_id` chained on `prev` (a hash)."""
    ev = S.SagaEvent(saga_id=saga_id, sequence=seq, type=kind, state=state, **kw)
    ev.create_time.GetCurrentTime()
    seal(ev, prev)
    return ev


def _definition(name: str) -> S.SagaDefinition:
    return S.SagaDefinition(
        name=name, steps=[S.Step(name="a", agent_id="agent-a", action="do_a")]
    )


async def test_saga_lifecycle_fencing_retention_and_definitions(store_redis: Any) -> None:
    store = SagaStore(store_redis, retention_ms=300)
    saga_id = f"saga-{uuid.uuid4().hex[:8]}"
    name = "store-test"
    started = _event(saga_id, 1, S.SAGA_EVENT_TYPE_SAGA_STARTED, S.SAGA_STATE_PENDING, GENESIS,
                     definition=_definition(name))
    leased = _event(saga_id, 2, S.SAGA_EVENT_TYPE_LEASE_ACQUIRED, S.SAGA_STATE_RUNNING,
                    started.provenance.hash, coordinator_id=OWNER_A, fencing_token=1)
    lease = await store.start(
        [started, leased], name=name, idempotency_key="k1", fingerprint="fp",
        owner=OWNER_A, ttl_ms=TTL_MS, state=S.SAGA_STATE_RUNNING,
    )
    assert not isinstance(lease, tuple) and lease.fence == 1
    # the same idempotency key names the existing saga and writes nothing
    again = await store.start(
        [started, leased], name=name, idempotency_key="k1", fingerprint="other",
        owner=OWNER_B, ttl_ms=TTL_MS, state=S.SAGA_STATE_RUNNING,
    )
    assert again == (saga_id, "fp")

    # held by A: B cannot take it; A renews; after A releases, B gets token 2
    assert await store.acquire(saga_id, owner=OWNER_B, ttl_ms=TTL_MS) is None
    assert await store.renew([lease], ttl_ms=TTL_MS) == [(True, False)]
    await store.release(lease)
    assert await store.expired(limit=10) == [saga_id]
    taken = await store.acquire(saga_id, owner=OWNER_B, ttl_ms=TTL_MS)
    assert taken is not None and taken.fence == 2
    assert await store.renew([lease], ttl_ms=TTL_MS) == [(False, False)]
    assert await store.request_cancel(saga_id, reason="r") == ""
    assert await store.cancel_flag(saga_id) == (True, "r")

    done = _event(saga_id, 3, S.SAGA_EVENT_TYPE_SAGA_COMPLETED, S.SAGA_STATE_COMPLETED,
                  leased.provenance.hash)
    # the old holder is fenced out before anything is written
    with pytest.raises(Fenced):
        await store.append(lease, [done], expected_seq=2, last_hash=leased.provenance.hash,
                           state=S.SAGA_STATE_COMPLETED, final=True)
    await store.append(taken, [done], expected_seq=2, last_hash=leased.provenance.hash,
                       state=S.SAGA_STATE_COMPLETED, final=True)
    log = await store.events(saga_id)
    assert verify_chain(log) == 3
    rec = await store.load(saga_id)
    assert rec is not None and rec.final and rec.seq == 3
    assert await store.page_ids("idx:all", before="", count=10) == [saga_id]
    assert await store.page_ids("idx:state:SAGA_STATE_COMPLETED", before="", count=10) == [saga_id]
    assert await store.states_of([saga_id]) == [("SAGA_STATE_COMPLETED", name)]
    assert await store.expired(limit=10) == []

    stored, created = await store.register_definition(_definition(name))
    assert created and stored.version == 1
    assert (await store.register_definition(_definition(name)))[1] is False
    got = await store.get_definition(name)
    assert got is not None and got.version == 1
    assert [d.name for d in await store.list_definitions(after="", count=10)] == [name]

    if is_cluster(store_redis):
        keys = [k async for k in store_redis.scan_iter(match=f"{PREFIX}*", count=1000)]
        assert len(keys) >= 8 and {key_slot(k) for k in keys} == {key_slot(PREFIX.encode())}

    # retention: the final append set the TTLs; prune then drops the index entries
    async def pruned() -> bool:
        await store.prune_expired()
        return not await store.exists(saga_id) and not await store.page_ids(
            "idx:all", before="", count=10
        )

    await eventually(pruned, timeout_s=5, every_s=0.05, what="retention")
    assert await store.load(saga_id) is None
