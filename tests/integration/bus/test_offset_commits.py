"""Offset commits of a Kafka subscription are coalesced: a subscriber that
acks thousands of messages one Ack at a time gets its whole acked prefix
committed while the stream is still open, with far fewer OffsetCommit
requests than acks (one per ack once stalled a consumer until its group
session expired)."""

from __future__ import annotations

import asyncio
import collections
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KTP
from grpc_health.v1 import health_pb2

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from tests import health
from tests.integration.bus.conftest import unique
from tests.integration.bus.helpers import Sub, env, high_watermarks
from tests.procs import daemon, scrape_metrics
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

N = 2000


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = c.committed([KTP(topic, p) for p in parts], timeout=10)
        return sum(tp.offset for tp in tps if tp.offset >= 0)
    finally:
        c.close()




def commits_sent(metrics_port: int) -> float:
    text = scrape_metrics(metrics_port)
    m = re.search(r"^message_bus_offset_commits_total (\S+)$", text, re.M)
    assert m, "message_bus_offset_commits_total not exported"
    return float(m.group(1))


async def test_single_acks_are_committed_in_coalesced_requests(
    kafka_broker: Any, tmp_path: Path
) -> None:
    topic, group = unique("commits"), unique("g")
    with daemon("bus", tmp_path, "--kafka-bootstrap", kafka_broker.bootstrap) as proc:
        await health.wait_health(proc.target, health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            sem = asyncio.Semaphore(64)

            async def publish(i: int) -> None:
                async with sem:
                    await stub.Publish(
                        bus_pb2.PublishRequest(message=env(topic, str(i).encode())), timeout=30
                    )

            await asyncio.gather(*(publish(i) for i in range(N)))
            async with Sub(stub, [topic], group) as sub:
                got = []
                try:
                    for _ in range(N):  # one Ack request per message
                        got += await sub.take(1)
                except TimeoutError:
                    highs = await asyncio.to_thread(high_watermarks, kafka_broker.bootstrap, topic)
                    sent = [ln for ln in scrape_metrics(proc.metrics_port).splitlines()
                            if ln.startswith(("message_bus_messages", "message_bus_sub"))]
                    raise AssertionError(
                        f"delivery stalled after {len(got)} of {N}; high watermarks {highs}; "
                        f"offsets received per partition "
                        f"{sorted(collections.Counter(m.position.partition for m in got).items())}"
                        f"; metrics {sent}; gateway log:\n" + proc.tail(80)
                    ) from None

                async def all_committed() -> bool:
                    n = await asyncio.to_thread(
                        committed_total, kafka_broker.bootstrap, group, topic
                    )
                    return n == N

                # Still subscribed: the periodic commit, not the close, moved it.
                await eventually(all_committed, timeout_s=20, what=f"{N} offsets committed")
                sent = await asyncio.to_thread(commits_sent, proc.metrics_port)
    assert sorted(int(m.envelope.payload.bytes_value) for m in got) == list(range(N))
    assert 1 <= sent < N / 4, f"{sent} OffsetCommit requests for {N} acks"
