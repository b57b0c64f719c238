"""The compiled write path (_intake.pyx) against the message path.

For generated PublishStream requests (valid and invalid envelopes, every
Envelope field, nested Struct payloads, unknown enum values, corrupted
bytes), `Publisher.submit_encoded` either takes the request, and then
writes exactly the records, ids, hash links and reports that decoding it and
`Publisher.submit` give, or declines it and has changed nothing, and the
message path decides. A request it declines is never one the message path
would have written in full without errors only because of the compiled
path's limits: the plain envelopes a client sends must take it (checked
explicitly below).

The compiled module is built by `make ext` (which `make test` runs first);
when it is missing these tests fail under AGENTMESH_REQUIRE_INFRA and skip
otherwise.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.server.bus import chain, hot_path, wire
from agentmesh.server.bus import publisher as publisher_mod
from agentmesh.server.bus.memory_backend import MemoryBackend
from agentmesh.server.bus.publisher import Pending, Publisher
from agentmesh.server.bus.servicer import decode_publish_request
from agentmesh.server.bus.settings import BusSettings

#: topic -> partitions; the first three are validated before the run, "t.new"
#: exists but was never validated, "t.none" does not exist.
TOPICS = {"t.a": 3, "t.b": 1, "t.r": 2, "t.new": 2}
VALIDATED = ("t.a", "t.b", "t.r")
NOW_MS = 1_700_000_000_123


def publish_run() -> Any:
    hp = hot_path.load("auto")
    if hp.publish_run is None:
        if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail(f"compiled hot path unavailable: {hp.reason}")
        pytest.skip(f"compiled hot path unavailable: {hp.reason}")
    return hp.publish_run


async def publisher() -> Publisher:
    backend = MemoryBackend()
    await backend.start()
    for topic, n in TOPICS.items():
        await backend.create_topic(topic, n)
        await backend.partitions(topic)  # cached, as after a first write
    pub = Publisher(
        backend,
        BusSettings(
            backend="memory", instance_id="wid", auto_create_topics=False, max_payload_bytes=4096
        ),
    )
    pub._id_prefix = "0123456789abcdef"  # the two publishers must mint the same ids
    pub._valid_topics.update(VALIDATED)
    pub._valid_ids.add("agent-known")
    return pub


def snapshot(pub: Publisher) -> Any:
    """Everything a declined request must leave as it was."""
    chains = {
        tp: (s.chain_id, s.sequence, s.last_raw, s.last_hex) for tp, s in pub.chain._chains.items()
    }
    return (
        chains,
        repr(pub._ids),
        repr(pub.partitioner._rr),
        set(pub._valid_topics),
        set(pub._valid_ids),
    )


# ---- generated requests ---------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def payloads(draw: Any) -> common_pb2.Payload | None:
    kind = draw(st.sampled_from(["bytes", "bytes", "struct", "struct", "struct", "none", "empty"]))
    if kind == "none":
        return None
    p = common_pb2.Payload(content_type=draw(st.sampled_from(["", "application/json"])))
    if kind == "bytes":
        p.bytes_value = draw(st.binary(max_size=200))
    elif kind == "struct":
        s = struct_pb2.Struct()
        s.update(draw(st.dictionaries(text, json_values, max_size=4)))
        p.struct_value.CopyFrom(s)
    return p


@st.composite
def envelopes(draw: Any) -> bus_pb2.Envelope:
    """Mostly plain envelopes, each unusual feature now and then."""
    rare = st.integers(0, 29).map(lambda n: n == 0)
    env = bus_pb2.Envelope(
        topic=draw(st.sampled_from(["t.a"] * 6 + ["t.b", "t.r"] * 3 + ["t.new", "t.none", ""])),
        key=draw(st.one_of(st.just(""), text)),
        id=draw(st.one_of(st.just(""), text)),
        priority=draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4] * 3 + [9])),
        message_type=draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 7] * 3 + [12])),
        correlation_id=draw(st.one_of(st.just(""), text)),
    )
    payload = draw(payloads())
    if payload is not None:
        env.payload.CopyFrom(payload)
    if draw(rare):
        env.reply_to = draw(st.sampled_from(["t.r", "t.new", "bad topic"]))
    if draw(rare):
        env.sender_id = draw(st.sampled_from(["agent-known", "agent-new", "Not An Id"]))
    if draw(rare):
        env.recipient_id = "agent-known"
    if draw(rare):
        env.headers["h"] = draw(text)
    if draw(rare):
        env.create_time.FromMilliseconds(draw(st.integers(0, 2**41)))
    if draw(rare):
        env.provenance.sequence = 7
    if draw(rare):
        env.publish_time.seconds = 5
    if draw(rare):
        env.payload.bytes_value = b"x" * 5000  # over max_payload_bytes
    return env


@st.composite
def requests(draw: Any) -> bytes:
    """A serialized PublishStreamRequest, sometimes cut short or with a byte flipped."""
    data = bus_pb2.PublishStreamRequest(
        messages=draw(st.lists(envelopes(), max_size=6))
    ).SerializeToString()
    damage = draw(st.sampled_from(["none"] * 8 + ["cut", "flip"]))
    if data and damage == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif data and damage == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    return data


# ---- the comparison --------------------------------------------------------------


def content(rec: wire.OutRecord) -> Any:
    """A record without the bytes that depend on serialization order: its
    envelope as a message (provenance without previous_hash) and its headers
    without am-hash (both checked per path by `check_links`)."""
    topic, partition, key, value, headers, ts = rec
    env = bus_pb2.Envelope.FromString(value)
    env.provenance.ClearField("previous_hash")
    return topic, partition, key, env, [h for h in headers if h[0] != wire.H_HASH], ts


def check_links(pending: Pending, last: dict[tuple[str, int], str]) -> None:
    """Each record is the next link of its partition's chain (chain.py's rule)."""
    for rec, hash_hex in zip(pending.records, pending.hashes, strict=True):
        topic, partition, _, value, headers, _ = rec
        prov = bus_pb2.Envelope.FromString(value).provenance
        assert prov.previous_hash == last.get((topic, partition), chain.ZERO_HASH)
        assert hash_hex.decode() == chain.link_hash(prov.previous_hash, value)
        assert headers[-1] == (wire.H_HASH, hash_hex)
        last[topic, partition] = hash_hex.decode()


def reports(pending: Pending) -> list[Any]:
    resp = bus_pb2.PublishStreamResponse.FromString(pending.response())
    return [
        (
            r.status.code,
            r.status.reason,
            list(r.status.invalid_fields),
            r.id,
            r.position.topic,
            r.position.partition,
            r.position.offset,
        )
        for r in resp.reports
    ]


async def compare(batches: list[bytes]) -> int:
    """Run `batches` through both paths; returns how many the compiled path took."""
    run = publish_run()
    pc, pm = await publisher(), await publisher()
    links_c: dict[tuple[str, int], str] = {}
    links_m: dict[tuple[str, int], str] = {}
    taken = 0
    exact = True
    for k, data in enumerate(batches):
        now = NOW_MS + k
        before = snapshot(pc)
        got = pc.submit_encoded(data, run, now_ms=now)
        fast = got is not None
        if got is None:
            assert snapshot(pc) == before, "a declined request changed the publisher"
            try:
                decode_publish_request(data)
            except InvalidArgument:
                continue  # the call would end with INVALID_ARGUMENT on both paths
            got = await pc.submit(list(decode_publish_request(data).messages), now_ms=now)
        else:
            taken += 1
        want = await pm.submit(list(decode_publish_request(data).messages), now_ms=now)
        if fast:
            assert all(e is None for e in want.errors), "the compiled path took a bad message"
        await got.settle(5.0)
        await want.settle(5.0)
        assert [type(e) for e in got.errors] == [type(e) for e in want.errors]
        assert got.todo == want.todo and got.ids == want.ids
        assert [content(r) for r in got.records] == [content(r) for r in want.records]
        check_links(got, links_c)
        check_links(want, links_m)
        assert reports(got) == reports(want)
        # Canonical client bytes so far (the message path re-serializes, maps
        # in its own order): the very same stored bytes and hashes.
        exact = exact and data == decode_publish_request(data).SerializeToString()
        if exact:
            assert got.records == want.records and got.hashes == want.hashes
    return taken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=4))
def test_compiled_path_writes_what_the_message_path_writes(batches: list[bytes]) -> None:
    taken = asyncio.run(compare(batches))
    event(f"compiled path took {min(taken, 2)}+ batches")  # --hypothesis-show-statistics


def _plain(**kw: Any) -> bus_pb2.Envelope:
    kw.setdefault("topic", "t.a")
    return bus_pb2.Envelope(payload=common_pb2.Payload(bytes_value=b"p"), **kw)


@pytest.mark.parametrize(
    "env",
    [
        _plain(),
        _plain(key="order-17", id="m-1", priority=common_pb2.PRIORITY_HIGH),
        _plain(correlation_id="c", message_type=bus_pb2.MESSAGE_TYPE_REQUEST, reply_to="t.r"),
        _plain(sender_id="agent-known", message_type=bus_pb2.MESSAGE_TYPE_EVENT),
        bus_pb2.Envelope(
            topic="t.b",
            payload=common_pb2.Payload(
                struct_value=struct_pb2.Struct(fields={"n": struct_pb2.Value(number_value=1.5)})
            ),
        ),
    ],
)
def test_plain_envelopes_take_the_compiled_path(env: bus_pb2.Envelope) -> None:
    data = bus_pb2.PublishStreamRequest(messages=[env] * 3).SerializeToString()
    assert asyncio.run(compare([data, data])) == 2


@pytest.mark.parametrize(
    "env",
    [
        _plain(headers={"h": "v"}),  # application headers: names checked by validate
        _plain(recipient_id="agent-known"),
        _plain(topic="t.new"),  # not validated yet
        _plain(topic="t.none"),  # unknown topic
        _plain(sender_id="agent-new"),
        _plain(priority=9),  # unknown enum value: INVALID_ARGUMENT for the call
        bus_pb2.Envelope(topic="t.a"),  # no payload
        _plain(provenance=common_pb2.Provenance(sequence=3)),
    ],
)
def test_unusual_envelopes_go_the_message_way(env: bus_pb2.Envelope) -> None:
    data = bus_pb2.PublishStreamRequest(messages=[_plain(), env]).SerializeToString()
    assert asyncio.run(compare([data])) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([("t.a", 0), ("t.a", 2), ("a.much.longer.topic." + "x" * 130, 300)]),
            st.one_of(
                st.integers(0, 300), st.integers(2**14 - 3, 2**14 + 3), st.integers(0, 2**40)
            ),
            st.text(max_size=140).map(str.encode),
            st.sampled_from(["ok", "ok", "ok", "rejected", "failed"]),
        ),
        max_size=40,
    )
)
def test_compiled_reports_are_the_python_reports(rows: list[Any]) -> None:
    """_intake.encode_reports and publisher.encode_reports give the same bytes,
    and they are the PublishStreamResponse the protobuf runtime reads."""
    hp = hot_path.load("auto")
    if hp.encode_reports is None:
        publish_run()  # skips or fails as above
    records: list[Any] = []
    offsets: list[Any] = []
    ids: list[bytes] = []
    hashes: list[bytes] = []
    todo: list[int] = []
    errors: list[Any] = []
    slots: list[bytes] = []
    for i, (tp, off, idb, outcome) in enumerate(rows):
        err = None if outcome == "ok" else InvalidArgument("bad", field_violations=[("f", "d")])
        errors.append(err)
        slots.append(b"" if err is None else wire.len_field(b"\x0a", b"\x0a\x02\x08\x03"))
        if outcome != "rejected":  # a failed write was queued, then got its error
            records.append((tp[0], tp[1], None, b"v", [], 0))
            offsets.append(off)
            ids.append(idb)
            hashes.append(bytes([48 + i % 10]) * 64)
            todo.append(i)
    compiled = hp.encode_reports(list(slots), records, offsets, ids, hashes, todo, errors)
    python = publisher_mod.encode_reports(list(slots), records, offsets, ids, hashes, todo, errors)
    assert compiled == python
    resp = bus_pb2.PublishStreamResponse.FromString(compiled)
    assert len(resp.reports) == len(rows)
    k = 0
    for i, r in enumerate(resp.reports):
        if errors[i] is not None:
            assert r.status.code == 3
            continue
        while todo[k] != i:
            k += 1
        assert r.status.code == 0 and r.id == ids[k].decode()
        assert r.position.topic == records[k][0] and r.position.partition == records[k][1]
        assert r.position.offset == offsets[k] and r.hash == hashes[k].decode()
