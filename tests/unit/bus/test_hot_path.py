"""The Subscribe path's two loop twins (deliveries.py and its Cython twin
_deliveries.pyx) give the same bytes and the same effects on generated batches,
and the bytes are the MessageBatch the protobuf runtime reads.

The compiled twin is built by `make ext` (which `make test` runs first); when
it is missing, these tests fail under AGENTMESH_REQUIRE_INFRA and skip otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentmesh.bus.v1 import bus_pb2
from agentmesh.server.bus import deliveries, hot_path, wire
from agentmesh.server.bus.deliveries import Msg as _Msg
from agentmesh.server.bus.state import Prior
from agentmesh.server.bus.subscription import _PartState

PARTS = [("orders", 0), ("orders", 1), ("a.much.longer.topic.name." + "x" * 120, 300)]


def compiled() -> Any:
    hp = hot_path.load("auto")
    if hp.name != "compiled":
        if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail(f"compiled hot path unavailable: {hp.reason}")
        pytest.skip(f"compiled hot path unavailable: {hp.reason}")
    return hp


# One delivery: partition index, offset, attempts so far, envelope length.
deliveries_st = st.lists(
    st.tuples(
        st.integers(0, len(PARTS) - 1),
        st.one_of(st.integers(0, 300), st.integers(2**14 - 5, 2**14 + 5), st.integers(0, 2**40)),
        st.one_of(st.just(0), st.integers(0, 200)),
        st.one_of(st.integers(0, 140), st.just(16_400)),
    ),
    max_size=60,
)


def envelope(i: int, n: int) -> bytes:
    """A serialized Envelope of about `n` bytes (0: the empty Envelope)."""
    if not n:
        return b""
    return bus_pb2.Envelope(id=str(i), payload={"bytes_value": b"p" * n}).SerializeToString()


def world(spec: list[tuple[int, int, int, int]], contigs: list[int], indexed: list[bool],
          cached: list[bool], with_part: list[bool]) -> dict[str, Any]:
    """A batch and the subscription state it runs against."""
    items = []
    for i, (p, off, att, n_env) in enumerate(spec):
        tp = PARTS[p]
        rec = wire.StoredRecord(tp[0], tp[1], off, None, b"v", [], 0)
        msg = _Msg(i, (tp, None, off), 2, rec, tp, envelope(i, n_env))
        msg.attempts = att
        items.append(msg)
    parts = {tp: _PartState(contig=contigs[k]) for k, tp in enumerate(PARTS) if with_part[k]}
    by_tp: dict[Any, dict[int, Any]] = {tp: {} for k, tp in enumerate(PARTS) if indexed[k]}
    prefixes = {tp: wire.position_bytes(tp[0], tp[1], 0) for k, tp in enumerate(PARTS)
                if cached[k]}
    return {"items": items, "parts": parts, "by_tp": by_tp, "prefixes": prefixes}


def run(fn: Any, w: dict[str, Any], ack_n: int) -> dict[str, Any]:
    last: dict[Any, int] = {}
    touched: dict[Any, tuple[Any, int]] = {}
    odd: list[Any] = []
    redone: list[Any] = []
    outstanding: dict[str, Any] = {}
    body, next_n = fn(w["items"], 12.5, "0123456789abcdef.", ack_n, w["prefixes"], outstanding,
                      w["by_tp"], w["parts"], last, touched, odd, redone)
    idx = {id(m): i for i, m in enumerate(w["items"])}
    return {
        "body": body, "next": next_n, "last": last,
        "touched": {tp: (part is not None, c) for tp, (part, c) in touched.items()},
        "odd": [idx[id(m)] for m in odd], "redone": [idx[id(m)] for m in redone],
        "outstanding": {k: idx[id(m)] for k, m in outstanding.items()},
        "by_tp": {tp: {o: idx[id(m)] for o, m in d.items()} for tp, d in w["by_tp"].items()},
        "contig": {tp: p.contig for tp, p in w["parts"].items()},
        "msgs": [(m.attempts, m.ack_id, m.deadline) for m in w["items"]],
        "prefixes": dict(w["prefixes"]),
    }


flags = st.lists(st.booleans(), min_size=len(PARTS), max_size=len(PARTS))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=deliveries_st, contigs=st.lists(st.integers(0, 300), min_size=3, max_size=3),
       indexed=flags, cached=flags, with_part=flags, ack_n=st.integers(1, 10**12))
def test_twins_agree_and_bytes_parse(
    spec: list[tuple[int, int, int, int]], contigs: list[int], indexed: list[bool],
    cached: list[bool], with_part: list[bool], ack_n: int,
) -> None:
    hp = compiled()
    py = run(deliveries.encode_run, world(spec, contigs, indexed, cached, with_part), ack_n)
    cy = run(hp.encode_run, world(spec, contigs, indexed, cached, with_part), ack_n)
    assert cy == py
    batch = bus_pb2.MessageBatch.FromString(py["body"])
    assert len(batch.messages) == len(spec)
    for i, (m, (p, off, att, n_env)) in enumerate(zip(batch.messages, spec, strict=True)):
        assert m.ack_id == f"0123456789abcdef.{ack_n + i}"
        assert m.delivery_attempt == att + 1
        assert (m.position.topic, m.position.partition, m.position.offset) == (*PARTS[p], off)
        assert m.envelope == bus_pb2.Envelope.FromString(envelope(i, n_env))


@settings(max_examples=200, deadline=None)
@given(offs=st.lists(st.integers(0, 2**40), unique=True, max_size=50), upto=st.integers(-1, 2**40))
def test_cumulative_ack_twins_agree(offs: list[int], upto: int) -> None:
    hp = compiled()
    results = []
    for fn in (deliveries.ack_up_to, hp.ack_up_to):
        msgs = [_Msg(i, None, 2, wire.StoredRecord("t", 0, o, None, b"", [], 0), ("t", 0), b"")
                for i, o in enumerate(offs)]
        for i, m in enumerate(msgs):
            m.ack_id = f"id{i}"
        offsets = {m.rec.offset: m for m in msgs}
        outstanding = {m.ack_id: m for m in msgs}
        acked = fn(offsets, outstanding, upto)
        results.append((acked, sorted(offsets), sorted(outstanding)))
    assert results[0] == results[1]
    assert results[0][0] == [o for o in offs if o <= upto]


HASH = b"ab" * 32
# One fetched record: partition index, offset, key?, header kind, priority header.
records_st = st.lists(
    st.tuples(
        st.integers(0, len(PARTS) - 1), st.integers(0, 40), st.booleans(),
        st.sampled_from(["gateway", "none", "short-hash", "foreign", "repeated"]),
        st.sampled_from([None, b"PRIORITY_HIGH", b"PRIORITY_LOW", b"PRIORITY_CRITICAL", b"bogus"]),
    ),
    max_size=60,
)


def record(p: int, off: int, keyed: bool, kind: str, prio: bytes | None) -> wire.StoredRecord:
    tp = PARTS[p]
    hdrs: list[tuple[str, Any]] = []
    if kind != "none":
        if kind != "foreign":
            hdrs.append((wire.H_ENVELOPE, wire.ENVELOPE_TYPE.encode()))
        if prio is not None:
            hdrs.append((wire.H_PRIORITY, prio))
        hdrs.append((wire.H_HASH, HASH[:10] if kind == "short-hash" else HASH))
        if kind == "repeated":  # the last value of a header wins
            hdrs += [(wire.H_PRIORITY, b"PRIORITY_LOW"), (wire.H_HASH, None)]
    value = bus_pb2.Envelope(id=f"{p}-{off}").SerializeToString()
    return wire.StoredRecord(tp[0], tp[1], off, b"k%d" % off if keyed else None, value, hdrs,
                             1_700_000_000_000 + off)


def arrive_world(states: list[str], nexts: list[int], priors: list[tuple[int, dict[int, int]]]
                 ) -> dict[Any, Any]:
    parts = {}
    for k, tp in enumerate(PARTS):
        if states[k] == "revoked":
            continue
        st_ = _PartState(next_fetch=nexts[k])
        st_.take_prior(Prior.of(*priors[k]))
        if states[k] == "stashing":
            st_.stash = []
        parts[tp] = st_
    return parts


def arrive(fn: Any, recs: list[wire.StoredRecord], parts: dict[Any, Any], seq_n: int,
           max_d: int) -> dict[str, Any]:
    dlq: list[Any] = []
    items, n = fn(recs, parts, seq_n, max_d, dlq)
    def view(m: Any) -> tuple[Any, ...]:
        return (m.seq, m.order_key, m.cls, m.data, m.token, m.rec, m.tp, m.env_b, m.attempts,
                m.ack_id, m.deadline, m.last_reason)
    return {
        "items": [view(m) for m in items], "dlq": [view(m) for m in dlq], "next": n,
        "parts": {tp: (s.next_fetch, list(s.pending), s.contig, sorted(s.ahead),
                       dict(s.holes), s.stash) for tp, s in parts.items()},
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=records_st,
       states=st.lists(st.sampled_from(["live", "live", "stashing", "revoked"]), min_size=3,
                       max_size=3),
       nexts=st.lists(st.sampled_from([-1, 0, 3, 10]), min_size=3, max_size=3),
       priors=st.lists(st.tuples(st.integers(0, 8), st.dictionaries(st.integers(0, 45),
                                                                     st.integers(1, 4),
                                                                     max_size=6)),
                       min_size=3, max_size=3),
       seq_n=st.integers(0, 10**9), max_d=st.integers(1, 5))
def test_arrive_twins_agree(
    spec: list[tuple[int, int, bool, str, bytes | None]], states: list[str], nexts: list[int],
    priors: list[tuple[int, dict[int, int]]], seq_n: int, max_d: int,
) -> None:
    hp = compiled()
    recs = [record(*r) for r in spec]
    py = arrive(deliveries.arrive_run, recs, arrive_world(states, nexts, priors), seq_n, max_d)
    cy = arrive(hp.arrive_run, recs, arrive_world(states, nexts, priors), seq_n, max_d)
    assert cy == py
    # The delivered bytes are the record's Envelope with its provenance hash.
    for view in py["items"]:
        rec, env_b = view[5], view[7]
        got, want = bus_pb2.Envelope.FromString(env_b), wire.to_envelope(rec)
        for e in (got, want):  # an empty provenance (a null am-hash) is no provenance
            if not e.provenance.ByteSize():
                e.ClearField("provenance")
        assert got == want


def test_compiled_msgs_are_outside_the_cyclic_collector() -> None:
    import gc

    hp = compiled()
    items, _ = hp.arrive_run([record(0, 0, False, "gateway", None)],
                             arrive_world(["live"] * 3, [-1] * 3, [(0, {})] * 3), 0, 5, [])
    assert type(items[0]) is not deliveries.Msg and not gc.is_tracked(items[0])
    assert gc.is_tracked(deliveries.Msg(0, None, 2, None, ("t", 0), b""))


def test_modes() -> None:
    assert hot_path.load("python").name == "python"
    with pytest.raises(ValueError, match="hot path must be one of"):
        hot_path.load("fast")
    assert compiled().reason == "built from the current source"
    assert hot_path.load("compiled").name == "compiled"
