"""The test infrastructure itself: real Redis and a real KRaft Kafka broker."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.infra import (
    ExternalRedis,
    InfraError,
    KafkaBroker,
    RedisServer,
    free_port,
    free_ports,
    pid_alive,
    unique_name,
)

pytestmark = pytest.mark.integration


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_gone(pid: int) -> bool:
    # A stopped server is reparented to init, which may reap it a moment
    # later; until then it is a zombie that holds no port and runs no code.
    return not pid_alive(pid)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.dbsize() == 0  # the fixture flushed it
        client.set("agentmesh:infra", b"ok", px=60_000)
        assert client.get("agentmesh:infra") == b"ok"
    finally:
        client.close()


def test_redis_url_fixture_rotates_dbs(redis_server: Any, redis_url: str) -> None:
    db = int(redis_url.rsplit("/", 1)[1])
    assert 1 <= db <= 15
    assert redis_url.startswith(redis_server.url.rsplit("/", 1)[0])


def test_redis_restart_keeps_port_and_data(tmp_path: Path) -> None:
    # A private server: the session one may be external, which must not restart.
    server = RedisServer(workdir=tmp_path / "redis", appendonly=True)
    with server:
        port = server.port
        first_pid = server.pid
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.set("k", "v")

        server.stop()
        assert first_pid is not None and _pid_gone(first_pid)
        with pytest.raises(redis.ConnectionError):
            client.ping()

        server.start()
        assert server.port == port
        assert server.pid not in (None, first_pid)
        assert client.get("k") == b"v"  # AOF replayed; redis-py reconnects

        server.restart()
        assert server.port == port
        assert client.ping() is True
        client.close()


def test_redis_stop_leaves_no_process(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path / "redis").start()
    pid = server.pid
    assert pid is not None and server.is_running()
    server.stop()
    assert _pid_gone(pid)
    assert not server.is_running()
    assert not _port_open(server.port)
    assert not (tmp_path / "redis" / "redis.pid").exists()
    server.stop()  # idempotent


def test_redis_start_failure_raises_with_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        server = RedisServer(port=taken, workdir=tmp_path / "redis")
        with pytest.raises(InfraError, match="Address already in use"):
            server.start()
    assert not server.is_running()


def test_external_redis_is_not_managed() -> None:
    ext = ExternalRedis("redis://127.0.0.1:6390/0")
    assert ext.managed is False
    assert ext.port == 6390
    assert ext.url_for_db(3) == "redis://127.0.0.1:6390/3"
    with pytest.raises(InfraError):
        ext.restart()


@pytest.mark.kafka
def test_kafka_idempotent_produce_then_consume(kafka_broker: Any) -> None:
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = unique_name("infra")
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    futures[topic].result(timeout=30)

    producer = Producer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    reports: list[tuple[Any, Any]] = []
    sent = {f"key-{i}": f"value-{i}".encode() for i in range(20)}
    for key, value in sent.items():
        producer.produce(
            topic, key=key, value=value, on_delivery=lambda err, msg: reports.append((err, msg))
        )
    assert producer.flush(30) == 0
    assert len(reports) == len(sent)
    assert all(err is None for err, _ in reports), [err for err, _ in reports if err]

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": unique_name("infra-group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    got: dict[str, bytes] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                continue
            msg_key, msg_value = msg.key(), msg.value()
            assert isinstance(msg_key, bytes) and msg_value is not None
            got[msg_key.decode()] = msg_value
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert got == sent


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_broker_stop_leaves_no_process(tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient

    broker = KafkaBroker(workdir=tmp_path / "kafka").start()
    pid = broker.pid
    assert pid is not None
    metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert list(metadata.brokers) == [1]
    broker.stop()
    assert _pid_gone(pid)
    assert not _port_open(broker.port)
    assert not _port_open(broker.controller_port)
