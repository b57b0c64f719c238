"""One Redis round trip for a list of commands, leaner than redis-py's Pipeline.

`exchange(redis, cmds)` sends the commands as one pipeline on a pooled
connection and returns the raw replies in order (a command's error in its
place as the ResponseError). The task store's `send` uses it on a single
Redis or Sentinel (a Redis Cluster goes through redis-py's own pipeline).

It relies on two redis-py connection methods beside the public ones:
`_send_packed_command` (a write without its own timeout task; present since
redis-py 4.2) and `read_response(timeout=math.inf)` (no per-reply timer).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis[hiredis], as the project depends on it; redis-py packs without it
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover
    _hiredis_pack = None  # type: ignore[assignment]


#: Connections `exchange` keeps between round trips, per pool, instead of
#: returning each to the pool (a BlockingConnectionPool checkout is a lock,
#: a condition, a timer and a readiness check: ~3% of the coordinator's CPU).
_idle: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _keep(pool: Any) -> int:
    """How many idle connections `exchange` keeps out of `pool`: at most 4,
    and never more than an eighth of its size (0 for a pool under 8), so
    the other users of a small pool are not starved."""
    size = getattr(pool, "max_connections", 0) or 0
    return min(4, size // 8)


async def exchange(redis: Any, cmds: Sequence[tuple[Any, ...]]) -> list[Any]:
    """`cmds` as one pipeline on a pooled connection, raw replies in order.

    Why not redis-py's Pipeline: per round trip it makes a Pipeline object,
    a wait_for task around the write and an asyncio timeout around every
    reply, plus its observability hooks; on the coordinator that was about
    a fifth of the main thread (perf/saga/TASKS_RESULTS.md). Here the
    client's socket timeout bounds the whole round trip once, so a Redis
    that accepts but never answers (SIGSTOP) still fails as
    redis.exceptions.TimeoutError, and the connection is dropped. Broken
    connections are retried with the client's Retry policy, as the
    Pipeline does. A few connections stay checked out between round trips
    (`_keep`); one that failed goes back to the pool, disconnected.

    Args:
        redis: a redis.asyncio.Redis (not a cluster client).
        cmds: the commands, each a tuple of its arguments.

    Raises:
        redis.exceptions.TimeoutError: no full answer within the socket timeout.
        redis.exceptions.ConnectionError: the connection failed (after the
            client's retries).
    """
    pool = redis.connection_pool
    idle = _idle.get(pool)
    if idle is None:
        idle = _idle[pool] = []
    conn = idle.pop() if idle else await pool.get_connection()
    try:
        out = await conn.retry.call_with_retry(
            lambda: _round_trip(conn, cmds), lambda _err: conn.disconnect()
        )
    except BaseException:
        await pool.release(conn)
        raise
    if len(idle) < _keep(pool) and conn.is_connected:
        idle.append(conn)
    else:
        await pool.release(conn)
    return out


async def _round_trip(conn: Any, cmds: Sequence[tuple[Any, ...]]) -> list[Any]:
    if not conn.is_connected:
        await conn.connect()
    if _hiredis_pack is not None:
        # the same bytes as conn.pack_commands (str as UTF-8, numbers as
        # text), without its per-argument Python encoding: ~7x less CPU
        packed = [b"".join([_hiredis_pack(tuple(c)) for c in cmds])]
    else:
        packed = conn.pack_commands(cmds)
    where = f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
    out: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):  # None: no deadline
            # the write without send_packed_command's own wait_for task (the
            # deadline above bounds it); redis-py has had this method since 4.2
            await conn._send_packed_command(packed)
            for _ in cmds:
                try:
                    # math.inf: no per-reply timer (redis-py's documented opt-out)
                    out.append(await conn.read_response(timeout=math.inf))
                except ResponseError as e:
                    out.append(e)
    except TimeoutError as e:  # before OSError, its base class
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout in a pipeline to {where}") from e
    except OSError as e:
        await conn.disconnect(nowait=True)
        raise RedisConnectionError(f"Error in a pipeline to {where}: {e}") from e
    except BaseException:
        # a reply not read (cancelled, a connection error): never hand the
        # socket to the next borrower with replies still on it
        await conn.disconnect(nowait=True)
        raise
    return out
