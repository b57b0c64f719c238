"""Connection helpers for the mesh's dependencies: Redis and Kafka.

Kafka producers are always idempotent with `acks=all`, so an OK publish means
the record is on every in-sync replica exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis


def create_redis(url: str, *, timeout_s: float = 2.0, max_connections: int = 64) -> aioredis.Redis:
    """An asyncio Redis client for `url` (hiredis parses replies when installed).

    The pool blocks (up to `timeout_s`) when all `max_connections` are busy
    instead of failing with "Too many connections", so a burst of concurrent
    RPCs queues for a connection rather than erroring.

    Args:
        url: `redis://host:port/db` (or `rediss://` for TLS).
        timeout_s: connect, socket and pool-wait timeout in seconds, so a dead
            Redis fails fast instead of hanging an RPC.
        max_connections: pool size.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=max_connections,
        timeout=timeout_s,
        health_check_interval=0,
        decode_responses=False,
    )
    # from_pool hands the pool to the client, so aclose() also closes the pool.
    return aioredis.Redis.from_pool(pool)


def redis_probe(client: aioredis.Redis) -> Any:
    """A health probe that PINGs Redis."""

    async def probe() -> object:
        return await client.ping()

    return probe


def kafka_producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """confluent-kafka producer settings: idempotent, acks=all, plus `overrides`.

    Args:
        bootstrap: `host:port[,host:port]`.
        overrides: librdkafka settings with dots written as underscores or
            given as a dict via `**{"linger.ms": 5}`.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "socket.keepalive.enable": True,
    }
    conf.update(overrides)
    return conf


def kafka_probe(bootstrap: str, *, timeout_s: float = 1.5) -> Any:
    """A health probe that fetches cluster metadata with an AdminClient.

    The AdminClient is made once; metadata is fetched in a worker thread
    because confluent-kafka calls block.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000})

    async def probe() -> object:
        md = await asyncio.to_thread(admin.list_topics, timeout=timeout_s)
        if not md.brokers:
            raise ConnectionError(f"no Kafka brokers reachable at {bootstrap}")
        return md

    return probe
