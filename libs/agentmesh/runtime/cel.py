"""The mesh's one CEL dialect: route rules, safety rules, saga conditions, map and loop
expressions all compile and evaluate here.

The interpreter is cel-python (`celpy`, https://github.com/cloud-custodian/cel-python),
which implements the Common Expression Language
(https://github.com/google/cel-spec/blob/master/doc/langdef.md). This module is the
only place that imports it; it adds what a mesh needs on top: checks at compile
time, one conversion of JSON values (protobuf `Struct` payloads) into CEL values,
and one number rule.

Contexts (the variables an expression may use; anything else is refused when the
rule or definition is created):

* Route rules and safety rules (`route_condition`, `route_activation`):
  `message` — `type`, `priority` (a name such as `"HIGH"`), `priority_level`
  (0-4), `routing_key`, `affinity_key`, `sender_id`, `metadata` (map of strings),
  `content_type`, `size_bytes`; and `payload` — the Struct payload as a map
  (`{}` for a bytes payload). The result must be a bool.
* ScatterGather CUSTOM reduces (`Expression(src, variables=REPLY_VARIABLES)`):
  `replies` (the successful outputs, in agent-id order) and `agent_ids`.
* Saga steps (`saga_expression`): `input` (the saga input) and `steps` (the
  output of every completed step, by name), plus `item` and `index` in a map
  step's `input_mapping`, `results` (the item outputs, in item order) in
  `map.reduce`, and `iteration` and `last` in a loop step's `loop.condition` and
  `input_mapping`. Conditions must yield a bool; the other expressions yield
  any JSON value.

The number rule. JSON, and so `google.protobuf.Struct`, has one number type;
every Struct number arrives as a double, which made `payload.n == 5` false for
5.0 under plain CEL. Here:

1. A number that is integral (and within +-2**53, where doubles are exact)
   becomes a CEL `int`; any other number stays a `double`. 5 and 5.0 are both
   `int` 5; 1000.5 is `double` 1000.5.
2. Ints, uints and doubles compare as numbers, exactly (no rounding): `==`,
   `!=`, `<`, `<=`, `>`, `>=` and `in` work across them, as in cel-spec's
   heterogeneous numeric comparison. Lists and maps compare element by element
   under the same rule.
3. Arithmetic (`+ - * /`) between an int (or uint) and a double is done in
   double. Plain CEL refuses it, but under rule 1 a field's type depends on its
   value, so `payload.amount * 1.1` must not fail only for whole amounts.
   Int with int stays int: `7 / 2` is 3 and `%` is defined on ints only, so write
   `double(x) / 2.0` for a real quotient.

Examples (each is tested in tests/unit/runtime/test_cel.py):

    payload.n == 5                         # true for 5 and 5.0
    payload.amount > 1000                  # true for 1000.5 and 1001, false for 1000
    payload.amount > 1000.0                # the same; int and double literals agree
    payload.n in [1, 5]                    # true for 5.0
    payload.ratio >= 0 && payload.ratio <= 1
    payload.amount * 1.1 > 1100            # true for 1001 and 1000.5
    message.type == "calc" && message.priority_level >= 3
    !has(payload.temperature) || payload.temperature <= 600   # guard optional fields
    payload.tags.exists(t, t == "eu") && message.metadata.region == "EU"
    steps.count.n < 3                      # saga: output of step `count`
    iteration < input.times                # saga loop condition
    {"xs": results.map(r, r.x), "n": size(results)}          # saga map reduce
    replies.map(r, r.kg).max()             # router ScatterGather CUSTOM reduce

Compile-time checks (cel-python parses but does not type-check): the text
parses; it names only the context's variables (and comprehension variables of
`all`, `exists`, `exists_one`, `map`, `filter`) and known functions; an
expression without variables is evaluated at once, so type errors between
constants (`1 + "a"`) are refused; a condition that yields a non-bool on an
empty sample context (`1 + 2`, `payload`) is refused. Each failure is a
`CelError` whose text the daemons return as an INVALID_ARGUMENT field violation
on the expression's field.

Evaluation errors (a missing field, a type mismatch such as `"a" < 1`) raise
`CelEvalError`. A route rule that fails to evaluate does not match; a safety
rule that fails to evaluate is a violation (fail closed); a saga expression
that fails fails its step with INVALID_ARGUMENT. Guard optional fields with
`has()`.
"""

from __future__ import annotations

import base64
import datetime
import operator
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.evaluation import base_functions
from google.protobuf import struct_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2

