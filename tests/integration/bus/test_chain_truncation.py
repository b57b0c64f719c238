"""VerifyChain detects a truncated tail (issue 18): the gateway stores each
chain's head (the last confirmed link: sequence, offset, hash) in its state
store, and a partition that ends before a head it covers is a break,
CHAIN_BREAK_REASON_TRUNCATED; records removed at the front (retention,
delete_records) are not."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient, NewTopic

from agentmesh.bus.v1 import bus_pb2
from tests.integration.bus.conftest import Gateway, start_gateway, unique
from tests.integration.bus.helpers import env
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def raw_records(bootstrap: str, topic: str, n: int) -> list[Any]:
    """The first n records of partition 0, read with a plain consumer."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("raw"), "enable.auto.commit": False}
    )
    try:
        c.assign([KTP(topic, 0, 0)])
        out: list[Any] = []
        for _ in range(200):
            if len(out) >= n:
                break
            m = c.poll(0.2)
            if m is not None and not m.error():
                out.append(m)
        assert len(out) == n, f"read {len(out)} of {n}"
        return out
    finally:
        c.close()


async def publish(g: Gateway, topic: str, n: int) -> list[bus_pb2.PublishResponse]:
    return [
        await g.stub.Publish(bus_pb2.PublishRequest(message=env(topic, f"m{i}".encode())))
        for i in range(n)
    ]


@pytest.fixture(params=["memory", "redis"])
async def kgw(request: pytest.FixtureRequest, kafka_broker: Any) -> Any:
    """A Kafka gateway keeping its chain heads in this process or in Redis."""
    extra = ["--state-store", request.param]
    if request.param == "redis":
        extra += ["--redis-url", request.getfixturevalue("redis_url")]
    g = await start_gateway("kafka", kafka_broker.bootstrap, "--default-partitions", "1", *extra)
    try:
        yield g
    finally:
        await g.daemon.stop()


async def test_a_lost_tail_is_reported_at_the_chain_head(kgw: Gateway, kafka_broker: Any):
    topic = unique("trunc")
    written = await publish(kgw, topic, 5)
    v = await kgw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
    assert v.valid and v.records_checked == 5, v
    # Lose the last two links: the topic comes back holding only the first
    # three records, byte for byte (as after an unclean leader election).
    keep = raw_records(kafka_broker.bootstrap, topic, 3)
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.delete_topics([topic])[topic].result(30)

    async def recreated() -> bool:
        try:
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        except Exception:
            return False
        return True

    await eventually(recreated, timeout_s=60, every_s=0.5, what="the topic recreated")
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for m in keep:
        p.produce(topic, m.value(), m.key(), partition=0, headers=m.headers())
    assert p.flush(30) == 0

    async def verified() -> bus_pb2.VerifyChainResponse | None:
        r = await kgw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
        return r if r.records_checked == 3 else None

    v = await eventually(verified, timeout_s=30, every_s=0.5, what="the shortened chain read")
    assert not v.valid
    b = v.first_break
    assert b.reason == bus_pb2.CHAIN_BREAK_REASON_TRUNCATED
    last = written[-1]
    assert (b.offset, b.sequence, b.chain_id) == (
        last.position.offset,
        last.provenance.sequence,
        last.provenance.chain_id,
    )
    assert last.provenance.hash in b.expected and "sequence 3" in b.actual
    # A range that stops before the head does not cover it.
    part = await kgw.stub.VerifyChain(
        bus_pb2.VerifyChainRequest(topic=topic, partition=0, end_offset=3)
    )
    assert part.valid, part


async def test_records_deleted_at_the_front_are_not_a_truncation(kgw: Gateway, kafka_broker: Any):
    topic = unique("front")
    await publish(kgw, topic, 4)
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    (fut,) = admin.delete_records([KTP(topic, 0, 2)]).values()
    fut.result(30)
    v = await kgw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
    assert v.valid, v
    assert v.records_checked == 2
    # Everything deleted (retention ran past the head): nothing to miss.
    (fut,) = admin.delete_records([KTP(topic, 0, 4)]).values()
    fut.result(30)
    v = await kgw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
    assert v.valid and v.records_checked == 0, v
