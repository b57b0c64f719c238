"""The runtime's fenced lease (agentmesh.runtime.lease) against a real Redis."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agentmesh.runtime.lease import (
    CLOCK_PRELUDE,
    FENCE_CHECK,
    LEASE_LUA,
    FencedLeases,
    Lease,
    LeaseKeys,
    LeaseLost,
    ReleaseStatus,
    RenewStatus,
    call_fenced,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: A commit script by the fence check's convention: KEYS[1] lease record,
#: ARGV[1] owner, ARGV[2] token; then it writes ARGV[3] to KEYS[2].
COMMIT = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + FENCE_CHECK
    + """
redis.call('SET', KEYS[2], ARGV[3])
return now_ms
"""
)
#: Long enough that a lease never expires by accident on a loaded machine, ms.
LONG_MS = 60_000
#: Short enough that waiting for an expiry is quick, ms.
SHORT_MS = 150


class CountingConnection(aioredis.Connection):
    """A connection that counts the requests it writes (one per round trip)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def gone(r: aioredis.Redis, key: str) -> bool:
    return not await r.exists(key)


def keys() -> LeaseKeys:
    return LeaseKeys.for_name("am:test:", uuid.uuid4().hex[:8])


async def acquire_eventually(
    leases: FencedLeases, k: LeaseKeys, owner: str, *, ttl_ms: int = LONG_MS
) -> Lease:
    async def once() -> Lease | None:
        return (await leases.acquire(k, owner=owner, ttl_ms=ttl_ms)).lease

    lease: Lease = await eventually(once, timeout_s=10, what=f"{owner} acquires")
    return lease


async def test_keys_share_a_cluster_slot() -> None:
    k = LeaseKeys.for_name("am:task:", "t-1")
    assert (k.record, k.fence) == ("am:task:lease:{t-1}", "am:task:fence:{t-1}")


