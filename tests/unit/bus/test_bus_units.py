"""Unit tests of the bus gateway's pure parts: topic patterns, partitioning,
the priority backlog, the commit prefix, the hash chain and the
unknown-outcome rule of the write path."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import ErrorReason, Unavailable
from agentmesh.runtime.priority import WEIGHTS
from agentmesh.server.bus import chain, wire
from agentmesh.server.bus.backend import DeliveryError
from agentmesh.server.bus.backlog import Backlog, Item
from agentmesh.server.bus.memory_backend import MemoryBackend
from agentmesh.server.bus.partitioner import Partitioner, murmur2
from agentmesh.server.bus.publisher import Publisher
from agentmesh.server.bus.settings import BusSettings
from agentmesh.server.bus.subscription import _PartState
from agentmesh.server.bus.topics import TopicMatcher, pattern_error, topic_error


@pytest.mark.parametrize(
    ("pattern", "topic", "hit"),
    [
        ("a.*", "a.b", True), ("a.*", "a.b.c", False), ("a.#", "a", True),
        ("a.#", "a.b.c", True), ("a.#", "a.dlq", False), ("a.dlq", "a.dlq", True),
        ("#", "_agentmesh.replies", False), ("#.ev", "ev", True), ("#.ev", "x.y.ev", True),
        ("a.*.c", "a.b.c", True), ("a.*", "a._x", False), ("*.dlq", "a.dlq", True),
        ("a.#.z", "a.z", True), ("a.#.z", "a.b.c.z", True), ("a.b", "a.bc", False),
    ],
)
def test_topic_patterns(pattern: str, topic: str, hit: bool) -> None:
    assert TopicMatcher([pattern]).matches(topic) is hit


def test_topic_and_pattern_validation() -> None:
    assert topic_error("orders.created") is None
    assert topic_error("") and topic_error("a..b") and topic_error("a b") and topic_error("x" * 201)
    assert pattern_error("a.*.#") is None and pattern_error("a.b*") is not None


def test_murmur2_matches_the_java_client() -> None:
    # Vectors from Kafka's UtilsTest.testMurmur2 (signed ints there).
    for data, signed in [(b"21", -973932308), (b"foobar", -790332482),
                         (b"a-little-bit-long-string", -985981536)]:
        assert murmur2(data) == signed & 0xFFFFFFFF
    p = Partitioner()
    assert {p.partition(b"key", 12) for _ in range(5)} == {p.partition(b"key", 12)}
    assert {p.partition(b"", 3) for _ in range(3)} == {0, 1, 2}


def test_backlog_serves_weights_8_4_2_1_and_starts_with_critical() -> None:
    b = Backlog()
    seq = 0
    for cls in (3, 2, 1, 0):  # LOW first in arrival order
        for _ in range(30):
            b.push(Item(seq, ("k", seq), cls, cls))
            seq += 1
    picks = [b.pop() for _ in range(15)]
    assert picks[0] is not None and picks[0].data == 0
    assert Counter(i.data for i in picks if i) == dict(enumerate(WEIGHTS))


def test_backlog_keeps_key_order_over_priority() -> None:
    b = Backlog()
    b.push(Item(0, "a", 3, "low-a"))
    b.push(Item(1, "a", 0, "crit-a"))
    b.push(Item(2, "b", 0, "crit-b"))
    assert [b.pop().data for _ in range(3)] == ["crit-b", "low-a", "crit-a"]  # type: ignore[union-attr]
    assert b.pop() is None


def test_commit_offset_is_the_contiguous_acked_prefix() -> None:
    st = _PartState()
    for off in range(10, 15):
        st.next_fetch = off + 1
        st.pending.append(off)
    assert st.settle(11) is None  # 10 still open
    assert st.settle(10) == 12
    assert st.settle(13) is None
    assert st.settle(12) == 14
    assert st.settle(14) == 15


def _rec(offset: int, value: bytes, h: str) -> wire.StoredRecord:
    return wire.StoredRecord("t", 0, offset, None, value,
                             [(wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode()),
                              (wire.H_HASH, h.encode())])


def test_chain_verify_names_first_break() -> None:
    w = chain.ChainWriter("w1")
    recs = []
    for i in range(4):
        e = bus_pb2.Envelope(topic="t", id=str(i))
        value, h = w.link(e, 0, now_ms=1000 + i)
        recs.append(_rec(i, value, h))
    assert chain.verify(recs).valid
    gap = chain.verify([recs[0], recs[2], recs[3]])
    assert gap.first_break.reason == bus_pb2.CHAIN_BREAK_REASON_SEQUENCE_GAP
    assert gap.first_break.offset == 2
    forged = bus_pb2.Envelope.FromString(recs[1].value or b"")
    forged.id = "evil"
    altered = _rec(1, forged.SerializeToString(), recs[1].header(wire.H_HASH) or "")
    bad = chain.verify([recs[0], altered, recs[2]])
    assert bad.first_break.reason == bus_pb2.CHAIN_BREAK_REASON_HASH_MISMATCH
    assert bad.first_break.offset == 1
    plain = wire.StoredRecord("t", 0, 9, None, b"raw", [])
    assert chain.verify([plain]).unchained_records == 1


def test_plain_record_is_wrapped_into_an_envelope() -> None:
    rec = wire.StoredRecord("t", 2, 7, b"k", b"{}", [("content-type", b"application/json"),
                                                      ("am-priority", b"PRIORITY_LOW")], 5)
    e = wire.to_envelope(rec)
    assert (e.id, e.key, e.payload.bytes_value, e.payload.content_type, e.priority) == (
        "t/2/7", "k", b"{}", "application/json", common_pb2.PRIORITY_LOW)


class _NeverConfirms(MemoryBackend):
    def write(self, records):  # type: ignore[no-untyped-def]
        return asyncio.get_running_loop().create_future()


class _FailsInFlight(MemoryBackend):
    def write(self, records):  # type: ignore[no-untyped-def]
        fut = asyncio.get_running_loop().create_future()
        fut.set_result([DeliveryError("Local: Message timed out", unknown_outcome=True,
                                      reason=ErrorReason.ERROR_REASON_UNKNOWN_OUTCOME)
                              for _ in records])
        return fut


@pytest.mark.parametrize("backend_cls", [_NeverConfirms, _FailsInFlight])
async def test_unconfirmed_write_is_unavailable_unknown_outcome_never_ok(backend_cls: type
                                                                         ) -> None:
    pub = Publisher(backend_cls(), BusSettings(backend="memory", instance_id="w"))
    e = bus_pb2.Envelope(topic="t.x", payload=common_pb2.Payload(bytes_value=b"1"))
    with pytest.raises(Unavailable) as ei:
        await pub.publish(e, timeout_s=0.2)
    assert ei.value.reason == "UNKNOWN_OUTCOME"
    # The chain starts over: the lost link must not be referenced.
    e2 = bus_pb2.Envelope(topic="t.x", payload=common_pb2.Payload(bytes_value=b"2"))
    pub.chain.link(e2, 0, now_ms=1)
    assert e2.provenance.sequence == 1 and e2.provenance.chain_id.endswith(".1")
