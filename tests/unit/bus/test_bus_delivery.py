"""Unit tests of the batched delivery path: the backlog's FIFO fast path
serves exactly what the round-robin and per-key heaps would, the header scan
agrees with the per-header lookups, and the pass-through Envelope bytes parse
to what decoding and re-encoding gave."""

from __future__ import annotations

import random

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.priority import priority_class
from agentmesh.server.bus import chain, wire
from agentmesh.server.bus.backlog import Backlog, Item


class _HeapsOnly(Backlog):
    """The backlog without its fast path: every push goes to the heaps."""

    def push(self, item: Item) -> None:
        self._push_heaps(item)

    def push_many(self, items: list[Item]) -> None:
        for it in items:
            self._push_heaps(it)


def _drain(b: Backlog, n: int) -> list[int]:
    out = []
    for _ in range(n):
        it = b.pop()
        if it is None:
            break
        out.append(it.seq)
    return out


def test_fast_path_serves_what_the_heaps_serve() -> None:
    rng = random.Random(7)
    for _ in range(200):
        fast, slow = Backlog(), _HeapsOnly()
        seq = 0
        served: list[Item] = []
        for _ in range(30):
            op = rng.random()
            if op < 0.5:  # a fetched batch, mostly one class
                cls = rng.choice([2, 2, 2, 0, 3])
                items = []
                for _ in range(rng.randint(1, 6)):
                    c = cls if rng.random() < 0.8 else rng.randint(0, 3)
                    key = ("tp", rng.choice(["a", "b", None]), seq)
                    items.append((seq, key[:2] if key[1] else key, c))
                    seq += 1
                fast.push_many([Item(s, k, c, None) for s, k, c in items])
                slow.push_many([Item(s, k, c, None) for s, k, c in items])
            elif op < 0.8:
                n = rng.randint(1, 5)
                a, b = [], []
                for _ in range(n):
                    x, y = fast.pop(), slow.pop()
                    assert (x is None) == (y is None)
                    if x is None or y is None:
                        break
                    a.append(x.seq)
                    b.append(y.seq)
                    served.append(x)
                assert a == b
            elif served:  # a redelivery: back with its old seq
                it = served.pop(rng.randrange(len(served)))
                fast.push(Item(it.seq, it.order_key, it.cls, None))
                slow.push(Item(it.seq, it.order_key, it.cls, None))
            assert len(fast) == len(slow)
        assert _drain(fast, 1000) == _drain(slow, 1000)


def test_fast_path_remove_if_drops_fifo_items() -> None:
    b = Backlog()
    b.push_many([Item(i, ("k", i), 2, i % 2) for i in range(6)])
    assert b.remove_if(lambda d: d == 1) == 3
    assert len(b) == 3 and _drain(b, 10) == [0, 2, 4]


def test_delivery_meta_matches_header_lookups() -> None:
    cases = [
        [],
        [("content-type", b"x")],
        [(wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode()), (wire.H_PRIORITY, b"PRIORITY_HIGH"),
         (wire.H_HASH, b"ab" * 32)],
        [(wire.H_ENVELOPE, b"other"), (wire.H_PRIORITY, b"PRIORITY_NOPE")],
        [(wire.H_PRIORITY, b"PRIORITY_LOW"), (wire.H_PRIORITY, b"PRIORITY_CRITICAL")],
    ]
    for headers in cases:
        rec = wire.StoredRecord("t", 0, 0, None, b"", list(headers))
        is_env, cls, hash_b = wire.delivery_meta(rec.headers)
        assert is_env == wire.is_envelope(rec)
        assert cls == priority_class(wire.priority_of(rec))
        h = rec.header(wire.H_HASH)
        assert hash_b == (h.encode() if h is not None else None)


def test_pass_through_envelope_bytes_parse_like_the_decoded_envelope() -> None:
    w = chain.ChainWriter("w1")
    e = bus_pb2.Envelope(topic="t", id="i1", key="k", headers={"a": "b"},
                         payload=common_pb2.Payload(bytes_value=b"x" * 300))
    value, h = w.link(e, 0, now_ms=1234)
    records = [
        wire.StoredRecord("t", 0, 5, b"k", value,
                          [(wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode()),
                           (wire.H_HASH, h.encode())], 1234),
        wire.StoredRecord("t", 0, 6, b"k", value, [(wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode())]),
        wire.StoredRecord("t", 1, 7, None, b"plain", [("content-type", b"text/plain")], 99),
    ]
    for rec in records:
        is_env, _, hash_b = wire.delivery_meta(rec.headers)
        got = bus_pb2.Envelope.FromString(wire.delivered_envelope_bytes(rec, is_env, hash_b))
        assert got == wire.to_envelope(rec), rec
    assert bus_pb2.Envelope.FromString(
        wire.delivered_envelope_bytes(records[0], True, h.encode())).provenance.hash == h


def test_position_bytes_match_the_message() -> None:
    for t, p, o in [("a", 0, 0), ("a.b", 3, 0), ("x", 0, 1 << 40), ("y" * 150, 999, 7)]:
        assert wire.position_bytes(t, p, o) == bus_pb2.RecordPosition(
            topic=t, partition=p, offset=o).SerializeToString()
