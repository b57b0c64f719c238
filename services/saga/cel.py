"""CEL expressions over a saga's context (cel-python, https://github.com/cloud-custodian/cel-python).

The context is JSON-shaped: {"input": ..., "steps": {name: output}, plus
"item"/"index" in map steps and "iteration"/"last" in loop steps}. Struct
numbers are doubles; integral ones are handed to CEL as ints, because CEL has
no implicit int/double comparison and `steps.count.n < 3` must work.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes

_ENV = celpy.Environment()


class CelError(Exception):
    """A CEL expression failed to compile or evaluate."""


class Expression:
    """A compiled CEL expression.

    Args:
        source: the expression text.

    Raises:
        CelError: when the expression does not parse.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._program = _ENV.program(_ENV.compile(source))
        except Exception as e:  # celpy raises CELParseError and friends; one type for callers
            raise CelError(f"cannot compile CEL {source!r}: {e}") from e

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """Evaluate over a JSON-shaped context; returns a JSON-shaped value.

        Raises:
            CelError: on an evaluation error (missing field, type mismatch, ...).
        """
        activation = {k: to_cel(v) for k, v in context.items()}
        try:
            result = self._program.evaluate(activation)
        except Exception as e:
            raise CelError(f"CEL {self.source!r} failed: {e}") from e
        if isinstance(result, Exception):  # celpy may return errors as values
            raise CelError(f"CEL {self.source!r} failed: {result}")
        return from_cel(result)

    def evaluate_bool(self, context: Mapping[str, Any]) -> bool:
        """Evaluate an expression that must yield a bool.

        Raises:
            CelError: on an error or a non-bool result.
        """
        value = self.evaluate(context)
        if not isinstance(value, bool):
            raise CelError(f"CEL {self.source!r} yielded {type(value).__name__}, not bool")
        return value


def to_cel(value: Any) -> Any:
    """JSON-shaped Python value → celpy value (integral floats become ints)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return celtypes.IntType(int(value))
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): to_cel(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([to_cel(v) for v in value])
    return celpy.json_to_cel(value)


def from_cel(value: Any) -> Any:
    """celpy value → JSON-shaped Python value (bytes as base64, times as RFC 3339)."""
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
