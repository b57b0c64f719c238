"""Request decoding and the contract checks every request passes before its
handler runs, applied by the runtime when a method is registered.

grpc calls a method's request deserializer outside any handler: when it
raises (bytes that are not a protobuf of the method's type), grpc answers
UNKNOWN and logs a traceback. `checked_deserializer` wraps the generated
`FromString` so that it never raises: a body that does not decode, or a
message that breaks a contract rule, comes out as a `Rejected` carrying an
InvalidArgument, which the handler wrapper raises inside its error mapping
(interceptors.py). The rules are the ones proto3 itself cannot state, walked
from the message descriptor so every RPC gets them without code of its own:

- an enum field holds a value its enum defines (proto3 enums are open: the
  wire accepts any int32, the generated Python code does not check);
- a `google.protobuf.Duration` is within [0, MAX_DURATION_S] and normalised
  (nanos in [0, 1e9)), so no handler meets a negative or an overflowing
  timeout (`timedelta`, asyncio timers and gRPC deadlines overflow far
  below Duration's own ±10,000-year range).

Per-field limits whose meaning is the RPC's own (a page size, a partition
count) stay in the daemons' validation modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agentmesh.runtime.errors import InvalidArgument

#: The longest Duration any request may carry: 366 days, in seconds. Longer
#: than any timeout, backoff, TTL or retention period the mesh uses, and far
#: inside what `timedelta` and the event loop's timers can represent.
MAX_DURATION_S = 366 * 24 * 3600

#: At most this many violations are reported per request (a repeated field
#: full of bad values must not make an error as large as the request).
MAX_VIOLATIONS = 10

#: At most this many characters of the decoder's own message are echoed.
_MAX_REASON_CHARS = 120

_DURATION = "google.protobuf.Duration"
_CPP_MESSAGE = FieldDescriptor.CPPTYPE_MESSAGE
_CPP_ENUM = FieldDescriptor.CPPTYPE_ENUM


class UndecodableRequest(InvalidArgument):
    """INVALID_ARGUMENT for a body that is not a protobuf of the method's type
    (logged at WARNING, rate-limited, by the handler wrapper)."""


class Rejected:
    """What a checked deserializer returns for a request it refuses.

    Attributes:
        error: the InvalidArgument to answer with.
        undecodable: True when the bytes were not a protobuf of the type at all.
    """

    __slots__ = ("error", "undecodable")

    def __init__(self, error: InvalidArgument, *, undecodable: bool = False) -> None:
        self.error = error
        self.undecodable = undecodable


# ---- the descriptor walk ------------------------------------------------


class _Plan:
    """What to check in one message type, computed once per type.

    Attributes:
        enums: (field, allowed numbers) of enum fields.
        durations: Duration fields.
        nested: message fields whose type (transitively) has something to check.
    """

    __slots__ = ("durations", "enums", "nested")

    def __init__(self) -> None:
        self.enums: list[tuple[Any, frozenset[int]]] = []
        self.durations: list[Any] = []
        self.nested: list[Any] = []

    @property
    def empty(self) -> bool:
        return not (self.enums or self.durations or self.nested)


_plans: dict[str, _Plan] = {}
_planning: set[str] = set()
# Well-known types whose own fields carry no contract (Struct's NullValue
# has one value, and a Struct's depth is bounded by the decoder).
_SKIP = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})


def _allowed(enum: Any) -> frozenset[int]:
    return frozenset(v.number for v in enum.values)


def plan_for(desc: Any) -> _Plan | None:
    """The check plan of message type `desc`, computed once per type.

    Returns None only while `desc` itself is being planned (a type that
    contains itself); callers then keep the field, to be walked.
    """
    plan = _plans.get(desc.full_name)
    if plan is not None:
        return plan
    if desc.full_name in _planning:
        return None
    _planning.add(desc.full_name)
    try:
        plan = _Plan()
        for f in desc.fields:
            if f.cpp_type == _CPP_ENUM:
                plan.enums.append((f, _allowed(f.enum_type)))
            elif f.cpp_type != _CPP_MESSAGE or f.message_type.full_name in _SKIP:
                continue
            elif f.message_type.full_name == _DURATION:
                plan.durations.append(f)
            elif f.message_type.GetOptions().map_entry:
                value = f.message_type.fields_by_name["value"]
                if value.cpp_type == _CPP_ENUM or (
                    value.cpp_type == _CPP_MESSAGE and value.message_type.full_name not in _SKIP
                ):
                    plan.nested.append(f)
            else:
                sub = plan_for(f.message_type)
                if sub is None or not sub.empty:
                    plan.nested.append(f)
    finally:
        _planning.discard(desc.full_name)
    _plans[desc.full_name] = plan
    return plan


def _duration_problem(d: Any) -> str | None:
    s, n = d.seconds, d.nanos
    if s < 0 or n < 0:
        return f"must not be negative; allowed range is 0s to {MAX_DURATION_S}s"
    if n >= 1_000_000_000:
        return "nanos must be below 1000000000"
    if s > MAX_DURATION_S or (s == MAX_DURATION_S and n):
        return f"is {s}s; allowed range is 0s to {MAX_DURATION_S}s (366 days)"
    return None


def _walk(msg: Message, prefix: str) -> Iterator[tuple[str, str]]:
    plan = plan_for(msg.DESCRIPTOR)
    assert plan is not None  # planning has finished once a message exists
    for f, allowed in plan.enums:
        name = prefix + f.name
        if f.is_repeated:
            for i, v in enumerate(getattr(msg, f.name)):
                if v not in allowed:
                    yield f"{name}[{i}]", _enum_problem(f, v)
        else:
            v = getattr(msg, f.name)
            if v not in allowed:
                yield name, _enum_problem(f, v)
    for f in plan.durations:
        name = prefix + f.name
        if f.is_repeated:
            for i, d in enumerate(getattr(msg, f.name)):
                if (p := _duration_problem(d)) is not None:
                    yield f"{name}[{i}]", p
        elif msg.HasField(f.name) and (p := _duration_problem(getattr(msg, f.name))) is not None:
            yield name, p
    for f in plan.nested:
        name = prefix + f.name
        value = getattr(msg, f.name)
        if f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            for k in value:
                item = value[k]
                key = f"{name}[{str(k)[:40]!r}]"
                if vf.cpp_type == _CPP_ENUM:
                    allowed_v = _allowed(vf.enum_type)
                    if item not in allowed_v:
                        yield key, _enum_problem(vf, item)
                else:
                    yield from _walk(item, key + ".")
        elif f.is_repeated:
            for i, item in enumerate(value):
                yield from _walk(item, f"{name}[{i}].")
        elif msg.HasField(f.name):
            yield from _walk(value, name + ".")


def _enum_problem(f: Any, value: int) -> str:
    names = ", ".join(v.name for v in f.enum_type.values)
    if len(names) > 200:
        names = names[:200] + ", ..."
    return f"{value} is not a {f.enum_type.name}; use one of {names}"


def violations(msg: Message) -> list[tuple[str, str]]:
    """The contract violations of `msg` (field path, description), at most
    MAX_VIOLATIONS of them; empty when the request is fine.

    Field paths are AIP-193 style: `retry_policy.initial_backoff`,
    `states[2]`, `labels['k']`.
    """
    plan = plan_for(msg.DESCRIPTOR)
    if plan is None or plan.empty:
        return []
    out: list[tuple[str, str]] = []
    for v in _walk(msg, ""):
        out.append(v)
        if len(out) >= MAX_VIOLATIONS:
            break
    return out


def check(msg: Message) -> None:
    """Raise InvalidArgument when `msg` breaks a rule (see `violations`)."""
    found = violations(msg)
    if found:
        raise InvalidArgument(
            f"invalid {msg.DESCRIPTOR.name}: " + "; ".join(f"{f} {d}" for f, d in found[:3]),
            field_violations=found,
        )


# ---- the deserializer ---------------------------------------------------


def checked_deserializer(
    deserialize: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """Wrap a generated request deserializer (`FooRequest.FromString`) so it
    returns a `Rejected` instead of raising, and checks the decoded message.

    Args:
        deserialize: the method handler's request deserializer; None (raw
            bytes handlers) is returned as it is.

    Returns:
        A deserializer returning the message, or a Rejected.
    """
    if deserialize is None:
        return None
    cls: Any = getattr(deserialize, "__self__", None)
    type_name = cls.DESCRIPTOR.full_name if hasattr(cls, "DESCRIPTOR") else "the request type"

    def de(data: bytes) -> Any:
        try:
            msg = deserialize(data)
        except Exception as exc:  # DecodeError and whatever the C decoder raises
            reason = str(exc)[:_MAX_REASON_CHARS] or type(exc).__name__
            return Rejected(
                UndecodableRequest(
                    f"the request body is not a valid {type_name} ({len(data)} bytes): {reason}"
                ),
                undecodable=True,
            )
        if isinstance(msg, Message):
            try:
                check(msg)
            except InvalidArgument as err:
                return Rejected(err)
        return msg

    return de


__all__ = [
    "MAX_DURATION_S",
    "MAX_VIOLATIONS",
    "Rejected",
    "UndecodableRequest",
    "check",
    "checked_deserializer",
    "plan_for",
    "violations",
]
