"""Typed constraints (the seeds' SafetyMonitor `add_constraint`) compiled to
CEL safety-rule conditions.

A safety rule's condition is what must HOLD; a violation is a condition that
is false (or fails to evaluate). So each constraint compiles to the CEL that
is true for an acceptable message, and is stored as an ordinary SafetyRule:
the one agent path enforces it on every call, and ValidateOperation reports
it, with no second evaluator.

    THRESHOLD  payload.t, max 600       !has(payload.t) || (payload.t <= 600.0)
    RANGE      payload.r, [0, 1]        !has(payload.r) || (payload.r >= 0.0 && payload.r <= 1.0)
    ALLOWLIST  message.sender_id        (type(message.sender_id) == string
                                         && message.sender_id in ["a", "b"])
    DENYLIST   payload.cmd              !has(payload.cmd) || !((type(payload.cmd) == string
                                         && payload.cmd in ["wipe"]))

List values are grouped by type, each group behind a type check, since the
dialect's `in` refuses to compare a string with a number.
    PATTERN    payload.tag, ^[A-Z]+$    !has(payload.tag) || payload.tag.matches("^[A-Z]+$")
    REQUIRED_FIELDS  a, b.c             has(payload.a) && has(payload.b) && has(payload.b.c)

Nested paths are guarded level by level (`has(payload.b) && has(payload.b.c)`),
since `has()` on a field of a missing map is an evaluation error. Patterns are
RE2 (CEL `matches`, google-re2), checked here.
"""

from __future__ import annotations

import json
import math
import re

import re2
from google.protobuf import json_format

from agentmesh.router.v1 import router_pb2, safety_pb2
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.runtime.routing.rules import check_name, compile_condition

S = safety_pb2
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: CEL reserved words, which cannot be field selectors.
_RESERVED = frozenset(
    {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
     "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
     "void", "while"}
)
_ROOTS = ("payload", "message")


def field_path(path: str, field: str) -> list[str]:
    """The segments of a constraint field path, rooted at `payload` or `message`.

    Args:
        path: "payload.a.b", "message.sender_id" or a bare "a.b" (payload).
        field: the request field named in errors.

    Raises:
        InvalidArgument: empty path, or a segment that is not a CEL identifier.
    """
    parts = path.split(".") if path else []
    if parts and parts[0] not in _ROOTS:
        parts = ["payload", *parts]
    if len(parts) < 2:
        raise InvalidArgument(
            f"{field} must name a field, such as payload.temperature",
            field_violations={field: f"got {path!r}"},
        )
    for p in parts[1:]:
        if not _IDENT.match(p) or p in _RESERVED:
            raise InvalidArgument(
                f"{field}: {p!r} is not a CEL field name ([A-Za-z_][A-Za-z0-9_]*)",
                field_violations={field: f"bad segment {p!r} in {path!r}"},
            )
    return parts


def _presence(parts: list[str]) -> str:
    # message.* always exists (fixed keys); its metadata map's keys may not
    start = 2 if parts[0] == "payload" else 3
    checks = [f"has({'.'.join(parts[:i])})" for i in range(start, len(parts) + 1)]
    return " && ".join(checks) if checks else "true"


def _number(value: float, field: str) -> str:
    if not math.isfinite(value):
        raise InvalidArgument(
            f"{field} must be a finite number", field_violations={field: repr(value)}
        )
    return repr(float(value))


