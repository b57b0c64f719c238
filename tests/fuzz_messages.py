"""Hypothesis strategies for request messages of any type, built from the
generated descriptors: random values of each field's type and the hostile
ones (type extremes, undefined enum values, empty and huge strings, huge and
negative Durations, deep and wide Structs, NaN and infinities), and garbage
bodies. Used by tests/integration/hardening/test_rpc_fuzz.py."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import strategies as st

_INT_RANGES = {
    F.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    F.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    F.CPPTYPE_UINT32: (0, 2**32 - 1),
    F.CPPTYPE_UINT64: (0, 2**64 - 1),
}
#: Largest body sent, bytes.
MAX_BODY_BYTES = 1024 * 1024
#: Text that means something to some daemon (names, CEL, patterns, ids).
_WORDS = ["", "a", "agent-fuzz-1", "fuzz.t1", "noop", "*", "true", "1 +", "..", "\x00", "é✓"]


def _ints(cpp: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[cpp]
    return st.one_of(st.integers(lo, hi), st.sampled_from(sorted({lo, hi, 0, 1, max(lo, -1)})))


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(_WORDS),
        st.text(max_size=30),
        st.text(min_size=1, max_size=4).map(lambda s: s * 5_000),  # huge
    )


def _bytes() -> st.SearchStrategy[bytes]:
    huge = st.binary(min_size=1, max_size=4).map(lambda b: b * 10_000)
    return st.one_of(st.binary(max_size=40), huge)


def _struct_value(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), _text())
    if depth <= 0:
        return leaf
    sub = _struct_value(depth - 1)
    return st.one_of(
        leaf, st.lists(sub, max_size=3), st.dictionaries(st.text(max_size=8), sub, max_size=3)
    )


@st.composite
def struct_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Content for a Struct: small random, wide (thousands of keys) or deep
    (up to 60 levels: past the decoder's nesting limit of 100 messages, as
    each level is three messages)."""
    kind = draw(st.sampled_from(["random", "wide", "deep"]))
    if kind == "random":
        return draw(st.dictionaries(st.text(max_size=8), _struct_value(2), max_size=4))
    if kind == "wide":
        return {f"k{i}": i for i in range(draw(st.integers(100, 5000)))}
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(draw(st.integers(5, 60))):
        inner = {"n": inner}
    return inner


def _scalar(f: Any) -> st.SearchStrategy[Any]:
    cpp = f.cpp_type
    if cpp in _INT_RANGES:
        return _ints(cpp)
    if cpp == F.CPPTYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if cpp == F.CPPTYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if cpp == F.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == F.CPPTYPE_ENUM:
        return st.one_of(
            st.sampled_from([v.number for v in f.enum_type.values]),
            st.integers(-(2**31), 2**31 - 1),
        )
    if f.type == F.TYPE_BYTES:
        return _bytes()
    return _text()


def _fill(draw: st.DrawFn, msg: Any, depth: int, density: int) -> None:
    """Set a random subset of `msg`'s fields (each with chance density/10)."""
    desc = msg.DESCRIPTOR
    name = desc.full_name
    if name == "google.protobuf.Struct":
        try:
            msg.update(draw(struct_dicts()))
        except (RecursionError, ValueError):
            msg.update({"n": 1})
        return
    if name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        msg.seconds = draw(st.one_of(st.integers(-(10**12), 10**12), st.integers(0, 120)))
        msg.nanos = draw(st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999)))
        return
    for f in desc.fields:
        if draw(st.integers(0, 9)) >= density:
            continue
        if f.message_type is not None:
            if f.message_type.GetOptions().map_entry:
                kf = f.message_type.fields_by_name["key"]
                vf = f.message_type.fields_by_name["value"]
                target = getattr(msg, f.name)
                for _ in range(draw(st.integers(0, 3))):
                    k = draw(_scalar(kf))
                    if vf.message_type is not None:
                        if depth > 0:
                            _fill(draw, target[k], depth - 1, density)
                    else:
                        target[k] = draw(_scalar(vf))
                continue
            if depth <= 0:
                continue
            if f.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    _fill(draw, getattr(msg, f.name).add(), depth - 1, density)
            else:
                _fill(draw, getattr(msg, f.name), depth - 1, density)
        elif f.is_repeated:
            many = draw(st.sampled_from([0, 1, 3, 1000]))
            items = getattr(msg, f.name)
            if many == 1000:  # wide: one value (a short one) many times
                value = draw(st.integers(0, 3) if f.cpp_type in _INT_RANGES else _scalar(f))
                if not isinstance(value, str | bytes) or len(value) < 100:
                    items.extend([value] * many)
            else:
                items.extend(draw(st.lists(_scalar(f), max_size=many)))
        else:
            setattr(msg, f.name, draw(_scalar(f)))


@st.composite
def request_bodies(draw: st.DrawFn, method: Any, seed: Any) -> bytes:
    """The bytes of a request for MethodDescriptor `method`: garbage, a
    random message of its type, or `seed` (a valid request) with a few
    fields overwritten by random values."""
    kind = draw(st.sampled_from(["garbage", "random", "seeded", "seeded"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=200))
    msg = message_factory.GetMessageClass(method.input_type)()
    if kind == "random":
        _fill(draw, msg, depth=3, density=4)
    else:
        msg.CopyFrom(seed)
        noise = message_factory.GetMessageClass(method.input_type)()
        _fill(draw, noise, depth=3, density=2)
        msg.MergeFrom(noise)
    try:
        body = bytes(msg.SerializeToString())
    except Exception:  # the client cannot encode it: send the seed
        return bytes(seed.SerializeToString())
    # Requests of megabytes test the allocator, not the daemon; at most 1 MiB.
    return body if len(body) <= MAX_BODY_BYTES else bytes(seed.SerializeToString())
