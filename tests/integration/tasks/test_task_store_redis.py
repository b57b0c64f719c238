"""TaskStore's own pipeline path (store.send) against a real, private Redis:
a paused Redis still fails as a socket timeout (there is no per-reply timer,
one deadline per round trip), a cancelled round trip never leaves its replies
for the next borrower of the connection, errors stay in their place and a
flushed script cache is reloaded.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentmesh.runtime.deps import create_redis
from agentmesh.server.saga.tasks.store import TaskStore, send
from tests.infra import RedisServer


async def test_paused_redis_is_a_timeout_and_the_store_recovers(
    private_redis: RedisServer,
) -> None:
    client = create_redis(private_redis.url, timeout_s=0.2, max_connections=1)
    store = TaskStore(client)
    try:
        assert await store.get("t-none") is None
        pid = private_redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            with pytest.raises(RedisTimeoutError):
                # bounded: the client's retries of 0.2 s each, far below 30 s
                await asyncio.wait_for(store.get("t-none"), 30)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await store.get("t-none") is None
        got = await send(client, [("SET", "am:test:k", b"v"), ("GET", "am:test:k")])
        assert got[0] in (b"OK", True) and got[1] == b"v"
    finally:
        await store.close()
        await client.aclose()


async def test_a_cancelled_round_trip_leaves_no_reply_behind(
    private_redis: RedisServer,
) -> None:
    # one connection, so the next call borrows the one the cancelled call used
    client = create_redis(private_redis.url, timeout_s=5.0, max_connections=1)
    try:
        slow = asyncio.ensure_future(send(client, [("BLPOP", "am:test:empty", 1)]))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await send(client, [("RPUSH", "am:test:empty", b"late")])
        got = await send(client, [("SET", "am:test:a", b"1"), ("GET", "am:test:a")])
        assert got[1] == b"1"  # not the BLPOP's reply of the cancelled call
    finally:
        await client.aclose()


async def test_errors_in_place_and_script_cache_reloaded(private_redis: RedisServer) -> None:
    client = create_redis(private_redis.url)
    try:
        script = client.register_script("return ARGV[1] .. '!'")
        await client.set("am:test:s", b"x")
        got = await send(
            client,
            [
                ("INCR", "am:test:s"),  # not an integer: an error reply, in its place
                (script, [], ["a"]),
                ("GET", "am:test:s"),
            ],
        )
        assert isinstance(got[0], ResponseError)
        assert got[1:] == [b"a!", b"x"]
        await client.script_flush()
        got = await send(client, [("GET", "am:test:s"), (script, [], ["b"])])
        assert got == [b"x", b"b!"]
    finally:
        await client.aclose()


async def test_a_small_pool_is_not_held_between_round_trips(private_redis: RedisServer) -> None:
    # send keeps up to an eighth of a pool checked out between round trips:
    # none of a pool of one, whose other users would otherwise wait it out
    client = create_redis(private_redis.url, timeout_s=1.0, max_connections=1)
    try:
        await send(client, [("SET", "am:test:p", b"1")])
        assert await asyncio.wait_for(client.get("am:test:p"), 10) == b"1"
    finally:
        await client.aclose()
