"""The bus gateway as a real process: health and metrics, Kafka down, a
gateway killed with SIGKILL between delivery and ack, and Kafka wire interop
in both directions."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from grpc_health.v1 import health_pb2

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.runtime.errors import Unavailable, from_rpc_error
from tests import health
from tests.infra import free_port
from tests.integration.bus.conftest import start_gateway, unique
from tests.integration.bus.helpers import Sub, env
from tests.procs import daemon, scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def wait_health(target: str, want: int) -> None:
    await health.wait_health(target, want, rpc_errors_ok=False)


async def test_memory_gateway_process_serves_health_and_metrics(tmp_path: Path):
    with daemon("bus", tmp_path, "--backend", "memory", "--health-interval-s", "0.3",
                "--max-topic-labels", "3") as proc:
        await wait_health(proc.target, health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            for i in range(6):
                await stub.Publish(bus_pb2.PublishRequest(message=env(f"m.t{i}", b"x")))
            async with Sub(stub, ["m.t0"], "dl", max_deliveries=1) as poison:
                poison.nack(await poison.next(), reason="bad")
                async with Sub(stub, ["m.t1"], "slow") as slow:
                    await slow.next()  # held unacked: lag 1

                    # Lag is reported every second: wait for the report
                    # rather than sleep past one, which a loaded machine can
                    # overrun.
                    async def lag_reported() -> str | None:
                        text = await asyncio.to_thread(scrape_metrics, proc.metrics_port)
                        return text if 'message_bus_consumer_lag{group="slow"} 1.0' in text \
                            else None

                    text = await eventually(lag_reported, timeout_s=15, every_s=0.1,
                                            what="consumer lag reported")
    sent = [ln for ln in text.splitlines() if ln.startswith("message_bus_sent_total{")]
    publish = [ln for ln in sent if 'type="publish"' in ln]
    assert len(publish) == 4  # 3 named topics + "other": the label set is bounded
    assert any('topic="other"' in ln and ln.endswith(" 3.0") for ln in publish)
    assert 'message_bus_dead_letters_total{topic="m.t0"} 1.0' in text
    assert 'message_bus_consumer_lag{group="slow"} 1.0' in text
    assert 'message_bus_connections{kind="subscribe"} 2.0' in text
    assert "message_bus_latency_ms_bucket" in text


@pytest.mark.kafka
async def test_kafka_down_means_not_serving_and_unavailable(tmp_path: Path):
    dead = f"127.0.0.1:{free_port()}"
    with daemon("bus", tmp_path, "--kafka-bootstrap", dead, "--health-interval-s", "0.3",
                "--delivery-timeout-ms", "2000") as proc:
        await wait_health(proc.target, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Publish(bus_pb2.PublishRequest(message=env("x.y", b"x")), timeout=20)
    err = from_rpc_error(ei.value)
    assert isinstance(err, Unavailable), err
    assert err.reason in ("KAFKA_DOWN", "UNKNOWN_OUTCOME")


@pytest.mark.kafka
async def test_sigkilled_gateway_message_is_redelivered_to_restarted_gateway(
    kafka_broker: Any, tmp_path: Path
):
    flags = ["--kafka-bootstrap", kafka_broker.bootstrap, "--session-timeout-ms", "6000"]
    topic, group = unique("kill"), unique("g")
    first = daemon("bus", tmp_path, *flags).start()
    try:
        async with grpc.aio.insecure_channel(first.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            r = await stub.Publish(bus_pb2.PublishRequest(message=env(topic, b"precious")))
            sub = Sub(stub, [topic], group)
            await sub.start()
            m = await sub.next(timeout_s=30)
            assert m.envelope.id == r.id
            first.signal(signal.SIGKILL)  # delivered, never acked
            first.wait(10)
            sub.call.cancel()
    finally:
        first.kill()
    with daemon("bus", tmp_path, *flags) as second:
        async with grpc.aio.insecure_channel(second.target) as ch:
            sub = Sub(bus_pb2_grpc.BusServiceStub(ch), [topic], group)
            await sub.start()
            # The dead member's partitions move over after its session times out.
            again = await sub.next(timeout_s=60)
            sub.ack(again)
            await sub.close()
    assert again.envelope.id == r.id and again.envelope.payload.bytes_value == b"precious"


@pytest.mark.kafka
async def test_wire_interop_with_plain_kafka_clients(kafka_broker: Any):
    gw = await start_gateway("kafka", kafka_broker.bootstrap)
    try:
        topic = unique("interop")
        await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(
            topic=bus_pb2.Topic(name=topic, partitions=1)))
        r = await gw.stub.Publish(bus_pb2.PublishRequest(message=env(
            topic, b"from-gateway", key="k1", headers={"tenant": "acme"}, priority=3)))
        # 1. An ordinary consumer reads the gateway's record and decodes it with the proto.
        c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": unique("plain")})
        c.assign([TopicPartition(topic, 0, 0)])
        msg = None
        for _ in range(150):
            msg = await asyncio.to_thread(c.poll, 0.2)
            if msg is not None and not msg.error():
                break
        c.close()
        assert msg is not None and not msg.error()
        e = bus_pb2.Envelope.FromString(msg.value())
        headers = {k: v.decode() for k, v in msg.headers()}
        assert (e.id, e.topic, e.key, e.payload.bytes_value) == (r.id, topic, "k1",
                                                                 b"from-gateway")
        assert msg.key() == b"k1" and msg.offset() == r.position.offset
        assert headers["tenant"] == "acme" and headers["am-id"] == r.id
        assert headers["am-priority"] == "PRIORITY_HIGH"
        assert headers["am-hash"] == r.provenance.hash
        assert headers["am-envelope"] == "agentmesh.bus.v1.Envelope"
        # 2. A record from an ordinary producer reaches a gateway subscriber.
        p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
        p.produce(topic, b'{"n": 1}', key=b"k2",
                  headers=[("content-type", b"application/json"), ("origin", b"legacy")])
        p.flush(10)
        async with Sub(gw.stub, [topic], unique("g")) as sub:
            got = await sub.take(2)
        plain = got[1].envelope
        assert got[0].envelope.id == r.id
        assert plain.payload.bytes_value == b'{"n": 1}'
        assert plain.payload.content_type == "application/json"
        assert plain.key == "k2" and plain.headers["origin"] == "legacy"
        assert plain.id == f"{topic}/0/1" and plain.topic == topic
        # The plain record is not part of the chain and does not break it.
        v = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
        assert v.valid and v.records_checked == 1 and v.unchained_records == 1
    finally:
        await gw.daemon.stop()


