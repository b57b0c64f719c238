"""The bus gateway on a three-broker KRaft cluster (deploy/local/kafka.sh
cluster, the session's `kafka_cluster`), as a real process:

* a topic it creates gets replication factor 3 and min.insync.replicas 2
  (read back with AdminClient), a CreateTopic's own replication overrides it;
* publishing while the leader of one of the topic's partitions is SIGKILLed
  loses no message the gateway acknowledged: each is read back afterwards,
  with the broker still dead, at the partition and offset its ack named, and
  each key's messages are in publish order.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.server.bus.topics import TopicSpec, cluster_replication
from tests.infra import KafkaCluster, unique_name
from tests.integration.bus.helpers import env
from tests.procs import DaemonProcess, daemon

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 3
KEYS = 6
#: Bounds of the publish run: messages per key, and seconds in all.
PER_KEY = 100
PUBLISH_S = 90.0
#: Acked messages before the broker is killed.
KILL_AFTER = 150


def gateway(tmp_path: Path, cluster: KafkaCluster, *flags: str) -> DaemonProcess:
    # A delivery timeout longer than a leader election (the controller fences
    # a dead broker after broker.session.timeout.ms, 9 s) lets writes caught
    # by the kill ride it out instead of ending as unknown outcomes.
    return daemon(
        "bus",
        tmp_path,
        "--kafka-bootstrap",
        cluster.bootstrap,
        "--default-partitions",
        str(PARTITIONS),
        "--delivery-timeout-ms",
        "30000",
        "--health-interval-s",
        "0.5",
        *flags,
    )


def describe(bootstrap: str, topic: str) -> tuple[dict[int, list[int]], dict[int, int], str]:
    """(partition -> replica node ids, partition -> leader, min.insync.replicas) of `topic`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(topic=topic, timeout=10).topics[topic]
    assert md.error is None, md.error
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([res], request_timeout=10)[res].result(timeout=15)
    return (
        {p: list(pm.replicas) for p, pm in md.partitions.items()},
        {p: pm.leader for p, pm in md.partitions.items()},
        configs["min.insync.replicas"].value,
    )


def read_all(
    bootstrap: str, topic: str, timeout_s: float = 60.0
) -> dict[int, list[tuple[int, bytes]]]:
    """Partition -> [(offset, Envelope bytes)] of every record of `topic`, in offset order."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("readback"),
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + timeout_s
        while any(out[p][-1][0] + 1 < ends[p] if out[p] else ends[p] > 0 for p in out):
            assert time.monotonic() < deadline, f"read back stopped short of {ends}"
            for m in c.consume(500, 1.0):
                assert m.error() is None, m.error()
                p, offset, value = m.partition(), m.offset(), m.value()
                assert p is not None and offset is not None and value is not None
                out[p].append((offset, value))
        return out
    finally:
        c.close()


def test_cluster_replication_fills_in_only_what_is_left_open():
    open_ = TopicSpec()
    assert cluster_replication(open_, 3) == TopicSpec(replication_factor=3, min_insync_replicas=2)
    assert cluster_replication(open_, 5) == TopicSpec(replication_factor=3, min_insync_replicas=2)
    assert cluster_replication(open_, 2) == open_  # fewer brokers: the broker's defaults
    assert cluster_replication(open_, 0) == open_
    assert cluster_replication(TopicSpec(replication_factor=1), 3) == TopicSpec(1, 0)
    assert cluster_replication(TopicSpec(replication_factor=5), 5) == TopicSpec(5, 2)
    assert cluster_replication(TopicSpec(min_insync_replicas=3), 3) == TopicSpec(3, 3)
    assert cluster_replication(TopicSpec(-1, 1), 3) == TopicSpec(3, 1)


async def test_created_topics_are_replicated_three_times(
    kafka_cluster: KafkaCluster, tmp_path: Path
):
    auto, explicit = unique_name("rf.auto"), unique_name("rf.explicit")
    with gateway(tmp_path, kafka_cluster) as gw:
        async with grpc.aio.insecure_channel(gw.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            # Created on first publish, with the gateway's defaults.
            await stub.Publish(bus_pb2.PublishRequest(message=env(auto, b"x")), timeout=60)
            # A CreateTopic's own replication wins over the cluster default.
            await stub.CreateTopic(
                bus_pb2.CreateTopicRequest(
                    topic=bus_pb2.Topic(name=explicit, partitions=2, replication_factor=2)
                ),
                timeout=60,
            )

    replicas, _, min_isr = describe(kafka_cluster.bootstrap, auto)
    assert sorted(replicas) == list(range(PARTITIONS))
    assert all(sorted(r) == [1, 2, 3] for r in replicas.values()), replicas
    assert min_isr == "2"  # the brokers' own default is 1 (kafka.sh)

    replicas, _, min_isr = describe(kafka_cluster.bootstrap, explicit)
    assert all(len(r) == 2 for r in replicas.values()), replicas
    assert min_isr == "1"


@dataclass
class Run:
    """What the publishers saw: acks by key, errors, when the broker died."""

    acked: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    killed_at: float | None = None
    acked_after_kill: int = 0

    def total(self) -> int:
        return sum(len(v) for v in self.acked.values())


async def publish_key(
    stub: bus_pb2_grpc.BusServiceStub, topic: str, key: str, run: Run, deadline: float
) -> None:
    """Publish `key`'s messages one after another (the next after the previous
    one's outcome, so the order to check is the publish order)."""
    acked = run.acked.setdefault(key, {})
    for seq in range(PER_KEY):
        if time.monotonic() > deadline:
            return
        try:
            resp = await stub.Publish(
                bus_pb2.PublishRequest(message=env(topic, f"{key}:{seq}".encode(), key=key)),
                timeout=45,
            )
        except grpc.aio.AioRpcError as exc:
            # Not acked (UNAVAILABLE, or an unknown outcome): allowed, counted.
            name = exc.code().name
            run.errors[name] = run.errors.get(name, 0) + 1
            await asyncio.sleep(0.05)
            continue
        acked[seq] = (resp.position.partition, resp.position.offset)
        if run.killed_at is not None:
            run.acked_after_kill += 1


