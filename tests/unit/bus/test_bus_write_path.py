"""The encoded write path: what it stores and reports equals what the
protobuf runtime would produce from the filled-in Envelope."""

from __future__ import annotations

import time

import pytest
from google.protobuf.internal.encoder import (  # type: ignore[attr-defined]
    _VarintBytes,  # the runtime's own encoder
)

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.server.bus import chain, wire
from agentmesh.server.bus.memory_backend import MemoryBackend
from agentmesh.server.bus.publisher import Publisher
from agentmesh.server.bus.settings import BusSettings


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**35 + 7])
def test_varint_matches_protobuf(n: int) -> None:
    assert wire.varint(n) == _VarintBytes(n)


@pytest.mark.parametrize("ms", [0, 999, 1000, 1_700_000_000_000, 1_700_000_000_123])
def test_timestamp_bytes_match_protobuf(ms: int) -> None:
    ts = bus_pb2.Envelope().publish_time
    ts.FromMilliseconds(ms)
    assert wire.timestamp_bytes(ms) == ts.SerializeToString()


def _env(**kw: object) -> bus_pb2.Envelope:
    return bus_pb2.Envelope(payload=common_pb2.Payload(bytes_value=b"x" * 100), **kw)  # type: ignore[arg-type]


async def test_stream_batch_stores_filled_envelopes_and_reports_in_order() -> None:
    backend = MemoryBackend()
    await backend.start()
    await backend.create_topic("w.a", 3)
    await backend.create_topic("w.b", 1)
    pub = Publisher(backend, BusSettings(backend="memory", instance_id="wid"))
    forged = _env(topic="w.a", key="k1")
    forged.provenance.hash = "f" * 64  # client-sent provenance and publish_time are replaced
    forged.provenance.sequence = 99
    forged.publish_time.seconds = 5
    envs = [
        _env(topic="w.a"),
        _env(topic="w.a", key="k1", id="mine", priority=common_pb2.PRIORITY_HIGH),
        bus_pb2.Envelope(topic="w.a"),  # no payload: INVALID_ARGUMENT, the rest goes on
        _env(topic="w.b", headers={"h1": "v1", "h2": "v2"}, correlation_id="c",
             reply_to="w.replies", message_type=bus_pb2.MESSAGE_TYPE_REQUEST,
             sender_id="agent-w"),
        forged,
        _env(topic="w.a", key="k1"),
    ]
    before_ms = int(time.time() * 1000)
    pending = await pub.submit(envs)
    await pending.settle(5.0)
    resp = bus_pb2.PublishStreamResponse.FromString(pending.response())
    assert len(resp.reports) == len(envs)
    bad = resp.reports[2]
    assert bad.status.code == 3 and list(bad.status.invalid_fields) == ["message.payload"]
    assert not bad.id and not bad.hash

    stored = {}
    for topic, n in (("w.a", 3), ("w.b", 1)):
        for p in range(n):
            for rec in await backend.read(topic, p, 0, 100, max_records=100):
                stored[rec.header(wire.H_ID)] = rec
    for i, (src, rep) in enumerate(zip(envs, resp.reports, strict=True)):
        if i == 2:
            continue
        assert rep.status.code == 0 and rep.status.ByteSize() == 0
        rec = stored[rep.id]
        assert (rec.topic, rec.partition, rec.offset) == (
            rep.position.topic, rep.position.partition, rep.position.offset)
        assert rec.header(wire.H_HASH) == rep.hash
        assert chain.link_hash(
            bus_pb2.Envelope.FromString(rec.value or b"").provenance.previous_hash,
            rec.value or b"") == rep.hash
        got = wire.to_envelope(rec)
        assert got.provenance.hash == rep.hash
        want = bus_pb2.Envelope()
        want.CopyFrom(src)
        want.ClearField("provenance")
        want.ClearField("publish_time")
        want.id = rep.id
        want.priority = src.priority or common_pb2.PRIORITY_NORMAL
        want.publish_time.CopyFrom(got.publish_time)
        want.provenance.CopyFrom(got.provenance)
        assert got == want
        assert got.publish_time.ToMilliseconds() >= before_ms
        assert got.provenance.create_time == got.publish_time
        assert got.provenance.chain_id.startswith(f"{rec.topic}/{rec.partition}/wid.")
        hdrs = [k for k, _ in rec.headers]
        assert hdrs[-1] == wire.H_HASH and wire.H_ENVELOPE in hdrs
        assert rec.header(wire.H_PRIORITY) == common_pb2.Priority.Name(want.priority)
    assert resp.reports[1].id == "mine"
    r3 = stored[resp.reports[3].id]
    names = [k for k, _ in r3.headers]
    assert sorted(names[:2]) == ["h1", "h2"]  # map order is not defined
    assert names[2:] == [wire.H_ENVELOPE, wire.H_ID, wire.H_PRIORITY, wire.H_CORRELATION,
                         wire.H_REPLY_TO, wire.H_SENDER, wire.H_MESSAGE_TYPE, wire.H_HASH]
    assert r3.header(wire.H_MESSAGE_TYPE) == "MESSAGE_TYPE_REQUEST"
    # Same key, same partition, and the chain links them in order.
    keyed = [resp.reports[i].position for i in (1, 4, 5)]
    assert len({p.partition for p in keyed}) == 1
    assert [p.offset for p in keyed] == sorted(p.offset for p in keyed)
    for topic, n in (("w.a", 3), ("w.b", 1)):
        for p in range(n):
            recs = await backend.read(topic, p, 0, 100, max_records=100)
            assert chain.verify(recs).valid


async def test_oversized_message_is_resource_exhausted_and_not_written() -> None:
    backend = MemoryBackend()
    await backend.start()
    await backend.create_topic("w.c", 1)
    pub = Publisher(backend, BusSettings(backend="memory", instance_id="w",
                                         max_payload_bytes=300))
    pending = await pub.submit([_env(topic="w.c"), bus_pb2.Envelope(
        topic="w.c", payload=common_pb2.Payload(bytes_value=b"y" * 400)), _env(topic="w.c")])
    await pending.settle(5.0)
    resp = bus_pb2.PublishStreamResponse.FromString(pending.response())
    codes = [r.status.code for r in resp.reports]
    assert codes == [0, 8, 0]  # RESOURCE_EXHAUSTED in the middle
    assert await backend.watermarks("w.c", 0) == (0, 2)
