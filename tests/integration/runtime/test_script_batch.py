"""Group commit of one Lua script (agentmesh.runtime.script_batch) against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from agentmesh.runtime.lease import LeaseLost, call_fenced
from agentmesh.runtime.script_batch import ScriptBatch

pytestmark = pytest.mark.integration

#: INCR KEYS[1] and return the new value; ARGV[1] == 'boom' fails the call
#: before it writes anything.
INCR = """
if ARGV[1] == 'boom' then return redis.error_reply('boom ' .. KEYS[1]) end
return redis.call('INCR', KEYS[1])
"""


async def _int(r: aioredis.Redis, key: str) -> int:
    v = await r.get(key)
    assert v is not None, key
    return int(v)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_calls_of_one_turn_are_one_pipeline_with_own_replies(r: aioredis.Redis) -> None:
    await r.script_load(INCR)  # else the first batch is NOSCRIPT, then the resend
    batch = ScriptBatch(r.register_script(INCR))
    out = await asyncio.gather(*(batch(keys=[f"k{i % 3}"], args=["ok"]) for i in range(9)))
    assert batch.batches == 1 and batch.calls == 9
    # sent in call order: each key's replies count up 1, 2, 3
    assert out == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [await _int(r, f"k{i}") for i in range(3)] == [3, 3, 3]
    # a call made later is a new batch
    assert await batch(keys=["k0"], args=["ok"]) == 4
    assert batch.batches == 2


async def test_an_error_goes_to_its_own_caller_only(r: aioredis.Redis) -> None:
    batch = ScriptBatch(r.register_script(INCR))
    out = await asyncio.gather(
        batch(keys=["a"], args=["ok"]),
        batch(keys=["b"], args=["boom"]),
        batch(keys=["c"], args=["ok"]),
        return_exceptions=True,
    )
    assert out[0] == 1 and out[2] == 1
    assert isinstance(out[1], ResponseError) and "boom b" in str(out[1])
    assert batch.batches == 1
    assert await r.get("b") is None


async def test_fenced_refusal_still_raises_lease_lost(r: aioredis.Redis) -> None:
    # call_fenced sees the batch as the script: a FENCED error reply is LeaseLost
    fenced = ScriptBatch(r.register_script("return redis.error_reply('FENCED: not yours')"))
    with pytest.raises(LeaseLost):
        await call_fenced(fenced, keys=["x"], args=[])  # type: ignore[arg-type]  # called only


async def test_lost_script_cache_runs_each_call_exactly_once(r: aioredis.Redis) -> None:
    batch = ScriptBatch(r.register_script(INCR))
    assert await batch(keys=["n"], args=["ok"]) == 1
    await r.script_flush()
    out = await asyncio.gather(*(batch(keys=["n"], args=["ok"]) for _ in range(5)))
    assert sorted(out) == [2, 3, 4, 5, 6]
    assert await _int(r, "n") == 6
    # the NOSCRIPT batch, then the reload's resend
    assert batch.batches == 3


async def test_a_cancelled_caller_leaves_the_batch_to_the_others(r: aioredis.Redis) -> None:
    batch = ScriptBatch(r.register_script(INCR))
    first = asyncio.ensure_future(batch(keys=["m"], args=["ok"]))
    second = asyncio.ensure_future(batch(keys=["m"], args=["ok"]))
    await asyncio.sleep(0)  # both queued; the flush is due
    first.cancel()
    assert await second == 2  # the cancelled caller's call still ran, first
    with pytest.raises(asyncio.CancelledError):
        await first
    await batch.aclose()
    assert await _int(r, "m") == 2


async def test_a_burst_over_max_batch_is_split(r: aioredis.Redis) -> None:
    batch = ScriptBatch(r.register_script(INCR), max_batch=4)
    out = await asyncio.gather(*(batch(keys=["s"], args=["ok"]) for _ in range(10)))
    assert sorted(out) == list(range(1, 11))
    assert batch.batches == 3 and batch.calls == 10


async def test_redis_down_fails_every_caller() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        batch = ScriptBatch(dead.register_script(INCR))
        out = await asyncio.gather(
            *(batch(keys=["z"], args=["ok"]) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(e, RedisConnectionError) for e in out), out
    finally:
        await dead.aclose()


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ScriptBatch(None, max_batch=0)  # type: ignore[arg-type]
