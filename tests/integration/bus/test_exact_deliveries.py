"""`max_deliveries` is exact across a rebalance and a gateway restart (issue 18):
a record's delivery count is kept with its position in the state store
(services/bus/state.py), so a message nacked over and over is dead-lettered
after exactly max_deliveries deliveries in total, whoever delivered them."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from tests.integration.bus.conftest import Gateway, unique
from tests.integration.bus.helpers import Sub, env, redis_state_gateway_flags
from tests.procs import daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def dead_letters(
    stub: bus_pb2_grpc.BusServiceStub, topic: str, n: int
) -> list[bus_pb2.DeadLetter]:
    async def listed() -> list[bus_pb2.DeadLetter] | None:
        resp = await stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
        return list(resp.dead_letters) if len(resp.dead_letters) >= n else None

    return await eventually(listed, timeout_s=30, every_s=0.2, what=f"{n} dead letter(s)")


async def test_delivery_count_survives_a_rebalance(gw: Gateway):
    topic, group = unique("dcreb"), unique("g")
    sent = await gw.stub.Publish(bus_pb2.PublishRequest(message=env(topic, b"poison")))
    seen = []
    # The first member of the group is delivered it twice and leaves without
    # settling it; the partition moves to the next member, whose delivery is
    # the third and last (max_deliveries 3).
    async with Sub(
        gw.stub, [topic], group, max_deliveries=3, start_position=bus_pb2.START_POSITION_EARLIEST
    ) as sub:
        m = await sub.next(30)
        seen.append(m.delivery_attempt)
        sub.nack(m, reason="bad")
        seen.append((await sub.next(30)).delivery_attempt)
    async with Sub(
        gw.stub, [topic], group, max_deliveries=3, start_position=bus_pb2.START_POSITION_EARLIEST
    ) as sub:
        m = await sub.next(30)
        assert m.envelope.id == sent.id
        seen.append(m.delivery_attempt)
        sub.nack(m, reason="bad")
        (dead,) = await dead_letters(gw.stub, topic, 1)
        assert await sub.nothing_within(1.0)
    assert seen == [1, 2, 3]
    assert dead.envelope.id == sent.id and dead.delivery_count == 3


@pytest.mark.kafka
async def test_max_deliveries_is_exact_across_a_gateway_sigkill(
    kafka_broker: Any, redis_url: str, tmp_path: Path
):
    flags = redis_state_gateway_flags(kafka_broker.bootstrap, redis_url)
    topic, group = unique("dckill"), unique("g")
    proc = daemon("bus", tmp_path, *flags).start()
    try:
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            sent = await stub.Publish(
                bus_pb2.PublishRequest(message=env(topic, b"poison")), timeout=20
            )
            sub = Sub(
                stub,
                [topic],
                group,
                max_deliveries=4,
                start_position=bus_pb2.START_POSITION_EARLIEST,
            )
            await sub.start()
            seen = []
            for _ in range(2):
                m = await sub.next(30)
                seen.append(m.delivery_attempt)
                sub.nack(m, reason="bad")
            third = await sub.next(30)  # in flight when the gateway dies
            seen.append(third.delivery_attempt)
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        proc = daemon("bus", tmp_path, *flags).start()
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            async with Sub(stub, [topic], group, max_deliveries=4) as sub:
                # Waits out the dead member's session before the partition moves.
                fourth = await sub.next(60)
                assert fourth.envelope.id == sent.id
                seen.append(fourth.delivery_attempt)
                sub.nack(fourth, reason="still bad")
                (dead,) = await dead_letters(stub, topic, 1)
                assert await sub.nothing_within(2.0)  # no fifth delivery
    finally:
        proc.kill()
    assert seen == [1, 2, 3, 4]
    assert dead.envelope.id == sent.id and dead.delivery_count == 4
    assert dead.reason == "still bad"


@pytest.mark.kafka
async def test_a_record_at_max_deliveries_before_a_restart_is_dead_lettered_at_once(
    kafka_broker: Any, redis_url: str, tmp_path: Path
):
    # The gateway dies after the last delivery's nack could be acted on or
    # while the last delivery is in flight: the next owner sends it to the
    # DLQ without delivering it again.
    flags = redis_state_gateway_flags(kafka_broker.bootstrap, redis_url)
    topic, group = unique("dcmax"), unique("g")
    proc = daemon("bus", tmp_path, *flags).start()
    try:
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            sent = await stub.Publish(
                bus_pb2.PublishRequest(message=env(topic, b"poison")), timeout=20
            )
            sub = Sub(
                stub,
                [topic],
                group,
                max_deliveries=2,
                start_position=bus_pb2.START_POSITION_EARLIEST,
            )
            await sub.start()
            m = await sub.next(30)
            sub.nack(m, reason="bad")
            last = await sub.next(30)
            assert last.delivery_attempt == 2  # the last one, never settled
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        proc = daemon("bus", tmp_path, *flags).start()
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            async with Sub(stub, [topic], group, max_deliveries=2) as sub:
                (dead,) = await dead_letters(stub, topic, 1)
                assert await sub.nothing_within(2.0)
    finally:
        proc.kill()
    assert dead.envelope.id == sent.id and dead.delivery_count == 2
