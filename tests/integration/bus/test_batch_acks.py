"""Batched delivery and cumulative acks (Ack.up_to, MessageBatch.last_positions),
on both backends (memory and a real Kafka broker): the committed offset still
never passes an unacked message, up_to mixes with ack ids and nacks, a backlog
read back in large batches with cumulative acks loses no acked message and
keeps order per key, its chain verifies, and an undecodable envelope record
in the middle of a batch goes to the dead-letter topic while its neighbours
are delivered."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from agentmesh.bus.v1 import bus_pb2
from tests.integration.bus.conftest import Gateway, both_hot_paths, unique
from tests.integration.bus.helpers import Sub, env
from tests.integration.bus.test_contract import create, publish_stream
from tests.waiting import eventually

#: Subscribe's per-record loops: each test runs on the compiled and the Python twin.
hot_path = both_hot_paths

pytestmark = pytest.mark.integration


async def take_batches(sub: Sub, n: int, *, ack: bool = True) -> list[bus_pb2.ReceivedMessage]:
    """At least n deliveries, whole batches at a time; each batch acked with
    its last_positions unless told otherwise."""
    got: list[bus_pb2.ReceivedMessage] = []
    while len(got) < n:
        batch = await sub.next_batch()
        last: dict[tuple[str, int], int] = {}
        for m in batch.messages:
            tp = (m.position.topic, m.position.partition)
            last[tp] = max(last.get(tp, -1), m.position.offset)
        assert {(p.topic, p.partition): p.offset for p in batch.last_positions} == last
        got.extend(batch.messages)
        if ack:
            sub.ack_up_to(*batch.last_positions)
    return got


async def test_up_to_acks_whole_batches_and_commits_them(gw: Gateway):
    topic, group = unique(), unique("g")
    await create(gw, topic, 2)
    await publish_stream(gw, [[env(topic, str(i).encode(), key=f"k{i % 5}") for i in range(40)]])
    async with Sub(gw.stub, [topic], group, max_unacked=100) as sub:
        got = await take_batches(sub, 40)
    assert sorted(int(m.envelope.payload.bytes_value) for m in got) == list(range(40))
    async with Sub(gw.stub, [topic], group) as again:
        assert await again.nothing_within(1.5)


async def test_up_to_mixed_with_ids_and_nacks_never_acks_an_undelivered_message(gw: Gateway):
    topic, group = unique(), unique("g")
    await create(gw, topic, 1)
    await publish_stream(gw, [[env(topic, str(i).encode()) for i in range(10)]])
    async with Sub(gw.stub, [topic], group, max_unacked=10) as sub:
        ms = await sub.take(10, ack=False)
        assert [m.position.offset for m in ms] == list(range(10))
        sub.nack(ms[3], delay_s=1.5)  # waits for its redelivery: not outstanding
        # One Ack: id 7 and everything delivered at or below offset 5.
        sub.ack_up_to(bus_pb2.RecordPosition(topic=topic, partition=0, offset=5), msgs=(ms[7],))
        again = await sub.next(10)
        assert (again.position.offset, again.delivery_attempt) == (3, 2)
        # Stale: a position of a partition this stream does not own is ignored.
        sub.ack_up_to(bus_pb2.RecordPosition(topic=topic, partition=9, offset=100))
        await asyncio.sleep(0.5)
    # 3 was never acked (up_to came while it waited for redelivery): the
    # commit stops there, and 4..9 follow it again (at-least-once).
    async with Sub(gw.stub, [topic], group, max_unacked=10) as sub2:
        ms2 = await sub2.take(7, ack=False)
        assert [m.position.offset for m in ms2] == list(range(3, 10))
        sub2.ack_up_to(bus_pb2.RecordPosition(topic=topic, partition=0, offset=9))
        await asyncio.sleep(0.5)
    async with Sub(gw.stub, [topic], group) as sub3:
        assert await sub3.nothing_within(1.5)


async def test_up_to_at_max_deliveries_does_not_undo_a_dead_letter(gw: Gateway):
    topic, group = unique(), unique("g")
    await create(gw, topic, 1)
    await publish_stream(gw, [[env(topic, b"poison"), env(topic, b"fine")]])
    async with Sub(gw.stub, [topic], group, max_unacked=10, max_deliveries=2) as sub:
        first = await sub.take(2, ack=False)
        sub.nack(first[0], reason="bad")
        again = await sub.next(10)
        assert again.delivery_attempt == 2
        sub.nack(again, reason="still bad")  # the last delivery: dead-lettered
        sub.ack_up_to(bus_pb2.RecordPosition(topic=topic, partition=0, offset=1))

        async def dead() -> list[bus_pb2.DeadLetter]:
            r = await gw.stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
            return list(r.dead_letters)

        dls = await eventually(dead, timeout_s=20)
        assert [d.envelope.payload.bytes_value for d in dls] == [b"poison"]
        assert dls[0].reason == "still bad" and dls[0].delivery_count == 2
        await asyncio.sleep(0.5)
    async with Sub(gw.stub, [topic], group) as sub2:
        assert await sub2.nothing_within(1.5)


async def test_backlog_read_in_batches_with_up_to_loses_no_acked_message(gw: Gateway):
    """A few thousand keyed messages read back in large batches, with a
    disconnect half way: every message arrives, order per key holds within
    each stream, nothing acked comes back, and the chain verifies."""
    topic, group = unique(), unique("g")
    await create(gw, topic, 2)
    n, keys = 3000, 7
    batches = [[env(topic, f"{k}:{i}".encode(), key=f"key{k}")
                for i in range(j, j + 500) for k in [i % keys]] for j in range(0, n, 500)]
    for r in await publish_stream(gw, batches):
        assert all(rep.status.code == 0 for rep in r.reports)
    seen: set[bytes] = set()
    acked: set[bytes] = set()

    def check_order(ms: list[bus_pb2.ReceivedMessage]) -> None:
        last: dict[str, int] = defaultdict(lambda: -1)
        for m in ms:
            k, i = m.envelope.payload.bytes_value.decode().split(":")
            assert int(i) > last[k], f"key {k}: {i} after {last[k]}"
            last[k] = int(i)

    async with Sub(gw.stub, [topic], group, max_unacked=1000) as sub:
        first = await take_batches(sub, n // 2)
        await asyncio.sleep(0.5)  # let the last cumulative ack land
    check_order(first)
    seen.update(m.envelope.payload.bytes_value for m in first)
    acked.update(m.envelope.payload.bytes_value for m in first)
    async with Sub(gw.stub, [topic], group, max_unacked=1000) as sub:
        rest: list[bus_pb2.ReceivedMessage] = []
        deadline = time.monotonic() + 60
        while len(seen | {m.envelope.payload.bytes_value for m in rest}) < n:
            assert time.monotonic() < deadline, "not every message arrived"
            rest.extend(await take_batches(sub, 1))
    check_order(rest)
    assert not acked & {m.envelope.payload.bytes_value for m in rest}, \
        "an acked message came back after the disconnect"
    seen.update(m.envelope.payload.bytes_value for m in rest)
    assert len(seen) == n
    for m in first[:3] + rest[:3]:
        assert len(m.envelope.provenance.hash) == 64 and m.envelope.provenance.chain_id
    for p in range(2):
        v = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=p))
        assert v.valid and v.records_checked > 0 and not v.unchained_records, v


async def test_undecodable_envelope_in_a_batch_is_dead_lettered_and_the_rest_delivered(
    gw: Gateway,
):
    topic, group = unique(), unique("g")
    await create(gw, topic, 1)
    await publish_stream(gw, [[env(topic, b"before")]])
    bad = (topic, 0, None, b"\x0a\xff\xff", [("am-envelope", b"agentmesh.bus.v1.Envelope")],
           int(time.time() * 1000))
    (res,) = await gw.servicer.backend.write([bad])
    assert isinstance(res, int)
    await publish_stream(gw, [[env(topic, b"after")]])
    async def dead() -> list[bus_pb2.DeadLetter]:
        r = await gw.stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
        return list(r.dead_letters)

    # Open until the dead letter is written (closing cancels a write in flight).
    async with Sub(gw.stub, [topic], group, max_unacked=10) as sub:
        got = await sub.take(2)
        dls = await eventually(dead, timeout_s=20)
    assert [m.envelope.payload.bytes_value for m in got] == [b"before", b"after"]
    assert len(dls) == 1 and "undecodable envelope" in dls[0].reason
    assert dls[0].source.offset == 1
