"""Connection helpers for the mesh's dependencies: Redis and Kafka.

Every daemon builds its clients here from its ServerConfig (`redis_from_config`,
`kafka_security_config`), so the Sentinel, Redis Cluster, password and Kafka
SASL/TLS settings reach all five daemons the same way.

Redis Cluster (`cluster_nodes`) needs every script's and transaction's keys in
one hash slot; each store names its keys with a hash tag for that (the key
schemas in the daemons' READMEs say which slot each key lives in).

Kafka producers are always idempotent with `acks=all`, so an OK publish means
the record is on every in-sync replica exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from agentmesh.runtime.config import ServerConfig


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection, like
    BlockingConnectionPool, instead of failing with "Too many connections".

    The MRO puts SentinelConnectionPool's master discovery in front of
    BlockingConnectionPool's waiting `get_connection`.
    """


def create_redis(
    url: str,
    *,
    timeout_s: float = 2.0,
    max_connections: int = 64,
    pool_timeout_s: float | None = None,
    password: str = "",
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "mymaster",
    sentinel_password: str = "",
    cluster_nodes: Sequence[tuple[str, int]] = (),
) -> aioredis.Redis:
    """An asyncio Redis client (hiredis parses replies when installed).

    The pool blocks (up to `pool_timeout_s`) when all `max_connections` are
    busy instead of failing with "Too many connections", so a burst of
    concurrent RPCs queues for a connection rather than erroring.

    With `sentinels`, the client asks them for the current master of
    `sentinel_master` and reconnects to the new master after a failover
    (redis-py's Sentinel support); the URL then gives only the user,
    password, db and TLS (`rediss://`), and its host and port are ignored.

    With `cluster_nodes`, the client is redis-py's `RedisCluster`: it reads the
    slot map from those nodes, sends each command to the master of its key's
    slot, follows MOVED/ASK and refreshes the map after a failover. The URL
    gives the user, password and TLS; its host and port are ignored and its
    db must be 0. The cluster client has no waiting pool: `max_connections`
    is per node, and past it a command fails with MaxConnectionsError (an
    UNAVAILABLE at the runtime's Redis boundary) instead of queueing.

    Args:
        url: `redis://[user:password@]host:port/db` (or `rediss://` for TLS).
        timeout_s: connect and socket timeout in seconds, so a dead Redis
            fails fast instead of hanging an RPC.
        max_connections: pool size.
        pool_timeout_s: wait for a free pooled connection, seconds; None means `timeout_s`.
        password: overrides the URL's password when not empty.
        sentinels: Sentinel (host, port) pairs; empty connects to the URL directly.
        sentinel_master: master set name the sentinels monitor.
        sentinel_password: AUTH password of the sentinels; empty when they have none.
        cluster_nodes: Redis Cluster startup (host, port) pairs; empty means no cluster.

    Returns:
        The client. A RedisCluster is returned typed as `redis.asyncio.Redis`:
        it offers the same commands, scripts and pipelines the stores use
        (redis-py's shared command mixins), but is not a subclass.

    Raises:
        ValueError: `cluster_nodes` together with `sentinels`, or with a URL
            that selects a db other than 0.
    """
    wait_s = timeout_s if pool_timeout_s is None else pool_timeout_s
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 0,
        "decode_responses": False,
    }
    if password:
        common["password"] = password
    from_url = parse_url(url)
    if cluster_nodes:
        return _cluster_client(
            dict(from_url), common, cluster_nodes, max_connections, bool(sentinels)
        )
    if not sentinels:
        # Not from_url(): there the URL's password would beat the override.
        pool = aioredis.BlockingConnectionPool(
            max_connections=max_connections, timeout=wait_s, **{**from_url, **common}
        )
        # from_pool hands the pool to the client, so aclose() also closes the pool.
        return aioredis.Redis.from_pool(pool)
    # The URL's host and port name no server under Sentinel; keep its auth, db and TLS.
    from_url.pop("host", None)
    from_url.pop("port", None)
    ssl = from_url.pop("connection_class", None) is SSLConnection
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "password": sentinel_password or None,
        },
    )
    # master_for's client owns the pool, so aclose() closes its connections.
    return sentinel.master_for(
        sentinel_master,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=max_connections,
        timeout=wait_s,
        ssl=ssl,
        **{**from_url, **common},
    )


