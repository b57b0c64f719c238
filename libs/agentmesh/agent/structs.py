"""Conversions between plain dicts and protobuf Struct / messages, shared by the
agent SDK, the client and the CLI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict. Struct numbers are doubles, so ints come back as floats."""
    return json_format.MessageToDict(s)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dict_to_struct(d: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON-compatible mapping as a Struct; numpy scalars and arrays are converted.

    Raises:
        TypeError: when a value cannot be represented in JSON.
    """
    s = struct_pb2.Struct()
    try:
        s.update(d)
    except (TypeError, ValueError):
        s = struct_pb2.Struct()
        s.update(json.loads(json.dumps(dict(d), default=_json_default)))
    return s


def message_to_dict(m: Message) -> dict[str, Any]:
    """A message as a JSON-ready dict with proto field names (snake_case) and
    enum names; default values are included so tables have stable columns."""
    return json_format.MessageToDict(
        m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
