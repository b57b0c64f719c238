"""The mesh's one CEL dialect (agentmesh.runtime.cel): the number rule, compile-time
checks and their messages, evaluation errors, and every example of the module
docstring."""

from __future__ import annotations

from typing import Any

import pytest
from celpy import celtypes
from google.protobuf import json_format, struct_pb2

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime import cel
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.definition import compile_definition


def route(src: str, payload: dict[str, Any], **msg: Any) -> bool:
    """Evaluate a route condition on a RouteMessage whose Struct payload is `payload`."""
    m = R.RouteMessage(**msg)
    m.payload.struct_value.update(payload)
    return cel.route_condition(src).evaluate_bool(cel.route_activation(m))


# ---- the number rule -----------------------------------------------------------------
def test_integral_numbers_become_ints_and_others_stay_doubles() -> None:
    assert type(cel.to_cel(5.0)) is celtypes.IntType and cel.to_cel(5.0) == 5
    assert type(cel.to_cel(5)) is celtypes.IntType
    assert type(cel.to_cel(1000.5)) is celtypes.DoubleType
    assert type(cel.to_cel(-0.0)) is celtypes.IntType
    # beyond 2**53 a double no longer says which integer it was
    assert type(cel.to_cel(2.0**60)) is celtypes.DoubleType
    assert type(cel.to_cel(2**70)) is celtypes.DoubleType  # outside int64
    assert type(cel.to_cel(float("nan"))) is celtypes.DoubleType
    assert type(cel.to_cel(True)) is celtypes.BoolType  # bool is an int in Python, not in CEL
    nested = cel.to_cel({"a": [1.0, 2.5, {"b": 3.0}], "s": "x", "z": None})
    assert [type(v) for v in nested["a"]][:2] == [celtypes.IntType, celtypes.DoubleType]
    assert type(nested["a"][2]["b"]) is celtypes.IntType and nested["z"] is None


def test_struct_conversion_is_the_same_rule() -> None:
    s = struct_pb2.Struct()
    s.update({"n": 5, "x": 1000.5, "l": [1, 2.5, True, None, {"k": "v"}], "m": {"i": 7}})
    direct = cel.struct_to_cel(s)
    via_dict = cel.to_cel(json_format.MessageToDict(s))
    assert direct == via_dict
    assert [type(v) for v in direct["l"]][:3] == [
        celtypes.IntType,
        celtypes.DoubleType,
        celtypes.BoolType,
    ]


@pytest.mark.parametrize(
    ("src", "x", "want"),
    [
        ("payload.x > 1000", 1000.5, True),
        ("payload.x > 1000", 1001, True),
        ("payload.x > 1000", 1000, False),
        ("payload.x > 1000", 999.5, False),
        ("payload.x > 1000.0", 1001, True),
        ("payload.x > 1000.0", 1000, False),
        ("payload.x >= 1000", 1000.0, True),
        ("payload.x < 3", 2, True),
        ("payload.x < 3", 2.5, True),
        ("payload.x < 3", 3, False),
        ("payload.x == 5", 5, True),
        ("payload.x == 5", 5.0, True),
        ("payload.x == 5.0", 5, True),
        ("payload.x == 5", 5.5, False),
        ("payload.x != 5", 5.5, True),
        ("payload.x != 5", 5, False),
        ("payload.x in [1, 5]", 5.0, True),
        ("payload.x in [1.5, 5]", 1.5, True),
        ("payload.x in [1, 2]", 5, False),
        ("payload.x + 1 == 6", 5, True),
        ("payload.x + 1 == 6.5", 5.5, True),
        ("payload.x * 1.1 > 1100", 1001, True),
        ("payload.x * 1.1 > 1100", 1000, False),
        ("payload.x / 2 == 2", 5, True),  # int division stays int
        ("double(payload.x) / 2.0 == 2.5", 5, True),
        ("-payload.x < -1", 1.5, True),
    ],
)
def test_ints_and_doubles_compare_and_combine_as_numbers(src: str, x: float, want: bool) -> None:
    assert route(src, {"x": x}) is want
    # the saga context converts its JSON the same way
    saga = cel.saga_expression(src.replace("payload", "input"))
    assert saga.evaluate({"input": {"x": x}}) is want