def _literal(value: object, field: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(float(value), field)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a CEL string literal
    raise InvalidArgument(
        f"{field} takes strings, numbers, bools and null",
        field_violations={field: f"got a {type(value).__name__}"},
    )


def _type_test(value: object, path: str) -> str:
    if value is None:
        return f"type({path}) == null_type"
    if isinstance(value, bool):
        return f"type({path}) == bool"
    if isinstance(value, int | float):
        return f"(type({path}) == int || type({path}) == double)"
    return f"type({path}) == string"


def _guarded(presence: str, check: str, *, required: bool) -> str:
    if presence == "true":
        return check
    if required:
        return f"{presence} && ({check})"
    return f"!({presence}) || ({check})"


def _describe(c: safety_pb2.Constraint, path: str) -> str:
    k = c.kind
    if k == S.CONSTRAINT_KIND_THRESHOLD or k == S.CONSTRAINT_KIND_RANGE:
        parts = []
        if c.HasField("min"):
            parts.append(f">= {c.min:g}")
        if c.HasField("max"):
            parts.append(f"<= {c.max:g}")
        return f"{path} must be {' and '.join(parts)}"
    if k == S.CONSTRAINT_KIND_ALLOWLIST:
        return f"{path} must be one of the allowed values"
    if k == S.CONSTRAINT_KIND_DENYLIST:
        return f"{path} must not be a denied value"
    if k == S.CONSTRAINT_KIND_PATTERN:
        return f"{path} must match {c.pattern!r}"
    return "required fields: " + ", ".join(c.fields)


def compile_constraint(c: safety_pb2.Constraint) -> router_pb2.SafetyRule:
    """The SafetyRule a constraint stands for, its condition compiled and checked.

    Args:
        c: the constraint (`CreateConstraintRequest.constraint`).

    Returns:
        A SafetyRule with the constraint's name, level, message types and
        description (a generated one when empty) and the CEL condition.

    Raises:
        InvalidArgument: bad name, kind or level unspecified, a bad or missing
            field path, min above max, a missing bound, an empty value list, a
            pattern that is not RE2; each names the `constraint.*` field.
    """
    check_name(c.name, "constraint.name")
    if c.level not in (router_pb2.SAFETY_LEVEL_WARNING, router_pb2.SAFETY_LEVEL_CRITICAL):
        raise InvalidArgument(
            "level must be SAFETY_LEVEL_WARNING or SAFETY_LEVEL_CRITICAL",
            field_violations={"constraint.level": f"got {c.level}"},
        )
    k = c.kind
    if k == S.CONSTRAINT_KIND_REQUIRED_FIELDS:
        if not c.fields:
            raise InvalidArgument(
                "REQUIRED_FIELDS needs fields",
                field_violations={"constraint.fields": "empty"},
            )
        cond = " && ".join(
            _presence(field_path(f, f"constraint.fields[{i}]")) for i, f in enumerate(c.fields)
        )
        path = ""
    elif k in S.ConstraintKind.values() and k != S.CONSTRAINT_KIND_UNSPECIFIED:
        parts = field_path(c.field, "constraint.field")
        path = ".".join(parts)
        cond = _guarded(_presence(parts), _check(c, path), required=c.required)
    else:
        raise InvalidArgument(
            f"unknown constraint kind {k}",
            field_violations={"constraint.kind": f"{k} is not a ConstraintKind (or unspecified)"},
        )
    compile_condition(cond, "constraint")
    return router_pb2.SafetyRule(
        name=c.name,
        description=c.description or _describe(c, path),
        condition=cond,
        level=c.level,
        message_types=c.message_types,
    )


def _check(c: safety_pb2.Constraint, path: str) -> str:
    k = c.kind
    if k in (S.CONSTRAINT_KIND_THRESHOLD, S.CONSTRAINT_KIND_RANGE):
        has_min, has_max = c.HasField("min"), c.HasField("max")
        if k == S.CONSTRAINT_KIND_RANGE and not (has_min and has_max):
            missing = "constraint.min" if not has_min else "constraint.max"
            raise InvalidArgument(
                "RANGE needs both min and max", field_violations={missing: "not set"}
            )
        if not (has_min or has_max):
            raise InvalidArgument(
                "THRESHOLD needs min or max",
                field_violations={"constraint.max": "neither min nor max is set"},
            )
        if has_min and has_max and c.min > c.max:
            raise InvalidArgument(
                f"min {c.min:g} is above max {c.max:g}",
                field_violations={"constraint.min": f"{c.min:g} > max {c.max:g}"},
            )
        parts = []
        if has_min:
            parts.append(f"{path} >= {_number(c.min, 'constraint.min')}")
        if has_max:
            parts.append(f"{path} <= {_number(c.max, 'constraint.max')}")
        return " && ".join(parts)
    if k in (S.CONSTRAINT_KIND_ALLOWLIST, S.CONSTRAINT_KIND_DENYLIST):
        if not c.values:
            raise InvalidArgument(
                "ALLOWLIST and DENYLIST need values",
                field_violations={"constraint.values": "empty"},
            )
        # One membership test per value type, each behind a type check: the
        # dialect refuses to compare a string with a number (an evaluation
        # error, which a safety rule counts as a violation), so a number must
        # never meet the list's strings.
        groups: dict[str, list[str]] = {}
        for i, v in enumerate(c.values):
            py = json_format.MessageToDict(v)
            groups.setdefault(_type_test(py, path), []).append(
                _literal(py, f"constraint.values[{i}]")
            )
        test = " || ".join(
            f"({guard} && {path} in [{', '.join(items)}])" for guard, items in groups.items()
        )
        return test if k == S.CONSTRAINT_KIND_ALLOWLIST else f"!({test})"
    # PATTERN
    if not c.pattern:
        raise InvalidArgument(
            "PATTERN needs pattern", field_violations={"constraint.pattern": "empty"}
        )
    try:
        re2.compile(c.pattern)
    except re2.error as e:
        why = e.args[0] if e.args else e
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        raise InvalidArgument(
            f"pattern is not valid RE2: {why}",
            field_violations={"constraint.pattern": f"{c.pattern!r}: {why}"},
        ) from e
    return f"{path}.matches({json.dumps(c.pattern)})"
