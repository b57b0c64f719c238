"""The BusService contract, run against both backends (memory and a real
Kafka broker): every RPC, wildcards, priorities under backlog, order per key,
acks and resume, ack deadlines, dead letters and redrive, request-reply,
scatter-gather, topic admin and chain verification."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    from_rpc_error,
)
from agentmesh.server.bus.memory_backend import MemoryBackend
from tests.integration.bus.conftest import Gateway, both_hot_paths, unique
from tests.integration.bus.helpers import Sub, env, seconds
from tests.waiting import eventually

#: Subscribe's per-record loops: each test runs on the compiled and the Python twin.
hot_path = both_hot_paths

pytestmark = pytest.mark.integration
P = common_pb2


async def create(gw: Gateway, topic: str, partitions: int = 1) -> None:
    await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(
        topic=bus_pb2.Topic(name=topic, partitions=partitions)))


async def publish_stream(gw: Gateway, batches: list[list[bus_pb2.Envelope]]
                         ) -> list[bus_pb2.PublishStreamResponse]:
    async def reqs():
        for b in batches:
            yield bus_pb2.PublishStreamRequest(messages=b)
    return [r async for r in gw.stub.PublishStream(reqs())]


async def expect(code: type, aw):
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await aw
    err = from_rpc_error(ei.value)
    assert isinstance(err, code), (err, ei.value)
    return err


# ---- Publish ------------------------------------------------------------------
async def test_publish_returns_position_and_provenance_then_subscriber_gets_it(gw: Gateway):
    topic = unique()
    r = await gw.stub.Publish(bus_pb2.PublishRequest(message=env(
        topic, b"hello", key="k", headers={"trace": "t1"}, correlation_id="c1")))
    assert r.id and r.position.topic == topic and r.position.offset == 0
    assert r.provenance.sequence == 1 and len(r.provenance.hash) == 64
    async with Sub(gw.stub, [topic], unique("g")) as sub:
        assert sub.started is not None and list(sub.started.topics) == [topic]
        (m,) = await sub.take(1)
    e = m.envelope
    assert (e.id, e.key, e.payload.bytes_value, e.headers["trace"], e.correlation_id) == (
        r.id, "k", b"hello", "t1", "c1")
    assert e.priority == P.PRIORITY_NORMAL and e.provenance.hash == r.provenance.hash
    assert m.delivery_attempt == 1 and m.position.partition == r.position.partition


async def test_publish_bad_input_is_invalid_argument_with_field_violations(gw: Gateway):
    cases = {
        "message.topic": env(""),
        "message.priority": env(unique(), priority=42),
        "message.payload": bus_pb2.Envelope(topic=unique()),
        "message.headers[am-id]": env(unique(), headers={"am-id": "forged"}),
    }
    bad_topic = env("has space")
    err = await expect(InvalidArgument, gw.stub.Publish(bus_pb2.PublishRequest(message=bad_topic)))
    assert [f for f, _ in err.field_violations] == ["message.topic"]
    for field, e in cases.items():
        err = await expect(InvalidArgument, gw.stub.Publish(bus_pb2.PublishRequest(message=e)))
        assert field in [f for f, _ in err.field_violations], (field, err.field_violations)


async def test_payload_over_the_limit_is_resource_exhausted_and_not_written(gw: Gateway):
    topic = unique()
    await create(gw, topic)
    big = env(topic, b"x" * (1024 * 1024 + 1))
    await expect(ResourceExhausted, gw.stub.Publish(bus_pb2.PublishRequest(message=big)))
    v = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
    assert v.records_checked == 0 and v.end_offset == 0


# ---- PublishStream --------------------------------------------------------------
async def test_publish_stream_reports_each_message_in_order(gw: Gateway):
    topic = unique()
    await create(gw, topic, 1)
    batches = [[env(topic, f"{b}-{i}".encode(), key="k") for i in range(5)] for b in range(3)]
    batches[1][2] = env("", b"bad")  # one bad message does not fail the stream
    responses = await publish_stream(gw, batches)
    assert [len(r.reports) for r in responses] == [5, 5, 5]
    reports = [rep for r in responses for rep in r.reports]
    bad = reports[7]
    assert bad.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "message.topic" in bad.status.invalid_fields
    ok = [rep for i, rep in enumerate(reports) if i != 7]
    assert all(rep.status.code == 0 and len(rep.hash) == 64 for rep in ok)
    assert [rep.position.offset for rep in ok] == list(range(14))


# ---- Subscribe ------------------------------------------------------------------
async def test_wildcards_match_one_or_many_levels_but_not_dlq(gw: Gateway):
    root = unique("w")
    topics = [f"{root}.a.events", f"{root}.b.events", f"{root}.a.other", f"{root}.dlq"]
    for t in topics:
        await gw.stub.Publish(bus_pb2.PublishRequest(message=env(t, t.encode())))
    async with Sub(gw.stub, [f"{root}.*.events"], unique("g")) as star:
        got = {m.envelope.topic for m in await star.take(2)}
        assert got == set(topics[:2])
        assert await star.nothing_within(1.0)
    async with Sub(gw.stub, [f"{root}.#"], unique("g")) as hash_:
        got = {m.envelope.topic for m in await hash_.take(3)}
        assert got == set(topics[:3])
        assert await hash_.nothing_within(1.0)
    # A topic created after the subscription started is picked up.
    async with Sub(gw.stub, [f"{root}.new.*"], unique("g")) as late:
        assert list(late.started.topics) == []
        await asyncio.sleep(0.5)
        await gw.stub.Publish(bus_pb2.PublishRequest(message=env(f"{root}.new.x", b"n")))
        (m,) = await late.take(1)
        assert m.envelope.topic == f"{root}.new.x"


async def test_priority_order_under_backlog_without_starving_low(gw: Gateway):
    topic = unique()
    await create(gw, topic, 1)
    prios = [P.PRIORITY_LOW, P.PRIORITY_NORMAL, P.PRIORITY_HIGH, P.PRIORITY_CRITICAL]
    await publish_stream(gw, [[env(topic, f"{p}-{i}".encode(), priority=p) for i in range(10)]
                              for p in prios])
    async with Sub(gw.stub, [topic], unique("g"), max_unacked=1) as sub:
        first = await sub.next()
        await asyncio.sleep(1.5)  # let the whole backlog arrive behind the unacked one
        sub.ack(first)
        rest = await sub.take(39)
    order = [m.envelope.priority for m in rest]
    # CRITICAL goes first: either the very first delivery (the broker returned
    # everything at once) or the first one once the backlog had built up.
    assert P.PRIORITY_CRITICAL in (first.envelope.priority, order[0])
    mean = {p: sum(i for i, q in enumerate(order) if q == p) / order.count(p) for p in prios}
    assert mean[P.PRIORITY_CRITICAL] < mean[P.PRIORITY_HIGH] < mean[P.PRIORITY_NORMAL] \
        < mean[P.PRIORITY_LOW]
    last_critical = max(i for i, q in enumerate(order) if q == P.PRIORITY_CRITICAL)
    assert order.index(P.PRIORITY_LOW) < last_critical  # LOW is served while CRITICAL waits


async def test_order_per_key_is_kept_even_across_priorities(gw: Gateway):
    topic = unique()
    await create(gw, topic, 2)
    prios = [P.PRIORITY_LOW, P.PRIORITY_CRITICAL, P.PRIORITY_NORMAL, P.PRIORITY_HIGH]
    msgs = [env(topic, f"{k}:{i}".encode(), key=k, priority=prios[(i * 7 + len(k)) % 4])
            for i in range(20) for k in ("alpha", "beta", "gamma")]
    await publish_stream(gw, [msgs[:30], msgs[30:]])
    async with Sub(gw.stub, [topic], unique("g"), max_unacked=4) as sub:
        got = await sub.take(60)
    for k in ("alpha", "beta", "gamma"):
        seq = [int(m.envelope.payload.bytes_value.split(b":")[1]) for m in got
               if m.envelope.key == k]
        assert seq == list(range(20)), (k, seq)


async def test_acked_prefix_is_committed_and_unacked_resume_after_disconnect(gw: Gateway):
    topic, group = unique(), unique("g")
    await create(gw, topic, 1)
    await publish_stream(gw, [[env(topic, str(i).encode()) for i in range(6)]])
    async with Sub(gw.stub, [topic], group, max_unacked=10) as sub:
        ms = await sub.take(6, ack=False)
        sub.ack(ms[0], ms[1], ms[3])  # 2 is unacked: commit stops at offset 2
        await asyncio.sleep(0.5)
    async with Sub(gw.stub, [topic], group) as again:
        got = [m.envelope.payload.bytes_value for m in await again.take(4)]
        assert await again.nothing_within(1.0)
    # Offset 3 was acked but lies beyond the unacked 2: at-least-once redelivers it.
    assert got == [b"2", b"3", b"4", b"5"]


async def test_unacked_message_is_redelivered_after_the_ack_deadline(gw: Gateway):
    topic = unique()
    await gw.stub.Publish(bus_pb2.PublishRequest(message=env(topic, b"slow")))
    async with Sub(gw.stub, [topic], unique("g"), ack_deadline=seconds(0.5)) as sub:
        first = await sub.next()
        again = await sub.next(timeout_s=10)
        sub.ack(again)
    assert again.envelope.id == first.envelope.id
    assert (first.delivery_attempt, again.delivery_attempt) == (1, 2)
    assert again.ack_id != first.ack_id


async def test_subscribe_requires_open_first_and_valid_patterns(gw: Gateway):
    async def reqs(*rs):
        for r in rs:
            yield r
    call = gw.stub.Subscribe(reqs(bus_pb2.SubscribeRequest(ack=bus_pb2.Ack(ack_ids=["x"]))))
    await expect(InvalidArgument, call.read())
    bad = bus_pb2.SubscribeRequest(open=bus_pb2.SubscriptionOpen(
        topic_patterns=["a..b"], consumer_group="g"))
    err = await expect(InvalidArgument, gw.stub.Subscribe(reqs(bad)).read())
    assert "open.topic_patterns[0]" in [f for f, _ in err.field_violations]


# ---- Dead letters -----------------------------------------------------------------
async def test_dead_letter_after_max_deliveries_then_redrive(gw: Gateway):
    topic, group = unique(), unique("g")
    r = await gw.stub.Publish(bus_pb2.PublishRequest(message=env(topic, b"poison", key="p")))
    async with Sub(gw.stub, [topic], group, max_deliveries=3) as sub:
        for attempt in (1, 2, 3):
            m = await sub.next()
            assert m.delivery_attempt == attempt
            sub.nack(m, reason=f"boom {attempt}")
        assert await sub.nothing_within(1.5)
    dl = (await gw.stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))).dead_letters
    assert len(dl) == 1
    d = dl[0]
    assert (d.reason, d.delivery_count, d.envelope.id) == ("boom 3", 3, r.id)
    assert (d.source.topic, d.source.offset) == (topic, r.position.offset)
    assert d.position.topic == topic + ".dlq" and d.envelope.payload.bytes_value == b"poison"
    red = await gw.stub.RedriveDeadLetters(bus_pb2.RedriveDeadLettersRequest(topic=topic))
    assert red.redriven_count == 1 and red.positions[0].topic == topic
    empty = await gw.stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
    assert not empty.dead_letters
    async with Sub(gw.stub, [topic], group) as sub:
        (m,) = await sub.take(1)
    assert m.envelope.id == r.id and m.envelope.payload.bytes_value == b"poison"
    assert m.position.offset == red.positions[0].offset and m.delivery_attempt == 1


# ---- Request-reply and scatter-gather ------------------------------------------------
def _group_has_assignment(admin: AdminClient, group: str) -> bool:
    desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    return desc.state == ConsumerGroupState.STABLE and any(
        m.assignment is not None and m.assignment.topic_partitions for m in desc.members)


async def replier(gw: Gateway, topic: str, body: bytes, ready: asyncio.Event) -> None:
    # The topic is the test's own, so the replier reads it from the start: a
    # request written before its first fetch is still answered (with LATEST a
    # request could land before the offset reset and be skipped). It is ready
    # once Kafka has assigned it the partitions (a fixed 2 s sleep for the
    # group join was overrun under load); the memory backend assigns at once.
    group = unique("r")
    async with Sub(gw.stub, [topic], group, start_position=bus_pb2.START_POSITION_EARLIEST
                   ) as sub:
        if gw.backend == "kafka":
            admin = AdminClient({"bootstrap.servers": gw.bootstrap})
            await eventually(
                lambda: asyncio.to_thread(_group_has_assignment, admin, group),
                timeout_s=30, every_s=0.1, what=f"group {group} assigned",
            )
        ready.set()
        while True:
            m = await sub.next(timeout_s=60)
            sub.ack(m)
            await gw.stub.Publish(bus_pb2.PublishRequest(message=env(
                m.envelope.reply_to, body + m.envelope.payload.bytes_value,
                correlation_id=m.envelope.correlation_id)))


async def test_request_reply_and_timeout(gw: Gateway):
    topic = unique("svc")
    await create(gw, topic, 1)
    ready = asyncio.Event()
    task = asyncio.create_task(replier(gw, topic, b"re:", ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        resp = await gw.stub.Request(bus_pb2.RequestRequest(
            message=env(topic, b"ping"), timeout=seconds(20)))
        assert resp.reply.payload.bytes_value == b"re:ping"
        assert resp.reply.correlation_id == resp.correlation_id != ""
        assert resp.round_trip.ToNanoseconds() > 0
    finally:
        task.cancel()
    silent = unique("svc")
    await expect(DeadlineExceeded, gw.stub.Request(bus_pb2.RequestRequest(
        message=env(silent, b"anyone?"), timeout=seconds(0.5))))


async def test_scatter_gather_returns_partial_results_marked(gw: Gateway):
    t1, t2, t3 = unique("sg"), unique("sg"), unique("sg")
    for t in (t1, t2, t3):
        await create(gw, t, 1)
    ready1, ready2 = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(replier(gw, t1, b"one:", ready1)),
             asyncio.create_task(replier(gw, t2, b"two:", ready2))]
    try:
        await asyncio.wait_for(asyncio.gather(ready1.wait(), ready2.wait()), 30)
        resp = await gw.stub.ScatterGather(bus_pb2.ScatterGatherRequest(
            message=env("", b"q"), topics=[t1, t2, t3], timeout=seconds(3)))
        assert resp.partial and len(resp.replies) == 2
        assert {r.payload.bytes_value for r in resp.replies} == {b"one:q", b"two:q"}
        full = await gw.stub.ScatterGather(bus_pb2.ScatterGatherRequest(
            message=env("", b"q"), topics=[t1, t2], timeout=seconds(20)))
        assert not full.partial and len(full.replies) == 2
    finally:
        for t in tasks:
            t.cancel()
    await expect(InvalidArgument, gw.stub.ScatterGather(bus_pb2.ScatterGatherRequest(
        message=env("", b"q"))))


# ---- Topics --------------------------------------------------------------------------
async def test_create_and_list_topics(gw: Gateway):
    root = unique("adm")
    created = await gw.stub.CreateTopic(bus_pb2.CreateTopicRequest(
        topic=bus_pb2.Topic(name=f"{root}.a", partitions=3)))
    assert created.topic.partitions == 3
    await create(gw, f"{root}.b", 1)
    await expect(AlreadyExists, create(gw, f"{root}.a", 1))
    await expect(InvalidArgument, create(gw, "bad name", 1))
    page1 = await gw.stub.ListTopics(bus_pb2.ListTopicsRequest(pattern=f"{root}.*", page_size=1))
    assert [(t.name, t.partitions) for t in page1.topics] == [(f"{root}.a", 3)]
    page2 = await gw.stub.ListTopics(bus_pb2.ListTopicsRequest(
        pattern=f"{root}.*", page_size=1, page_token=page1.next_page_token))
    assert [t.name for t in page2.topics] == [f"{root}.b"] and not page2.next_page_token
    everything = await gw.stub.ListTopics(bus_pb2.ListTopicsRequest(page_size=1000))
    names = {t.name for t in everything.topics}
    assert f"{root}.a" in names and not any(n.startswith("_") for n in names)


# ---- Provenance ------------------------------------------------------------------------
async def tamper(gw: Gateway, topic: str, offset: int) -> int:
    """Alter a stored record's content; returns the offset of the altered record."""
    backend = gw.servicer.backend
    if isinstance(backend, MemoryBackend):
        rec = backend.raw_record(topic, 0, offset)
        e = bus_pb2.Envelope.FromString(rec.value or b"")
        e.payload.bytes_value = b"forged"
        rec.value = e.SerializeToString(deterministic=True)
        return offset
    # Kafka records are immutable: append a forged copy of the last link with
    # its hash headers intact but different content, as an attacker would.
    c = Consumer({"bootstrap.servers": gw.bootstrap, "group.id": unique("tamper")})
    c.assign([TopicPartition(topic, 0, offset)])
    msg = None
    for _ in range(100):
        msg = c.poll(0.2)
        if msg is not None and not msg.error():
            break
    c.close()
    assert msg is not None
    e = bus_pb2.Envelope.FromString(msg.value())
    e.provenance.sequence += 1
    e.provenance.previous_hash = dict(msg.headers())["am-hash"].decode()
    e.payload.bytes_value = b"forged"
    p = Producer({"bootstrap.servers": gw.bootstrap})
    p.produce(topic, e.SerializeToString(), partition=0, headers=msg.headers())
    p.flush(10)
    return offset + 1


async def test_verify_chain_passes_then_names_the_first_tampered_record(gw: Gateway):
    topic = unique()
    await create(gw, topic, 1)
    await publish_stream(gw, [[env(topic, f"m{i}".encode()) for i in range(5)]])
    ok = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
    assert ok.valid and ok.records_checked == 5 and ok.end_offset == 5
    assert len(ok.chain_ids) == 1
    bad_at = await tamper(gw, topic, 4)
    bad = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic, partition=0))
    assert not bad.valid
    assert bad.first_break.offset == bad_at
    assert bad.first_break.reason == bus_pb2.CHAIN_BREAK_REASON_HASH_MISMATCH
    head = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(
        topic=topic, partition=0, start_offset=0, end_offset=3))
    assert head.valid and head.records_checked == 3
    await expect(NotFound, gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(
        topic=topic, partition=7)))
    await expect(InvalidArgument, gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(
        topic=topic, partition=0, start_offset=3, end_offset=2)))
