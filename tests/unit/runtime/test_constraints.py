"""Typed constraints compile to CEL safety-rule conditions that hold exactly
for acceptable messages (evaluated with the mesh's one CEL dialect), and bad
constraints are refused naming the field; plus the dialect's list functions
that ScatterGather CUSTOM reduces use."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import safety_pb2 as S
from agentmesh.runtime.cel import (
    REPLY_VARIABLES,
    CelError,
    CelEvalError,
    Expression,
    route_activation,
    route_condition,
)
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.runtime.routing.constraints import compile_constraint


def val(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bool):
        out.bool_value = v
    else:
        out.number_value = v
    return out


def holds(c: S.Constraint, payload: dict[str, Any], **msg: Any) -> bool:
    rule = compile_constraint(c)
    m = R.RouteMessage(message_type="op", **msg)
    m.payload.struct_value.update(payload)
    return route_condition(rule.condition).evaluate_bool(route_activation(m))


def test_threshold_and_range() -> None:
    t = S.Constraint(name="t", kind=S.CONSTRAINT_KIND_THRESHOLD, field="t", min=-5, level=2)
    assert holds(t, {"t": -5}) and holds(t, {}) and not holds(t, {"t": -5.5})
    r = S.Constraint(name="r", kind=S.CONSTRAINT_KIND_RANGE, field="a.b", min=0, max=1, level=1)
    assert holds(r, {"a": {"b": 0.5}}) and holds(r, {}) and holds(r, {"a": {}})
    assert not holds(r, {"a": {"b": 2}})
    r.required = True
    assert not holds(r, {}) and not holds(r, {"a": {}})


def test_lists_compare_by_type() -> None:
    allow = S.Constraint(
        name="a", kind=S.CONSTRAINT_KIND_ALLOWLIST, field="mode",
        values=[val("auto"), val(1), val(True)], level=2,
    )
    assert holds(allow, {"mode": "auto"}) and holds(allow, {"mode": 1.0})
    assert holds(allow, {"mode": True}) and not holds(allow, {"mode": "manual"})
    assert not holds(allow, {"mode": 2}) and not holds(allow, {"mode": False})
    deny = S.Constraint(
        name="d", kind=S.CONSTRAINT_KIND_DENYLIST, field="message.metadata.zone",
        values=[val("core")], level=2,
    )
    assert holds(deny, {}) and not holds(deny, {}, metadata={"zone": "core"})
    assert holds(deny, {}, metadata={"zone": "edge"})


def test_pattern_and_required_fields() -> None:
    p = S.Constraint(name="p", kind=S.CONSTRAINT_KIND_PATTERN, field="id", pattern=r"^\d+$",
                     level=2)
    assert holds(p, {"id": "123"}) and not holds(p, {"id": "12a"}) and holds(p, {})
    with pytest.raises(CelEvalError):  # not a string: a violation (fails closed)
        holds(p, {"id": 5})
    q = S.Constraint(name="q", kind=S.CONSTRAINT_KIND_REQUIRED_FIELDS,
                     fields=["x", "y.z"], level=2)
    assert holds(q, {"x": 0, "y": {"z": None}}) and not holds(q, {"x": 0, "y": {}})
    assert compile_constraint(q).description == "required fields: x, y.z"


@pytest.mark.parametrize(
    ("c", "field"),
    [
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_PATTERN, field="f", pattern="(a)\\1",
                      level=2), "constraint.pattern"),
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_RANGE, field="f", min=1, level=2),
         "constraint.max"),
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_THRESHOLD, field="f", level=2),
         "constraint.max"),
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_THRESHOLD, field="f", max=float("inf"),
                      level=2), "constraint.max"),
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_THRESHOLD, field="", max=1, level=2),
         "constraint.field"),
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_THRESHOLD, field="payload.true", max=1,
                      level=2), "constraint.field"),
        (S.Constraint(name="x", kind=S.CONSTRAINT_KIND_REQUIRED_FIELDS, level=2),
         "constraint.fields"),
        (S.Constraint(name="bad name", kind=S.CONSTRAINT_KIND_REQUIRED_FIELDS, fields=["a"],
                      level=2), "constraint.name"),
        (S.Constraint(name="x", kind=99, field="f", level=2), "constraint.kind"),
    ],
)
def test_bad_constraints_name_the_field(c: S.Constraint, field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        compile_constraint(c)
    assert field in dict(e.value.field_violations)


def test_list_functions_of_the_dialect() -> None:
    def run(src: str, replies: list[Any]) -> Any:
        return Expression(src, variables=REPLY_VARIABLES).evaluate({"replies": replies})

    kg = [{"kg": 2.5}, {"kg": 7}, {"kg": 4}]
    assert run("replies.map(r, r.kg).max()", kg) == 7
    assert run("max(replies.map(r, r.kg))", kg) == 7
    assert run("min(replies.map(r, r.kg))", kg) == 2.5
    # celpy's own `.min()` macro compares with CEL's strict types: write min(xs)
    assert run("[3, 1].min()", []) == 1
    assert run("replies.map(r, r.kg).sum()", kg) == 13.5
    assert run("[1, 2].sum()", []) == 3 and isinstance(run("[1, 2].sum()", []), int)
    assert run("replies.map(r, r.kg).sum()", []) == 0
    with pytest.raises(CelEvalError, match="empty list"):
        run("replies.map(r, r.kg).max()", [])
    with pytest.raises(CelEvalError, match="list of numbers"):
        run("replies.max()", [{"kg": 1}])
    with pytest.raises(CelError, match="list of numbers"):
        Expression('["a"].max()', variables=REPLY_VARIABLES)
