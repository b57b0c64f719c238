"""Every acknowledged publish to a topic created a moment before is stored at
the position it was acknowledged with.

The gateway names each record's partition. While its producer had no
metadata for a just-created topic, records to those partitions waited in
librdkafka's unassigned queue, and about one new topic in ten lost its first
records: two publishes were acknowledged with the same offset and only the
later one was in the log. The gateway now writes to a new topic only once its
producer knows every partition's leader.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from tests import health
from tests.integration.bus.conftest import unique
from tests.integration.bus.helpers import env, high_watermarks
from tests.procs import daemon

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

TOPICS = 20
PER_TOPIC = 200




async def test_first_writes_to_new_topics_are_all_stored(kafka_broker: Any, tmp_path: Path) -> None:
    with daemon("bus", tmp_path, "--kafka-bootstrap", kafka_broker.bootstrap) as proc:
        await health.wait_health(proc.target, health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            sem = asyncio.Semaphore(64)
            for _ in range(TOPICS):
                topic = unique("fresh")
                positions: list[tuple[int, int]] = []

                async def publish(i: int, topic: str = topic,
                                  positions: list[tuple[int, int]] = positions) -> None:
                    async with sem:
                        r = await stub.Publish(bus_pb2.PublishRequest(
                            message=env(topic, str(i).encode())), timeout=30)
                        positions.append((r.position.partition, r.position.offset))

                # all at once, while the first one creates the topic
                await asyncio.gather(*(publish(i) for i in range(PER_TOPIC)))
                assert len(set(positions)) == PER_TOPIC, (
                    f"{topic}: {PER_TOPIC - len(set(positions))} publishes acknowledged with "
                    "the position of another"
                )
                highs = await asyncio.to_thread(high_watermarks, kafka_broker.bootstrap, topic)
                assert sum(highs.values()) == PER_TOPIC, (topic, highs)
