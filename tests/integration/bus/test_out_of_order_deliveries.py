"""`max_deliveries` stays exact when a partition is delivered out of offset
order (issue 18): the backlog sends CRITICAL records ahead of older LOW ones
of the same partition, so "the highest offset sent" does not say which
records were sent. After a rebalance or a gateway restart, a record that was
never delivered must still get delivery_attempt 1, and with max_deliveries=1
only the records that were delivered (and not acked) go to the dead-letter
topic."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.common.v1 import common_pb2
from tests.integration.bus.conftest import Gateway, both_hot_paths, unique
from tests.integration.bus.helpers import Sub, env, redis_state_gateway_flags, seconds
from tests.procs import daemon
from tests.waiting import eventually

#: Subscribe's per-record loops: each test runs on the compiled and the Python twin.
hot_path = both_hot_paths

pytestmark = pytest.mark.integration
P = common_pb2

N_LOW = 30
N_CRITICAL = 10
WINDOW = 4


async def publish_low_then_critical(
    stub: bus_pb2_grpc.BusServiceStub, topic: str
) -> dict[str, int]:
    """N_LOW LOW records then N_CRITICAL CRITICAL ones, each with its own key,
    in one partition; returns envelope id -> offset."""
    offsets: dict[str, int] = {}
    for i in range(N_LOW + N_CRITICAL):
        prio = P.PRIORITY_LOW if i < N_LOW else P.PRIORITY_CRITICAL
        r = await stub.Publish(
            bus_pb2.PublishRequest(
                message=env(topic, f"m{i}".encode(), key=f"k{i}", priority=prio)
            ),
            timeout=20,
        )
        offsets[r.id] = r.position.offset
    assert sorted(offsets.values()) == list(range(N_LOW + N_CRITICAL))
    return offsets


def open_kw() -> dict[str, Any]:
    return {
        "max_unacked": WINDOW,
        "max_deliveries": 1,
        "ack_deadline": seconds(120),
        "start_position": bus_pb2.START_POSITION_EARLIEST,
    }


async def first_owner(sub: Sub, offsets: dict[str, int]) -> tuple[set[str], set[str]]:
    """Ack the first window, then take the next window unacked: CRITICAL
    records ahead of older LOW ones. Returns (acked ids, unacked ids)."""
    first = await sub.take(WINDOW, ack=False)
    await asyncio.sleep(1.5)  # let the whole partition reach the backlog
    sub.ack(*first)
    held = await sub.take(WINDOW, ack=False)
    assert all(m.delivery_attempt == 1 for m in first + held)
    sent = {m.envelope.id for m in first + held}
    unsent = [off for i, off in offsets.items() if i not in sent]
    # The defect's precondition: a record below the highest offset sent was never sent.
    assert min(unsent) < max(m.position.offset for m in held), (
        [m.position.offset for m in first],
        [m.position.offset for m in held],
    )
    assert any(m.envelope.priority == P.PRIORITY_CRITICAL for m in held)
    return {m.envelope.id for m in first}, {m.envelope.id for m in held}


async def next_owner(
    stub: bus_pb2_grpc.BusServiceStub,
    sub: Sub,
    topic: str,
    offsets: dict[str, int],
    acked: set[str],
    held: set[str],
    *,
    first_timeout_s: float,
) -> None:
    """The next owner delivers every record the first one never sent, each
    once with attempt 1, and dead-letters the ones it held.

    An acked record above the first unacked offset is not committed (the
    committed offset is the contiguous acked prefix), so the next owner
    fetches it again; it was delivered once, so with max_deliveries=1 it may
    go to the DLQ too. A record never sent never does."""
    never_sent = set(offsets) - acked - held
    got: dict[str, int] = {}
    timeout_s = first_timeout_s
    while len(got) < len(never_sent):
        try:
            m = await sub.next(timeout_s)
        except TimeoutError:
            break
        timeout_s = 10.0
        assert m.envelope.id not in got, f"offset {m.position.offset} delivered twice"
        got[m.envelope.id] = m.delivery_attempt
        sub.ack(m)

    async def all_held_dead() -> list[bus_pb2.DeadLetter] | None:
        resp = await stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
        ids = {d.envelope.id for d in resp.dead_letters}
        return list(resp.dead_letters) if held <= ids else None

    # Each held record is dead-lettered by whichever owner fetches it again
    # (the DLQ write of a member that leaves meanwhile is redone by the next).
    dead = await eventually(all_held_dead, timeout_s=30, every_s=0.2, what="the held records")
    dead_ids = {d.envelope.id for d in dead}
    dead_offsets = sorted(offsets[i] for i in dead_ids)
    # Marks that only keep the highest offset sent count every LOW record
    # below the highest CRITICAL one as delivered once: such a record reaches
    # the DLQ without ever being delivered.
    assert held <= dead_ids <= held | acked, (
        f"dead-lettered {dead_offsets}, held {sorted(offsets[i] for i in held)}"
    )
    assert all(d.delivery_count == 1 for d in dead)
    assert sorted(offsets[i] for i in got) == sorted(offsets[i] for i in never_sent)
    assert set(got.values()) == {1}, {offsets[i]: n for i, n in got.items() if n != 1}
    assert await sub.nothing_within(1.0)


async def test_out_of_order_deliveries_stay_exact_across_a_rebalance(gw: Gateway):
    topic, group = unique("ooo"), unique("g")
    await gw.stub.CreateTopic(
        bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(name=topic, partitions=1))
    )
    offsets = await publish_low_then_critical(gw.stub, topic)
    async with Sub(gw.stub, [topic], group, **open_kw()) as sub:
        acked, held = await first_owner(sub, offsets)
    # The first member left with WINDOW records unacked: the partition moves.
    async with Sub(gw.stub, [topic], group, **open_kw()) as sub:
        await next_owner(gw.stub, sub, topic, offsets, acked, held, first_timeout_s=60)


async def test_out_of_order_deliveries_stay_exact_when_a_member_joins(gw: Gateway):
    # The rebalance happens while the first member is still in the group: a
    # second member joins, then the first leaves holding its window.
    topic, group = unique("ooojoin"), unique("g")
    await gw.stub.CreateTopic(
        bus_pb2.CreateTopicRequest(topic=bus_pb2.Topic(name=topic, partitions=1))
    )
    offsets = await publish_low_then_critical(gw.stub, topic)
    first = Sub(gw.stub, [topic], group, **open_kw())
    await first.start()
    try:
        acked, held = await first_owner(first, offsets)
        second = Sub(gw.stub, [topic], group, **open_kw())
        await second.start()
    finally:
        await first.close()
    # The rebalance may hand the partition back to the first member, which
    # then sends (new) records before it leaves: they count as held.
    late = first.received()
    assert all(m.delivery_attempt == 1 for m in late), [
        (m.position.offset, m.delivery_attempt) for m in late
    ]
    held |= {m.envelope.id for m in late}
    try:
        await next_owner(gw.stub, second, topic, offsets, acked, held, first_timeout_s=60)
    finally:
        await second.close()


@pytest.mark.kafka
async def test_out_of_order_deliveries_stay_exact_across_a_gateway_sigkill(
    kafka_broker: Any, redis_url: str, tmp_path: Path
):
    flags = redis_state_gateway_flags(kafka_broker.bootstrap, redis_url)
    topic, group = unique("oookill"), unique("g")
    proc = daemon("bus", tmp_path, *flags).start()
    try:
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            offsets = await publish_low_then_critical(stub, topic)
            sub = Sub(stub, [topic], group, **open_kw())
            await sub.start()
            acked, held = await first_owner(sub, offsets)
            await asyncio.sleep(1.0)  # let the first window's commit reach the broker
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        proc = daemon("bus", tmp_path, *flags).start()
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            async with Sub(stub, [topic], group, **open_kw()) as sub:
                # Waits out the dead member's session before the partition moves.
                await next_owner(stub, sub, topic, offsets, acked, held, first_timeout_s=60)
    finally:
        proc.kill()