def test_lists_and_maps_compare_numbers_by_value() -> None:
    assert route("payload.l == [1, 2.5]", {"l": [1.0, 2.5]})
    assert route('payload.m == {"a": 1.0, "b": [2]}', {"m": {"a": 1, "b": [2.0]}})
    assert not route("payload.l == [1, 2]", {"l": [1, 2, 3]})


def test_literal_constants_mix_int_and_double() -> None:
    for src in ("1 == 1.0", "1 < 1.5", "2.5 > 2", "3 in [3.0]", "1 + 0.5 == 1.5"):
        assert cel.route_condition(src).evaluate_bool({})


def test_results_keep_their_cel_types() -> None:
    # celpy's double arithmetic returns Python floats; the dialect keeps doubles
    reduce = cel.saga_expression(
        '{"xs": results.map(r, r.x * 2.0), "n": size(results)}', extra=cel.REDUCE_VARIABLES
    )
    assert reduce.evaluate({"input": {}, "steps": {}, "results": [{"x": 1}, {"x": 2.5}]}) == {
        "xs": [2.0, 5.0],
        "n": 2,
    }
    assert type(reduce.evaluate_cel({"results": [{"x": 1.5}]})["xs"][0]) is celtypes.DoubleType
    assert cel.saga_expression("input.b").evaluate({"input": {"b": b"\x00\x01"}}) == "AAE="


# ---- compile-time checks -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "words"),
    [
        ("payload.amount >", "parse error at line 1, column 16"),
        ("amount > 3", "undeclared reference to 'amount' (declared: message, payload)"),
        ("nosuch(1)", "unknown function 'nosuch'"),
        ('1 + "a"', "type error: found no matching overload for addition_add"),
        ("1 + 2", "a condition must evaluate to a bool, got int"),
        ("payload", "a condition must evaluate to a bool, got map"),
        ("message.type", "a condition must evaluate to a bool, got string"),
        ("  ", "the expression is empty"),
    ],
)
def test_route_conditions_are_checked_when_compiled(src: str, words: str) -> None:
    with pytest.raises(cel.CelError) as e:
        cel.route_condition(src)
    assert str(e.value).startswith("cannot compile CEL: ")
    assert words in str(e.value)


def test_what_compiles() -> None:
    # comprehension variables and type names are not undeclared references
    cel.route_condition("payload.tags.all(t, size(t) > 0)")
    cel.route_condition("type(payload.n) == int")
    # a condition whose sample evaluation fails on missing fields is fine
    cel.route_condition("payload.missing.deeper > 1")
    # non-conditions may yield anything
    assert cel.saga_expression("[1, 2].map(x, x * 2)").evaluate({}) == [2, 4]


def test_saga_variables_depend_on_the_expression() -> None:
    cel.saga_expression("input.n < steps.a.n")
    for src, extra in (
        ("item * 10 + index", cel.MAP_ITEM_VARIABLES),
        ("size(results)", cel.REDUCE_VARIABLES),
        ("iteration < 3 && last.n < 3", cel.LOOP_VARIABLES),
    ):
        cel.saga_expression(src, extra=extra)
        with pytest.raises(cel.CelError, match="undeclared reference"):
            cel.saga_expression(src)
    with pytest.raises(cel.CelError, match="must evaluate to a bool, got map"):
        cel.saga_expression("input", boolean=True)


def test_compile_definition_names_the_field_of_a_bad_expression() -> None:
    step = saga_pb2.Step(name="a", agent_id="x", action="do", condition="item > 1")
    step.map.CopyFrom(saga_pb2.MapSpec(items="input.xs", reduce="results.size() +"))
    step.input_mapping["v"] = "item * 2"  # fine: a map item sees `item`
    with pytest.raises(InvalidArgument) as e:
        compile_definition(saga_pb2.SagaDefinition(steps=[step]))
    fields = dict(e.value.field_violations)
    assert set(fields) == {"definition.steps[0].condition", "definition.steps[0].map.reduce"}
    assert "undeclared reference to 'item'" in fields["definition.steps[0].condition"]
    assert "parse error" in fields["definition.steps[0].map.reduce"]