__all__ = [
    "LOOP_VARIABLES",
    "MAP_ITEM_VARIABLES",
    "REDUCE_VARIABLES",
    "REPLY_VARIABLES",
    "ROUTE_VARIABLES",
    "SAGA_VARIABLES",
    "Activation",
    "CelError",
    "CelEvalError",
    "Expression",
    "activation",
    "from_cel",
    "message_dict",
    "route_activation",
    "route_condition",
    "saga_expression",
    "struct_to_cel",
    "to_cel",
]

#: Variables of route and safety rules.
ROUTE_VARIABLES = frozenset({"message", "payload"})
#: Variables of every saga expression.
SAGA_VARIABLES = frozenset({"input", "steps"})
#: Added in a map step's input_mapping.
MAP_ITEM_VARIABLES = frozenset({"item", "index"})
#: Added in a map step's reduce.
REDUCE_VARIABLES = frozenset({"results"})
#: Variables of a ScatterGather CUSTOM reduce.
REPLY_VARIABLES = frozenset({"replies", "agent_ids"})
#: Added in a loop step's condition and input_mapping.
LOOP_VARIABLES = frozenset({"iteration", "last"})

#: Sample values of the saga variables, for the compile-time bool check.
_SAGA_SAMPLE: dict[str, Any] = {
    "input": {},
    "steps": {},
    "item": None,
    "index": 0,
    "results": [],
    "iteration": 0,
    "last": {},
}
#: Type names usable as values (`type(x) == int`).
_TYPE_NAMES = frozenset(
    {"bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint"}
)
#: Macros that bind a comprehension variable as their first argument.
_COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_FUNCTIONS = frozenset(base_functions) | {"has", "dyn", "max", "min", "sum"}
#: Doubles represent every integer up to 2**53 exactly; beyond, "integral" means little.
_EXACT = 2**53
_INT64 = (-(2**63), 2**63 - 1)

_ENV = celpy.Environment()


class CelError(ValueError):
    """A CEL expression that does not compile or check, or did not evaluate; str() is the reason."""


class CelEvalError(CelError):
    """Evaluation failed: a missing field, a type mismatch, a non-bool condition, ..."""


class Activation(dict[str, Any]):
    """Variable name → CEL value, already converted (see `activation`).

    Evaluate many expressions over one message with one conversion; a plain
    mapping given to `Expression.evaluate` is converted on every call.
    """


# ---- the number rule: conversion -------------------------------------------------------
def _number(value: float) -> celtypes.IntType | celtypes.DoubleType:
    if value.is_integer() and -_EXACT <= value <= _EXACT:
        return celtypes.IntType(int(value))
    return celtypes.DoubleType(value)


_CEL_SCALARS = (
    celtypes.BoolType,
    celtypes.IntType,
    celtypes.UintType,
    celtypes.DoubleType,
    celtypes.StringType,
    celtypes.BytesType,
    celtypes.TimestampType,
    celtypes.DurationType,
)


