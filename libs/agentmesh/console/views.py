"""The Jinja environment of the console's templates and the filters they use.

Filters turn proto values into text a person reads: enum values without their
type prefix (`SAGA_STATE_RUNNING` -> `RUNNING`), Timestamps as UTC, Durations
in seconds, Structs as compact JSON.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

#: The pages of the navigation bar: (path, label).
NAV = (
    ("/agents", "Agents"), ("/sagas", "Sagas"), ("/tasks", "Tasks"),
    ("/swarms", "Swarms"), ("/bus", "Bus"), ("/router", "Router"),
)


def enum_prefix(type_name: str) -> str:
    """`SagaState` -> `SAGA_STATE_`: the prefix buf's style gives every value."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).upper() + "_"


def _spell(message: Message, field: str, values: list[int]) -> list[str]:
    et = message.DESCRIPTOR.fields_by_name[field].enum_type
    if et is None:
        raise TypeError(f"{message.DESCRIPTOR.full_name}.{field} is not an enum field")
    prefix = enum_prefix(et.name)
    out = []
    for value in values:
        ev = et.values_by_number.get(value)
        out.append(ev.name.removeprefix(prefix) if ev else str(value))
    return out


def enum_name(message: Message, field: str) -> str:
    """The value of enum `field` of `message` without its prefix (`RUNNING`);
    the number itself when the value is unknown to this build.

    Raises:
        TypeError: `field` is no enum field.
    """
    return _spell(message, field, [getattr(message, field)])[0]


def enum_names(message: Message, field: str) -> list[str]:
    """The values of repeated enum `field`, as `enum_name` spells them."""
    return _spell(message, field, list(getattr(message, field)))


def ts(value: Timestamp | None) -> str:
    """`2026-12-04 06:15:31.204Z`; "-" for an unset Timestamp."""
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return "-"
    dt = datetime.fromtimestamp(value.seconds + value.nanos / 1e9, tz=UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.nanos // 1_000_000:03d}Z"


def iso(value: Timestamp | None) -> str:
    """RFC 3339 for a `<time datetime=...>` attribute; "" when unset."""
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return ""
    return str(value.ToJsonString())


def dur(value: Duration | None) -> str:
    """`1.5 s`; "-" for an unset Duration."""
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return "-"
    return f"{value.seconds + value.nanos / 1e9:g} s"


def as_json(value: Any) -> str:
    """Compact JSON of a Struct, another message, or a plain value."""
    if isinstance(value, Struct):
        value = json_format.MessageToDict(value)
    elif isinstance(value, Message):
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def has(message: Message, field: str) -> bool:
    """`message.HasField(field)` for templates."""
    return bool(message.HasField(field))


templates.env.filters.update(
    enum=enum_name, enums=enum_names, ts=ts, iso=iso, dur=dur, json=as_json,
)
templates.env.tests["set"] = has
templates.env.globals["nav"] = NAV


def render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """Template `name` with `context` (the current section is found from the path)."""
    section = next((p for p, _ in NAV if request.url.path.startswith(p)), "")
    return templates.TemplateResponse(
        request, name, {"section": section, **context}, status_code=status_code
    )