async def test_no_acked_message_lost_when_a_broker_is_killed(
    kafka_cluster: KafkaCluster, tmp_path: Path
):
    topic = unique_name("ha")
    run = Run()
    with gateway(tmp_path, kafka_cluster) as gw:
        async with grpc.aio.insecure_channel(gw.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            created = await stub.CreateTopic(
                bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(name=topic)), timeout=60
            )
            # The response names the replication the gateway filled in.
            assert created.topic.replication_factor == 3, created
            assert created.topic.min_insync_replicas == 2, created
            # A broker's metadata may trail the creation for a moment.
            for _ in range(100):
                replicas, leaders, min_isr = describe(kafka_cluster.bootstrap, topic)
                if all(n in (1, 2, 3) for n in leaders.values()):
                    break
                await asyncio.sleep(0.2)
            assert sorted(leaders) == list(range(PARTITIONS)), leaders
            assert all(n in (1, 2, 3) for n in leaders.values()), leaders
            assert all(len(r) == 3 for r in replicas.values()) and min_isr == "2"
            # The leader of partition 0: its partitions must move to a survivor.
            victim = kafka_cluster.port_of(leaders[0])

            deadline = time.monotonic() + PUBLISH_S
            keys = [f"k{i}" for i in range(KEYS)]
            tasks = [asyncio.create_task(publish_key(stub, topic, k, run, deadline)) for k in keys]
            try:
                while run.total() < KILL_AFTER:
                    assert time.monotonic() < deadline, f"only {run.total()} acks before the kill"
                    assert not all(t.done() for t in tasks), run.errors
                    await asyncio.sleep(0.02)
                kafka_cluster.kill(victim, signal.SIGKILL)
                run.killed_at = time.monotonic()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=PUBLISH_S + 60)
            finally:
                for t in tasks:
                    t.cancel()
    try:
        # Read back from the two survivors, the victim still dead.
        records = await asyncio.to_thread(read_all, kafka_cluster.bootstrap, topic)
        _, leaders_after, _ = describe(kafka_cluster.bootstrap, topic)
    finally:
        kafka_cluster.start()  # the session's later users find all three

    assert kafka_cluster.node_id(victim) not in leaders_after.values()
    # The gateway went on acknowledging writes with one broker dead.
    assert run.acked_after_kill > 0, (run.total(), run.errors)

    at: dict[tuple[int, int], bytes] = {}
    order: dict[str, list[int]] = {}
    for p, recs in records.items():
        for offset, value in recs:
            e = bus_pb2.Envelope.FromString(value)
            key, seq = e.payload.bytes_value.decode().split(":")
            assert e.key == key
            at[(p, offset)] = e.payload.bytes_value
            order.setdefault(key, []).append(int(seq))
    lost = [
        (k, s, pos)
        for k, acks in run.acked.items()
        for s, pos in acks.items()
        if at.get(pos) != f"{k}:{s}".encode()
    ]
    assert not lost, f"{len(lost)} acked messages not at their acked position: {lost[:10]}"
    for key, seqs in order.items():
        # One partition per key, read in offset order: publish order, no repeats
        # (an unacked write may be there or not, never out of place).
        assert seqs == sorted(set(seqs)), (key, seqs)
        assert set(run.acked[key]) <= set(seqs)
    print(
        f"acked {run.total()} ({run.acked_after_kill} after the kill), "
        f"errors {run.errors}, records {sum(len(r) for r in records.values())}"
    )