async def test_expiry_lets_another_holder_acquire(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    a = (await leases.acquire(k, owner="a", ttl_ms=SHORT_MS * 4)).lease
    assert a is not None
    refused = await leases.acquire(k, owner="b", ttl_ms=LONG_MS)
    assert refused.lease is None and refused.holder == "a"
    assert 0 < int(await r.pttl(k.record)) <= SHORT_MS * 4  # the record expires by PX
    b = await acquire_eventually(leases, k, "b")
    assert b.token > a.token
    assert await r.hgetall(k.record) == {b"owner": b"b", b"token": str(b.token).encode()}


async def test_tokens_strictly_increase_across_expiry_and_release(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    tokens = []
    for i in range(4):
        lease = await acquire_eventually(leases, k, f"o{i}", ttl_ms=SHORT_MS)
        tokens.append(lease.token)
    # a released lease is free at once, and the next grant still moves on
    last = await acquire_eventually(leases, k, "x")
    assert await leases.release(k, owner="x", token=last.token) is ReleaseStatus.RELEASED
    after = (await leases.acquire(k, owner="y", ttl_ms=LONG_MS)).lease
    assert after is not None
    tokens += [last.token, after.token]
    assert tokens == sorted(set(tokens)), tokens
    assert int(await r.get(k.fence) or 0) == after.token


async def test_tokens_only_increase_under_random_interleavings(r: aioredis.Redis) -> None:
    """A seeded random mix of acquires, re-acquires, renewals, releases and expiries
    (the record's TTL cut to 1 ms) by five owners: every grant of a free lease
    takes a larger token than any grant before, and the owner always matches."""
    leases, k = FencedLeases(r), keys()
    rng = random.Random(14)
    held: dict[str, Lease] = {}
    granted: list[int] = []
    for _ in range(300):
        owner = rng.choice("abcde")
        op = rng.choice(["acquire", "reacquire", "renew", "release", "expire"])
        if op in ("acquire", "reacquire"):
            g = await leases.acquire(
                k, owner=owner, ttl_ms=LONG_MS, reentrant=op == "reacquire"
            )
            if g.lease is not None:
                if owner in held and op == "reacquire":
                    assert g.lease.token == held[owner].token  # same holder, same token
                else:
                    assert not granted or g.lease.token > granted[-1]
                    granted.append(g.lease.token)
                held = {owner: g.lease}
            else:
                assert owner not in held or op == "acquire"
                assert g.holder in held
        elif op == "renew" and owner in held:
            assert (await leases.renew(held[owner], ttl_ms=LONG_MS)).held
        elif op == "release" and owner in held:
            assert await leases.release(k, owner=owner) is ReleaseStatus.RELEASED
            held = {}
        elif op == "expire" and held:
            await r.pexpire(k.record, 1)
            await eventually(lambda: gone(r, k.record), what="record expired")
            held = {}
    assert len(granted) > 20 and granted == sorted(set(granted))


async def test_stale_holder_commit_is_refused(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    commit = r.register_script(COMMIT)
    data = f"am:test:data:{uuid.uuid4().hex[:8]}"
    a = (await leases.acquire(k, owner="a", ttl_ms=SHORT_MS)).lease
    assert a is not None
    assert int(await call_fenced(commit, keys=[k.record, data], args=[a.owner, a.token, "a1"]))
    # a pauses past its TTL: its lease is gone even before anyone else takes it
    await eventually(lambda: gone(r, k.record), what="a's lease expired")
    with pytest.raises(LeaseLost):
        await call_fenced(commit, keys=[k.record, data], args=[a.owner, a.token, "a2"])
    b = await acquire_eventually(leases, k, "b")
    await call_fenced(commit, keys=[k.record, data], args=[b.owner, b.token, "b1"])
    # a wakes up and writes with its old token, as itself or under b's name
    for owner, token in (("a", a.token), ("b", a.token), ("a", b.token)):
        with pytest.raises(LeaseLost):
            await call_fenced(commit, keys=[k.record, data], args=[owner, token, "stale"])
    assert await r.get(data) == b"b1"
    assert (await leases.renew(a, ttl_ms=LONG_MS)).status is RenewStatus.OTHER_HOLDER


async def test_call_fenced_passes_other_script_errors(r: aioredis.Redis) -> None:
    script = r.register_script("return redis.error_reply('BOOM not a fence')")
    with pytest.raises(ResponseError, match="BOOM") as err:
        await call_fenced(script, keys=[], args=[])
    assert not isinstance(err.value, LeaseLost)


async def test_renew_many_in_one_round_trip_returns_the_held_set(redis_url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    r = aioredis.Redis(connection_pool=pool)
    try:
        leases = FencedLeases(r)
        ks = [keys() for _ in range(6)]
        mine = [(await leases.acquire(k, owner="me", ttl_ms=LONG_MS)).lease for k in ks]
        assert all(mine)
        held = [lease for lease in mine if lease is not None]
        short = (await leases.acquire(keys(), owner="me", ttl_ms=SHORT_MS)).lease
        assert short is not None
        await leases.release(held[1].keys, owner="me", token=held[1].token)  # released
        await leases.release(held[2].keys, owner="me", token=held[2].token)
        taken = (await leases.acquire(held[2].keys, owner="other", ttl_ms=LONG_MS)).lease
        assert taken is not None  # taken by another owner
        await eventually(lambda: gone(r, short.keys.record), what="short expired")
        batch = [*held, short]
        await leases.renew_many(batch[:1], ttl_ms=LONG_MS)  # the script is loaded now
        before = CountingConnection.sent
        out = await leases.renew_many(batch, ttl_ms=LONG_MS * 2)
        assert CountingConnection.sent - before == 1
        assert [x.held for x in out] == [True, False, False, True, True, True, False]
        assert [x.status for x in out][1:3] == [RenewStatus.GONE, RenewStatus.OTHER_HOLDER]
        assert out[2].holder == "other"
        now_ms = (await r.time())[0] * 1000
        for lease, x in zip(batch, out, strict=True):
            if x.held:
                assert x.expire_ms >= now_ms + LONG_MS  # extended to the new TTL
                assert int(await r.pttl(lease.keys.record)) > LONG_MS
        assert await leases.renew_many([], ttl_ms=LONG_MS) == []
    finally:
        await r.aclose()
        await pool.aclose()


async def test_renew_many_reloads_a_flushed_script(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    a = (await leases.acquire(k, owner="a", ttl_ms=LONG_MS)).lease
    assert a is not None
    await r.script_flush()
    assert [x.held for x in await leases.renew_many([a], ttl_ms=LONG_MS)] == [True]


async def test_release_by_a_non_holder_does_nothing(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    a = (await leases.acquire(k, owner="a", ttl_ms=LONG_MS)).lease
    assert a is not None
    assert await leases.release(k, owner="b") is ReleaseStatus.NOT_HOLDER
    assert await leases.release(k, owner="b", token=a.token) is ReleaseStatus.NOT_HOLDER
    assert await leases.release(k, owner="a", token=a.token + 1) is ReleaseStatus.NOT_HOLDER
    assert (await leases.renew(a, ttl_ms=LONG_MS)).held  # still a's
    assert (await leases.acquire(k, owner="b", ttl_ms=LONG_MS)).holder == "a"
    assert await leases.release(k, owner="a", token=a.token) is ReleaseStatus.RELEASED
    assert await leases.release(k, owner="a", token=a.token) is ReleaseStatus.NOT_FOUND
    assert (await leases.renew(a, ttl_ms=LONG_MS)).status is RenewStatus.GONE


async def test_reentrant_acquire_keeps_the_token(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    a = (await leases.acquire(k, owner="a", ttl_ms=SHORT_MS)).lease
    assert a is not None
    assert (await leases.acquire(k, owner="a", ttl_ms=LONG_MS)).lease is None  # not reentrant
    again = await leases.acquire(k, owner="a", ttl_ms=LONG_MS, reentrant=True)
    assert again.lease == a
    assert int(await r.pttl(k.record)) > SHORT_MS  # and extended
    assert int(await r.get(k.fence) or 0) == a.token  # no token spent


async def test_counter_in_a_hash_field(r: aioredis.Redis) -> None:
    """A lease whose counter is a field of a HASH the caller keeps (the saga's)."""
    leases = FencedLeases(r)
    rec = f"am:test:rec:{uuid.uuid4().hex[:8]}"
    await r.hset(rec, mapping={"state": "RUNNING", "fence": 41})
    k = LeaseKeys(rec + ":lease", rec, "fence")
    a = (await leases.acquire(k, owner="a", ttl_ms=LONG_MS)).lease
    assert a is not None and a.token == 42
    assert await r.hget(rec, "fence") == b"42" and await r.hget(rec, "state") == b"RUNNING"


async def test_bad_arguments_are_refused(r: aioredis.Redis) -> None:
    leases, k = FencedLeases(r), keys()
    with pytest.raises(ValueError, match="owner"):
        await leases.acquire(k, owner="", ttl_ms=LONG_MS)
    for ttl in (0, -1):
        with pytest.raises(ValueError, match="ttl_ms"):
            await leases.acquire(k, owner="a", ttl_ms=ttl)
        with pytest.raises(ValueError, match="ttl_ms"):
            await leases.renew_many([Lease(k, "a", 1)], ttl_ms=ttl)
    assert not await r.exists(k.record, k.fence)  # nothing reached Redis