def _cluster_client(
    from_url: dict[str, Any],
    common: dict[str, Any],
    nodes: Sequence[tuple[str, int]],
    max_connections: int,
    with_sentinels: bool,
) -> aioredis.Redis:
    if with_sentinels:
        raise ValueError("Redis Cluster and Sentinel are exclusive: set only one")
    db = int(from_url.pop("db", 0) or 0)
    if db:
        raise ValueError(f"Redis Cluster has only db 0, the URL selects db {db}")
    # The URL's host and port name no server here; the startup nodes do.
    from_url.pop("host", None)
    from_url.pop("port", None)
    ssl = from_url.pop("connection_class", None) is SSLConnection
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        max_connections=max_connections,
        ssl=ssl,
        # Slot map refreshed on the first MOVED after a failover, not every 5th.
        reinitialize_steps=1,
        **{**from_url, **common},
    )
    # See the docstring of create_redis: same command surface, not a subclass.
    return cast(aioredis.Redis, client)


def is_cluster(client: object) -> bool:
    """Whether `client` is a Redis Cluster client (from `create_redis(cluster_nodes=...)`)."""
    return isinstance(client, RedisCluster)


def redis_from_config(
    config: ServerConfig,
    *,
    timeout_s: float = 2.0,
    max_connections: int = 64,
    pool_timeout_s: float | None = None,
) -> aioredis.Redis:
    """`create_redis` with a daemon's Redis settings: URL, password, Sentinel, Cluster.

    Args:
        config: the daemon's configuration.
        timeout_s / max_connections / pool_timeout_s: as in `create_redis`.

    Raises:
        ValueError: when AGENTMESH_REDIS_SENTINELS or AGENTMESH_REDIS_CLUSTER_NODES
            is not a host:port list, or both are set, or a cluster URL names a db.
    """
    return create_redis(
        config.redis_url,
        timeout_s=timeout_s,
        max_connections=max_connections,
        pool_timeout_s=pool_timeout_s,
        password=config.redis_password,
        sentinels=config.redis_sentinel_nodes,
        sentinel_master=config.redis_sentinel_master,
        sentinel_password=config.redis_sentinel_password,
        cluster_nodes=config.redis_cluster_startup_nodes,
    )


def redis_probe(client: aioredis.Redis) -> Any:
    """A health probe that PINGs Redis."""

    async def probe() -> object:
        return await client.ping()

    return probe


def kafka_security_config(config: ServerConfig) -> dict[str, str]:
    """The librdkafka security settings of `config`, for every Kafka client.

    Only settings that are set appear, so an empty result leaves librdkafka's
    PLAINTEXT default. The result is merged into producer, consumer and admin
    configurations alike.

    Returns:
        e.g. {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "mesh", "sasl.password": "...", "ssl.ca.location": "/etc/kafka/ca.crt"}
    """
    pairs = {
        "security.protocol": config.kafka_security_protocol.upper(),
        "sasl.mechanism": config.kafka_sasl_mechanism.upper(),
        "sasl.username": config.kafka_sasl_username,
        "sasl.password": config.kafka_sasl_password,
        "ssl.ca.location": config.kafka_ssl_ca_file,
        "ssl.certificate.location": config.kafka_ssl_cert_file,
        "ssl.key.location": config.kafka_ssl_key_file,
    }
    return {key: value for key, value in pairs.items() if value}


def kafka_client_config(
    bootstrap: str, security: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings every Kafka client shares: bootstrap servers plus `security`.

    Args:
        bootstrap: `host:port[,host:port]`.
        security: from `kafka_security_config`; None means none.
    """
    return {"bootstrap.servers": bootstrap, **(security or {})}


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


def kafka_probe(
    bootstrap: str, *, timeout_s: float = 1.5, security: Mapping[str, str] | None = None
) -> Any:
    """A health probe that fetches cluster metadata with an AdminClient.

    The AdminClient is made once; metadata is fetched in a worker thread
    because confluent-kafka calls block.

    Args:
        bootstrap: `host:port[,host:port]`.
        timeout_s: metadata request timeout, seconds.
        security: from `kafka_security_config`, so the probe authenticates like the bus.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**kafka_client_config(bootstrap, security), "socket.timeout.ms": 1000})

    async def probe() -> object:
        md = await asyncio.to_thread(admin.list_topics, timeout=timeout_s)
        if not md.brokers:
            raise ConnectionError(f"no Kafka brokers reachable at {bootstrap}")
        return md

    return probe
