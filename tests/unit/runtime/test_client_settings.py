"""How a daemon's config becomes Redis and Kafka client settings (no servers:
the clients are only built and inspected; tests/integration/runtime covers the
real Sentinel)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from redis.asyncio.connection import BlockingConnectionPool

from agentmesh.runtime.config import load_config
from agentmesh.runtime.deps import (
    BlockingSentinelConnectionPool,
    create_redis,
    kafka_client_config,
    kafka_producer_config,
    kafka_security_config,
    redis_from_config,
)

SASL_ENV = {
    "AGENTMESH_KAFKA_BOOTSTRAP": "kafka-0:9093,kafka-1:9093",
    "AGENTMESH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "AGENTMESH_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "AGENTMESH_KAFKA_SASL_USERNAME": "mesh",
    "AGENTMESH_KAFKA_SASL_PASSWORD": "s3cret",
    "AGENTMESH_KAFKA_SSL_CA_FILE": "/etc/agentmesh/kafka/ca.crt",
}


def test_kafka_security_maps_to_librdkafka_names() -> None:
    cfg = load_config("bus", [], environ=SASL_ENV)
    assert kafka_security_config(cfg) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "mesh",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/agentmesh/kafka/ca.crt",
    }
    base = kafka_client_config(cfg.kafka_bootstrap, kafka_security_config(cfg))
    assert base["bootstrap.servers"] == "kafka-0:9093,kafka-1:9093"
    producer = kafka_producer_config(cfg.kafka_bootstrap, **base)
    assert producer["security.protocol"] == "SASL_SSL"
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True


def test_no_security_settings_leave_librdkafka_defaults() -> None:
    cfg = load_config("bus", [], environ={"AGENTMESH_KAFKA_BOOTSTRAP": "k:9092"})
    assert kafka_security_config(cfg) == {}
    assert kafka_client_config("k:9092", None) == {"bootstrap.servers": "k:9092"}


def test_librdkafka_accepts_the_sasl_settings() -> None:
    # librdkafka rejects unknown properties and bad values when the client is
    # made (the second case shows it checks), so the mapped names are real.
    env = {**SASL_ENV, "AGENTMESH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    env.pop("AGENTMESH_KAFKA_SSL_CA_FILE")
    cfg = load_config("bus", [], environ=env)
    AdminClient(kafka_client_config("127.0.0.1:9", kafka_security_config(cfg)))
    with pytest.raises(KafkaException, match=r"security\.protocol"):
        AdminClient({"bootstrap.servers": "127.0.0.1:9", "security.protocol": "TLS"})


async def test_plain_redis_url_with_password_override() -> None:
    client = create_redis("redis://:fromurl@r:6380/4", password="fromsecret", max_connections=7)
    try:
        pool = client.connection_pool
        assert type(pool) is BlockingConnectionPool
        kwargs = pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("r", 6380, 4)
        assert kwargs["password"] == "fromsecret"
        assert pool.max_connections == 7
    finally:
        await client.aclose()


async def test_sentinel_settings_build_a_sentinel_managed_blocking_pool() -> None:
    cfg = load_config(
        "registry",
        [],
        environ={
            "AGENTMESH_REDIS_URL": "rediss://mesh:fromurl@ignored:1/5",
            "AGENTMESH_REDIS_PASSWORD": "fromsecret",
            "AGENTMESH_REDIS_SENTINELS": "s0:26379,s1:26379",
            "AGENTMESH_REDIS_SENTINEL_MASTER": "agentmesh",
            "AGENTMESH_REDIS_SENTINEL_PASSWORD": "sentinelpw",
        },
    )
    client = redis_from_config(cfg, max_connections=9, pool_timeout_s=4.0)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelConnectionPool)
        assert isinstance(pool, BlockingConnectionPool)  # waits instead of "Too many connections"
        assert pool.service_name == "agentmesh"
        assert pool.timeout == 4.0 and pool.max_connections == 9
        kwargs = pool.connection_kwargs
        assert "host" not in kwargs  # the master's address comes from the sentinels
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (5, "mesh", "fromsecret")
        assert "SSL" in pool.connection_class.__name__  # rediss:// keeps TLS
        sentinels = pool.sentinel_manager.sentinels
        assert [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["password"],
            )
            for s in sentinels
        ] == [
            ("s0", "sentinelpw"),
            ("s1", "sentinelpw"),
        ]
    finally:
        await client.aclose()