def to_cel(value: Any) -> Any:
    """A JSON-shaped Python value as a CEL value, under the number rule.

    Args:
        value: None, bool, int, float, str, bytes, datetime, timedelta, or a
            list/tuple/mapping of those (mapping keys become strings). CEL
            values pass through unchanged.

    Returns:
        The celtypes value: integral floats within +-2**53 and ints within int64
        become IntType; other numbers DoubleType.

    Raises:
        CelError: for a value CEL cannot represent.
    """
    if value is None or isinstance(value, _CEL_SCALARS):
        return value
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return celtypes.IntType(value)
        return celtypes.DoubleType(float(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(str(k)): to_cel(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([to_cel(v) for v in value])
    try:
        return celpy.json_to_cel(value)
    except (TypeError, ValueError) as e:
        raise CelError(f"{type(value).__name__} has no CEL value") from e


def _value_to_cel(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return _number(v.number_value)
    if kind == "string_value":
        return celtypes.StringType(v.string_value)
    if kind == "bool_value":
        return celtypes.BoolType(v.bool_value)
    if kind == "struct_value":
        return struct_to_cel(v.struct_value)
    if kind == "list_value":
        return celtypes.ListType([_value_to_cel(x) for x in v.list_value.values])
    return None


def struct_to_cel(struct: struct_pb2.Struct) -> celtypes.MapType:
    """A Struct as a CEL map under the number rule (no intermediate dict)."""
    return celtypes.MapType(
        {celtypes.StringType(k): _value_to_cel(v) for k, v in struct.fields.items()}
    )


def from_cel(value: Any) -> Any:
    """A CEL value as a JSON-shaped Python value.

    Bytes become base64 text, timestamps RFC 3339 text, durations "<seconds>s";
    anything else unknown its str().
    """
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.BytesType):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, celtypes.MapType):
        return {str(k): from_cel(v) for k, v in value.items()}
    if isinstance(value, celtypes.ListType):
        return [from_cel(v) for v in value]
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return f"{value.total_seconds()}s"
    return str(value)


def activation(context: Mapping[str, Any]) -> Activation:
    """Variables as CEL values: {name: to_cel(value)}; an Activation is returned as is."""
    if isinstance(context, Activation):
        return context
    return Activation({k: to_cel(v) for k, v in context.items()})


# ---- the number rule: operators ------------------------------------------------------
def _is_number(v: Any) -> bool:
    # BoolType derives from int, not from IntType, so it is not a number here.
    return isinstance(v, celtypes.IntType | celtypes.UintType | celtypes.DoubleType)


def _plain(v: Any) -> int | float:
    return float(v) if isinstance(v, float) else int(v)


def _mixed(a: Any, b: Any) -> bool:
    return type(a) is not type(b) and _is_number(a) and _is_number(b)


def _equal(a: Any, b: Any) -> bool:
    """CEL equality with numbers compared by value, into lists and maps.

    Raises:
        TypeError: for operands CEL cannot compare (celpy's "no such overload").
    """
    if _mixed(a, b):
        return _plain(a) == _plain(b)
    if isinstance(a, celtypes.ListType) and isinstance(b, celtypes.ListType):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, celtypes.MapType) and isinstance(b, celtypes.MapType):
        return len(a) == len(b) and all(k in b and _equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _eq(a: Any, b: Any) -> Any:
    if isinstance(a, celpy.CELEvalError):
        return a
    if isinstance(b, celpy.CELEvalError):
        return b
    return celtypes.BoolType(_equal(a, b))


def _ne(a: Any, b: Any) -> Any:
    r = _eq(a, b)
    return celtypes.BoolType(not r) if isinstance(r, celtypes.BoolType) else r


def _ordering(op: Callable[[Any, Any], bool], base: Callable[..., Any]) -> Callable[..., Any]:
    def compare(a: Any, b: Any) -> Any:
        if _mixed(a, b):
            # Python compares int with float exactly, which is what cel-spec asks for.
            return celtypes.BoolType(op(_plain(a), _plain(b)))
        return base(a, b)

    compare.__name__ = f"num_{op.__name__}"
    return compare


def _double(result: Any) -> Any:
    # celpy's DoubleType arithmetic returns plain floats; keep them CEL doubles so
    # later comparisons and from_cel see a double.
    return celtypes.DoubleType(result) if type(result) is float else result


def _arithmetic(base: Callable[..., Any]) -> Callable[..., Any]:
    def apply(a: Any, b: Any) -> Any:
        if _mixed(a, b) and (
            isinstance(a, celtypes.DoubleType) or isinstance(b, celtypes.DoubleType)
        ):
            return _double(base(celtypes.DoubleType(a), celtypes.DoubleType(b)))
        return _double(base(a, b))

    apply.__name__ = f"num_{getattr(base, '__name__', 'op')}"
    return apply


def _negate(a: Any) -> Any:
    return _double(operator.neg(a))


def _in(item: Any, container: Any) -> Any:
    if not isinstance(container, celtypes.ListType) or isinstance(item, celpy.CELEvalError):
        return base_functions["_in_"](item, container)
    error: Any = celtypes.BoolType(False)
    for c in container:
        try:
            if _equal(item, c):
                return celtypes.BoolType(True)
        except TypeError as e:
            error = celpy.CELEvalError("no such overload", e.__class__, e.args)
    return error


def _numbers(name: str, values: Any) -> list[Any]:
    if not isinstance(values, celtypes.ListType):
        raise TypeError(f"{name}() takes a list of numbers")
    if not values:
        raise ValueError(f"{name}() of an empty list")
    if not all(_is_number(v) for v in values):
        raise TypeError(f"{name}() takes a list of numbers")
    return list(values)


def _list_function(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    # celpy takes an error returned as a value, with our message; a raised
    # ValueError would become its generic "return error for overflow".
    def apply(values: Any) -> Any:
        if isinstance(values, celpy.CELEvalError):
            return values
        try:
            return fn(values)
        except (TypeError, ValueError) as e:
            return celpy.CELEvalError(str(e), e.__class__, e.args)

    apply.__name__ = fn.__name__
    return apply


@_list_function
def _max(values: Any) -> Any:
    """`xs.max()`: the largest number of a list (kept as int or double)."""
    return max(_numbers("max", values), key=_plain)


@_list_function
def _min(values: Any) -> Any:
    """`xs.min()`: the smallest number of a list."""
    return min(_numbers("min", values), key=_plain)


@_list_function
def _sum(values: Any) -> Any:
    """`xs.sum()`: int when every item is an int, else double; 0 for []."""
    if isinstance(values, celtypes.ListType) and not values:
        return celtypes.IntType(0)
    nums = _numbers("sum", values)
    if all(isinstance(v, celtypes.IntType | celtypes.UintType) for v in nums):
        return celtypes.IntType(sum(int(v) for v in nums))
    return celtypes.DoubleType(sum(float(v) for v in nums))


#: List functions of the dialect beyond cel-spec's standard library (as
#: cel-go's math extension): `xs.max()`, `xs.sum()`, `max(xs)`, `min(xs)`,
#: `sum(xs)`, numbers compared under the number rule. (`xs.min()` is celpy's
#: own macro, which refuses a list mixing ints and doubles: write `min(xs)`.)
_LIST_FUNCTIONS: dict[str, Any] = {"max": _max, "min": _min, "sum": _sum}

#: Operators of the dialect; everything else is celpy's base library.
_OPERATORS: dict[str, Any] = {
    "_==_": _eq,
    "_!=_": _ne,
    "_<_": _ordering(operator.lt, base_functions["_<_"]),
    "_<=_": _ordering(operator.le, base_functions["_<=_"]),
    "_>_": _ordering(operator.gt, base_functions["_>_"]),
    "_>=_": _ordering(operator.ge, base_functions["_>=_"]),
    "_in_": _in,
    "_+_": _arithmetic(operator.add),
    "_-_": _arithmetic(operator.sub),
    "_*_": _arithmetic(operator.mul),
    "_/_": _arithmetic(operator.truediv),
    "-_": _negate,
    **_LIST_FUNCTIONS,
}


# ---- compiling -----------------------------------------------------------------
_CLASS = re.compile(r"<class 'celpy\.celtypes\.(\w+?)(?:Type)?'>")
_RULE = re.compile(r"Token\('RULE', '(\w+)'\)")


def _eval_message(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, celpy.CELEvalError) and e.args else str(e)
    # celpy names operand types by Python class and operators by grammar rule;
    # say "string", "int", "relation_lt" instead.
    text = _RULE.sub(lambda m: m[1], _CLASS.sub(lambda m: m[1].lower(), text))
    return text or type(e).__name__


class Expression:
    """A compiled CEL expression of the mesh dialect.

    Args:
        source: the CEL text.
        variables: names the expression may refer to.
        boolean: True for conditions, which must yield a bool.
        sample: variable values (JSON-shaped, or an Activation) of an empty
            context; a condition that yields a non-bool on it is refused. Errors
            on the sample (missing fields) are expected and ignored.

    Raises:
        CelError: the text is empty or does not parse, names an undeclared
            variable or unknown function, a constant expression fails, or a
            condition yields a non-bool on the sample.
    """

    __slots__ = ("_program", "boolean", "source", "variables")

    def __init__(
        self,
        source: str,
        *,
        variables: Collection[str],
        boolean: bool = False,
        sample: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.variables = frozenset(variables)
        self.boolean = boolean
        if not source.strip():
            raise CelError("cannot compile CEL: the expression is empty")
        try:
            ast = _ENV.compile(source)
        except celpy.CELParseError as e:
            where = f" at line {e.line}, column {e.column}" if e.line else ""
            raise CelError(f"cannot compile CEL: parse error{where} in {source!r}") from e
        uses_variables = _check_names(ast, self.variables)
        self._program = _ENV.program(ast, functions=_OPERATORS)
        if not uses_variables:
            try:
                value = self.evaluate_cel(Activation())
            except CelEvalError as e:
                raise CelError(f"cannot compile CEL: type error: {e}") from e
            self._check_result(value)
        elif sample is not None:
            try:
                value = self.evaluate_cel(sample)
            except CelEvalError:
                return
            self._check_result(value)

    def _check_result(self, value: Any) -> None:
        if self.boolean and not isinstance(value, celtypes.BoolType):
            raise CelError(
                f"cannot compile CEL: a condition must evaluate to a bool, got {_type_name(value)}"
            )

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate_cel(self, context: Mapping[str, Any]) -> Any:
        """Evaluate; returns the celtypes value.

        Args:
            context: variable → value, JSON-shaped (converted by `activation`)
                or an Activation.

        Raises:
            CelEvalError: the evaluation failed.
        """
        act = activation(context)
        try:
            result = self._program.evaluate(act)
        except Exception as e:  # celpy raises CELEvalError, and TypeError/... from its library
            raise CelEvalError(_eval_message(e)) from e
        if isinstance(result, Exception):  # celpy may return errors as values
            raise CelEvalError(_eval_message(result)) from result
        return result

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Evaluate; returns a JSON-shaped value (see `from_cel`).

        Raises:
            CelEvalError: the evaluation failed.
        """
        return from_cel(self.evaluate_cel(context))

    def evaluate_bool(self, context: Mapping[str, Any]) -> bool:
        """Evaluate a condition.

        Raises:
            CelEvalError: the evaluation failed or did not yield a bool.
        """
        value = self.evaluate_cel(context)
        if not isinstance(value, celtypes.BoolType):
            raise CelEvalError(f"CEL {self.source!r} yielded {_type_name(value)}, not bool")
        return bool(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {
        celtypes.IntType: "int",
        celtypes.UintType: "uint",
        celtypes.DoubleType: "double",
        celtypes.StringType: "string",
        celtypes.BytesType: "bytes",
        celtypes.MapType: "map",
        celtypes.ListType: "list",
    }
    return names.get(type(value), type(value).__name__)


def _check_names(ast: Any, declared: frozenset[str]) -> bool:
    """Raise CelError for undeclared names or unknown functions; True when variables are used."""
    bound: set[str] = set()
    for t in ast.iter_subtrees():
        if t.data == "member_dot_arg" and str(t.children[1]) in _COMPREHENSIONS:
            args = t.children[2]
            first = args.children[0] if getattr(args, "children", None) else None
            for sub in first.iter_subtrees() if first is not None else ():
                if sub.data == "ident":
                    bound.add(str(sub.children[0]))
    uses = False
    for t in ast.iter_subtrees():
        if t.data == "ident":
            name = str(t.children[0])
            if name in declared:
                uses = True
            elif name not in bound and name not in _TYPE_NAMES:
                raise CelError(
                    f"cannot compile CEL: undeclared reference to '{name}' "
                    f"(declared: {', '.join(sorted(declared))})"
                )
        elif t.data == "ident_arg":
            name = str(t.children[0])
            if name not in _FUNCTIONS:
                raise CelError(f"cannot compile CEL: unknown function '{name}'")
    return uses


# ---- route rules ---------------------------------------------------------------
def message_dict(msg: router_pb2.RouteMessage) -> dict[str, Any]:
    """The `message` variable as plain Python: type, priority, keys, metadata."""
    prio = msg.priority or common_pb2.PRIORITY_NORMAL
    return {
        "type": msg.message_type,
        "priority": common_pb2.Priority.Name(prio).removeprefix("PRIORITY_"),
        "priority_level": int(prio),
        "routing_key": msg.routing_key,
        "affinity_key": msg.affinity_key,
        "sender_id": msg.sender_id,
        "metadata": dict(msg.metadata),
        "content_type": msg.payload.content_type,
        "size_bytes": msg.ByteSize(),
    }


def route_activation(msg: router_pb2.RouteMessage) -> Activation:
    """The activation of route and safety rules: {"message": ..., "payload": ...}."""
    payload = (
        struct_to_cel(msg.payload.struct_value)
        if msg.payload.WhichOneof("kind") == "struct_value"
        else celtypes.MapType({})
    )
    return Activation({"message": to_cel(message_dict(msg)), "payload": payload})


_ROUTE_SAMPLE: Activation | None = None


def route_condition(source: str) -> Expression:
    """Compile a route or safety rule condition over `message` and `payload`.

    Raises:
        CelError: see `Expression`; the sample is an empty RouteMessage.
    """
    global _ROUTE_SAMPLE
    if _ROUTE_SAMPLE is None:
        _ROUTE_SAMPLE = route_activation(router_pb2.RouteMessage())
    return Expression(source, variables=ROUTE_VARIABLES, boolean=True, sample=_ROUTE_SAMPLE)


# ---- saga expressions ------------------------------------------------------------
def saga_expression(
    source: str, *, extra: Collection[str] = (), boolean: bool = False
) -> Expression:
    """Compile a saga expression over `input`, `steps` and the `extra` variables.

    Args:
        source: the CEL text.
        extra: MAP_ITEM_VARIABLES, REDUCE_VARIABLES or LOOP_VARIABLES where they apply.
        boolean: True for `condition` and `loop.condition`.

    Raises:
        CelError: see `Expression`.
    """
    names = SAGA_VARIABLES | frozenset(extra)
    sample = {k: v for k, v in _SAGA_SAMPLE.items() if k in names} if boolean else None
    return Expression(source, variables=names, boolean=boolean, sample=sample)