# ---- evaluation errors ---------------------------------------------------------------
def test_evaluation_errors_are_cel_eval_errors_with_readable_text() -> None:
    m = cel.route_condition("payload.s < 1")
    with pytest.raises(cel.CelEvalError) as e:
        m.evaluate_bool({"payload": {"s": "a"}})
    assert "relation_lt" in str(e.value) and "(string, int)" in str(e.value)
    with pytest.raises(cel.CelEvalError, match="missing"):
        cel.route_condition("payload.missing > 1").evaluate_bool({"payload": {}})
    # a condition that yields a non-bool on real data fails instead of matching
    flag = cel.route_condition("payload.flag")
    assert flag.evaluate_bool({"payload": {"flag": True}})
    with pytest.raises(cel.CelEvalError, match="not bool"):
        flag.evaluate_bool({"payload": {"flag": "yes"}})
    assert issubclass(cel.CelEvalError, cel.CelError)


def test_an_activation_is_converted_once() -> None:
    act = cel.activation({"payload": {"n": 5.0}})
    assert cel.activation(act) is act and type(act["payload"]["n"]) is celtypes.IntType
    assert cel.route_condition("payload.n == 5").evaluate_bool(act)


# ---- the examples of the module docstring --------------------------------------------
_MSG = {"message_type": "calc", "priority": 4, "metadata": {"region": "EU"}}
_SAGA = {
    "input": {"times": 3, "n": 5},
    "steps": {"count": {"n": 2.0}},
    "iteration": 1,
    "results": [{"x": 1.0}, {"x": 2.5}],
}
_TEMP = "!has(payload.temperature) || payload.temperature <= 600"
#: (source, context kind, variable values, expected result)
DOC_EXAMPLES: list[tuple[str, str, dict[str, Any], Any]] = [
    ("payload.n == 5", "route", {"n": 5.0}, True),
    ("payload.amount > 1000", "route", {"amount": 1000.5}, True),
    ("payload.amount > 1000", "route", {"amount": 1001}, True),
    ("payload.amount > 1000", "route", {"amount": 1000}, False),
    ("payload.amount > 1000.0", "route", {"amount": 1001}, True),
    ("payload.n in [1, 5]", "route", {"n": 5.0}, True),
    ("payload.ratio >= 0 && payload.ratio <= 1", "route", {"ratio": 0.5}, True),
    ("payload.ratio >= 0 && payload.ratio <= 1", "route", {"ratio": 1.5}, False),
    ("payload.amount * 1.1 > 1100", "route", {"amount": 1001}, True),
    ("payload.amount * 1.1 > 1100", "route", {"amount": 1000.5}, True),
    ('message.type == "calc" && message.priority_level >= 3', "route", {}, True),
    (_TEMP, "route", {}, True),
    (_TEMP, "route", {"temperature": 6e2}, True),
    (_TEMP, "route", {"temperature": 601}, False),
    (
        'payload.tags.exists(t, t == "eu") && message.metadata.region == "EU"',
        "route",
        {"tags": ["us", "eu"]},
        True,
    ),
    ("steps.count.n < 3", "saga", {}, True),
    ("iteration < input.times", "saga", {}, True),
    ('{"xs": results.map(r, r.x), "n": size(results)}', "saga", {}, {"xs": [1, 2.5], "n": 2}),
]


@pytest.mark.parametrize(("src", "kind", "values", "want"), DOC_EXAMPLES)
def test_docstring_examples(src: str, kind: str, values: dict[str, Any], want: Any) -> None:
    assert src in (cel.__doc__ or ""), "keep the docstring and this table in step"
    if kind == "route":
        assert route(src, values, **_MSG) is want
    else:
        expr = cel.saga_expression(
            src, extra=cel.LOOP_VARIABLES | cel.REDUCE_VARIABLES, boolean=isinstance(want, bool)
        )
        assert expr.evaluate(_SAGA) == want
