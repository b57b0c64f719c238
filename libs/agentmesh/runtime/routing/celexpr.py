"""CEL conditions over a RouteMessage, with cel-python (`celpy`).

cel-python parses but does not type-check, so `compile_condition` adds the
checks that matter for rules: the expression parses, refers only to the
declared variables `message` and `payload` (plus comprehension variables),
calls only known functions, and yields a bool on a sample message.

CEL numbers: Struct payload numbers are doubles, so compare them with double
literals (`payload.amount > 100.0`); `payload.n == 5` does not match 5.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.evaluation import base_functions
from google.protobuf import json_format

from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2

#: Variables a condition may use.
DECLARED = frozenset({"message", "payload"})
#: Macros that bind a comprehension variable as their first argument.
_COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_FUNCTIONS = frozenset(base_functions) | {"has", "dyn"}

_ENV = celpy.Environment()


class CelError(ValueError):
    """A condition that does not compile or check; str() is the reason."""


class Condition:
    """A compiled CEL condition.

    Args:
        source: the CEL text.

    Raises:
        CelError: with the parser's message, or the reason the check failed.
    """

    __slots__ = ("_program", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        if not source.strip():
            raise CelError("condition is empty")
        try:
            ast = _ENV.compile(source)
        except celpy.CELParseError as e:
            raise CelError(f"CEL parse error: {e}") from e
        _check_names(ast)
        self._program = _ENV.program(ast)
        try:
            sample = self._program.evaluate(activation(router_pb2.RouteMessage()))
        except celpy.CELEvalError as e:
            # Missing keys in the empty sample are expected; type errors on
            # constants are not, and show up as "no matching overload".
            if "no matching overload" in str(e.args[0]) and not _uses_data(ast):
                raise CelError(f"CEL type error: {e.args[0]}") from e
            return
        if not isinstance(sample, celtypes.BoolType):
            raise CelError(f"condition must evaluate to a bool, got {type(sample).__name__}")

    def evaluate(self, act: Mapping[str, Any]) -> bool:
        """True when the condition holds for the activation.

        Raises:
            celpy.CELEvalError: when evaluation fails (missing key, bad types).
        """
        result = self._program.evaluate(act)
        if isinstance(result, celpy.CELEvalError):
            raise result
        return bool(result) if isinstance(result, celtypes.BoolType) else False


def _check_names(ast: Any) -> None:
    bound: set[str] = set()
    for t in ast.iter_subtrees():
        if t.data == "member_dot_arg" and str(t.children[1]) in _COMPREHENSIONS:
            args = t.children[2]
            first = args.children[0] if getattr(args, "children", None) else None
            for sub in first.iter_subtrees() if first is not None else ():
                if sub.data == "ident":
                    bound.add(str(sub.children[0]))
    for t in ast.iter_subtrees():
        if t.data == "ident":
            name = str(t.children[0])
            if name not in DECLARED and name not in bound:
                raise CelError(
                    f"CEL check error: undeclared reference to '{name}' "
                    f"(declared: {', '.join(sorted(DECLARED))})"
                )
        elif t.data == "ident_arg":
            name = str(t.children[0])
            if name not in _FUNCTIONS:
                raise CelError(f"CEL check error: unknown function '{name}'")


def _uses_data(ast: Any) -> bool:
    return any(t.data == "ident" for t in ast.iter_subtrees())


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


def payload_dict(msg: router_pb2.RouteMessage) -> dict[str, Any]:
    """The `payload` variable: the Struct payload as a dict, {} for bytes."""
    if msg.payload.WhichOneof("kind") == "struct_value":
        return json_format.MessageToDict(msg.payload.struct_value)
    return {}


def activation(msg: router_pb2.RouteMessage) -> dict[str, Any]:
    """The CEL activation for a message: {"message": ..., "payload": ...}."""
    return {
        "message": celpy.json_to_cel(message_dict(msg)),
        "payload": celpy.json_to_cel(payload_dict(msg)),
    }
