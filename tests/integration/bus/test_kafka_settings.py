"""Production Kafka settings of the gateway reach the broker and its clients:
producer compression, batch size and the librdkafka pass-through (with the
guarantees still in force), topic replication factor, min.insync.replicas,
retention and cleanup policy as defaults and per CreateTopic, a broker
refusal as INVALID_ARGUMENT naming the field, and guarantee-breaking
pass-through keys refused at startup with the reason."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient, ConfigResource

from agentmesh.bus.v1 import bus_pb2
from agentmesh.runtime.config import load_config
from agentmesh.runtime.errors import InvalidArgument, from_rpc_error
from agentmesh.server.bus.settings import BusSettings
from tests.integration.bus.conftest import start_gateway, unique
from tests.integration.bus.helpers import env, seconds

pytestmark = [pytest.mark.integration]


def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(15)
    return {k: v.value for k, v in entries.items()}


def replicas(bootstrap: str, topic: str) -> int:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return len(md.topics[topic].partitions[0].replicas)


@pytest.mark.kafka
async def test_producer_and_topic_settings_reach_librdkafka_and_the_broker(kafka_broker: Any):
    gw = await start_gateway(
        "kafka", kafka_broker.bootstrap,
        "--kafka-compression-type", "lz4", "--kafka-batch-size", "65536",
        "--kafka-producer-config", "linger.ms=3,compression.level=5",
        "--kafka-consumer-config", "fetch.min.bytes=1,queued.max.messages.kbytes=32768",
        "--kafka-topic-min-insync-replicas", "1", "--kafka-topic-retention-ms", "3600000",
        "--kafka-topic-cleanup-policy", "delete",
    )
    try:
        conf = gw.servicer.backend.producer_config  # type: ignore[attr-defined]
        assert (conf["compression.type"], conf["batch.size"]) == ("lz4", 65536)
        assert (conf["linger.ms"], conf["compression.level"]) == ("3", "5")
        assert conf["acks"] == "all" and conf["enable.idempotence"] is True
        cconf = gw.servicer.backend.consumer_config(  # type: ignore[attr-defined]
            "g", earliest=True)
        assert cconf["queued.max.messages.kbytes"] == "32768"
        assert cconf["enable.auto.commit"] is False

        # An auto-created topic gets the defaults; the lz4 record reads back.
        auto = unique()
        r = await gw.stub.Publish(bus_pb2.PublishRequest(message=env(auto, b"z" * 500)))
        cfg = topic_configs(kafka_broker.bootstrap, auto)
        assert (cfg["min.insync.replicas"], cfg["retention.ms"], cfg["cleanup.policy"]) == (
            "1", "3600000", "delete")
        c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": unique("g")})
        try:
            c.assign([KTP(auto, r.position.partition, r.position.offset)])
            m = c.poll(10)
            assert m is not None and not m.error()
            assert bus_pb2.Envelope.FromString(m.value()).payload.bytes_value == b"z" * 500
        finally:
            c.close()

        # CreateTopic's own settings win over the defaults.
        name = unique()
        resp = await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(
            name=name, partitions=2, replication_factor=1, min_insync_replicas=1,
            retention=seconds(7200), cleanup_policy=bus_pb2.CLEANUP_POLICY_COMPACT_DELETE)))
        assert (resp.topic.partitions, resp.topic.replication_factor,
                resp.topic.retention.ToMilliseconds(), resp.topic.cleanup_policy) == (
            2, 1, 7_200_000, bus_pb2.CLEANUP_POLICY_COMPACT_DELETE)
        cfg = topic_configs(kafka_broker.bootstrap, name)
        assert (cfg["retention.ms"], cfg["cleanup.policy"]) == ("7200000", "compact,delete")
        assert replicas(kafka_broker.bootstrap, name) == 1
        forever = unique()
        await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(
            name=forever, infinite_retention=True)))
        assert topic_configs(kafka_broker.bootstrap, forever)["retention.ms"] == "-1"

        # The single broker cannot hold 3 replicas: INVALID_ARGUMENT naming the field.
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(
                name=unique(), replication_factor=3)))
        err = from_rpc_error(ei.value)
        assert isinstance(err, InvalidArgument), err
        assert [f for f, _ in err.field_violations] == ["topic.replication_factor"]
    finally:
        await gw.daemon.stop()


async def test_create_topic_refuses_bad_settings_on_both_backends(gw: Any):
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(
            name=unique(), replication_factor=-2, min_insync_replicas=-1)))
    err = from_rpc_error(ei.value)
    assert isinstance(err, InvalidArgument)
    assert {f for f, _ in err.field_violations} == {
        "topic.replication_factor", "topic.min_insync_replicas"}


@pytest.mark.parametrize(("flag", "pair", "why"), [
    ("--kafka-producer-config", "acks=1", "acks=all"),
    ("--kafka-producer-config", "enable.idempotence=false", "idempotent"),
    ("--kafka-producer-config", "message.timeout.ms=5", "--delivery-timeout-ms"),
    ("--kafka-producer-config", "partitioner=random", "hash chain"),
    ("--kafka-producer-config", "sasl.password=x", "security flags"),
    ("--kafka-producer-config", "no.such.key=1", "not an allowed key"),
    ("--kafka-producer-config", "lingerms", "not key=value"),
    ("--kafka-consumer-config", "enable.auto.commit=true", "after the client acks"),
    ("--kafka-consumer-config", "group.id=x", "consumer_group"),
])
def test_guarantee_breaking_pass_through_keys_are_refused_at_startup(
    flag: str, pair: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        load_config("bus", [flag, pair], settings=BusSettings, environ={})
    err = capsys.readouterr().err
    assert flag in err and why in err, err
    with pytest.raises(ValueError, match=why.replace("=", ".")):
        BusSettings(**{flag[2:].replace("-", "_"): pair})  # type: ignore[arg-type]
