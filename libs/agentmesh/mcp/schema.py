"""JSON Schema of a protobuf message, in the proto3 JSON mapping.

The MCP tools take and return the contract's request and response messages as
JSON, read and written by `google.protobuf.json_format`. Their schemas are
derived here from the message descriptors, so they cannot drift from the
contract: field names are the proto field names (json_format accepts them),
enums are their value names, 64-bit integers may also be decimal strings,
Durations are strings such as "1.5s", Timestamps RFC 3339 strings, bytes
base64, maps JSON objects and the well-known Struct/Value/ListValue any JSON.

Source: the proto3 JSON mapping,
https://protobuf.dev/programming-guides/json/ ; JSON Schema 2020-12.

Recursive messages (a saga Stage holds StageGroups that hold Stages) and
messages that several fields use (AgentSelector, RetryPolicy, ...) are
emitted once under `$defs` and referenced with `$ref`; a message used by one
field only is inlined, which is what most MCP clients show best.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agentmesh.mcp.docs import enum_value_docs, field_doc, message_doc

#: JSON Schema dialect of every schema made here.
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
# proto3 JSON writes 64-bit integers as decimal strings and reads either form.
_INT64 = {"type": ["integer", "string"], "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": ["integer", "string"], "minimum": 0, "pattern": "^[0-9]+$"}
# Floats are numbers, or the strings json_format writes for the non-finite values.
_FLOAT = {"anyOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _FLOAT,
    FieldDescriptor.TYPE_FLOAT: _FLOAT,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WRAPPERS = {
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.TYPE_BYTES,
}

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "description": 'A duration in seconds with an "s" suffix, e.g. "1.5s".',
    },
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    **{name: dict(_SCALARS[t]) for name, t in _WRAPPERS.items()},
}


#: The schema of a oneof member whose group already has another member set.
#: (`not {}` rather than `false`: jsonschema reports a `false` schema's error
#: without the field's path.)
ONEOF_TAKEN: dict[str, Any] = {"not": {}}


class _Builder:
    """One schema document: inlined messages plus `$defs` for recursive ones."""

    def __init__(self, *, describe: bool, shared: frozenset[str] = frozenset()) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self.describe = describe
        self.shared = shared

    def message(self, desc: Descriptor, path: tuple[str, ...]) -> dict[str, Any]:
        known = _WELL_KNOWN.get(desc.full_name)
        if known is not None:
            return dict(known)
        # A cycle, or a message used by several fields: define it once, refer to it.
        if desc.full_name in path or desc.full_name in self.shared:
            if desc.full_name not in self.defs:
                self.defs[desc.full_name] = {}  # placeholder stops the recursion
                self.defs[desc.full_name] = self._object(desc, ())
            return {"$ref": f"#/$defs/{desc.full_name}"}
        return self._object(desc, (*path, desc.full_name))

    def _object(self, desc: Descriptor, path: tuple[str, ...]) -> dict[str, Any]:
        props = {f.name: self.field(f, (*path, desc.full_name)) for f in desc.fields}
        out: dict[str, Any] = {
            "type": "object",
            "title": desc.full_name,
            "properties": props,
            # json_format rejects unknown fields; so does the schema, naming them.
            "additionalProperties": False,
        }
        groups = [o for o in desc.oneofs if not _synthetic(o)]
        about = [message_doc(desc)] if self.describe else []
        about += [f"Set at most one of: {', '.join(f.name for f in o.fields)}." for o in groups]
        if any(about):
            out["description"] = "\n".join(a for a in about if a)
        if groups:
            # A oneof member, when present, forbids the others (an error names the other).
            out["dependentSchemas"] = {
                f.name: {"properties": {g.name: ONEOF_TAKEN for g in o.fields if g is not f}}
                for o in groups
                for f in o.fields
            }
        return out

    def field(self, fd: FieldDescriptor, path: tuple[str, ...]) -> dict[str, Any]:
        mt = fd.message_type
        if mt is not None and mt.GetOptions().map_entry:
            value = self._single(mt.fields_by_name["value"], path)
            out = {"type": "object", "additionalProperties": value}
        else:
            one = self._single(fd, path)
            out = {"type": "array", "items": one} if fd.is_repeated else one
        if self.describe:
            doc = self._field_description(fd)
            hint = out.get("description", "") if "title" not in out else ""
            if doc:  # a well-known type's format hint stays after the field's comment
                out["description"] = f"{doc}\n{hint}" if hint else doc
        return out

    @staticmethod
    def _field_description(fd: FieldDescriptor) -> str:
        """The field's comment; for an enum also each value's first line."""
        doc = field_doc(fd)
        if fd.enum_type is not None:
            values = enum_value_docs(fd.enum_type)
            lines = [f"{name}: {text.splitlines()[0]}" for name, text in values.items() if text]
            doc = "\n".join([doc, *lines]) if lines else doc
        return doc.strip()

    def _single(self, fd: FieldDescriptor, path: tuple[str, ...]) -> dict[str, Any]:
        if fd.message_type is not None:
            return self.message(fd.message_type, path)
        if fd.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
        return dict(_SCALARS[fd.type])


def _shared_messages(root: Descriptor) -> frozenset[str]:
    """Messages reachable from `root` that more than one field refers to.

    Each goes once under `$defs`, so a schema grows with the number of
    message types, not with the number of paths to them (a saga definition
    reaches AgentSelector a dozen ways).
    """
    sites: dict[str, set[str]] = {}
    seen = {root.full_name}
    todo = [root]
    while todo:
        desc = todo.pop()
        for fd in desc.fields:
            mt = fd.message_type
            if mt is not None and mt.GetOptions().map_entry:
                mt = mt.fields_by_name["value"].message_type
            if mt is None or mt.full_name in _WELL_KNOWN:
                continue
            sites.setdefault(mt.full_name, set()).add(fd.full_name)
            if mt.full_name not in seen:
                seen.add(mt.full_name)
                todo.append(mt)
    return frozenset(name for name, refs in sites.items() if len(refs) > 1)


def _synthetic(oneof: Any) -> bool:
    """A proto3 `optional` field's one-field oneof, which is no choice at all."""
    return len(oneof.fields) == 1 and oneof.fields[0].has_presence and oneof.name.startswith("_")


def message_schema(desc: Descriptor, *, describe: bool = True) -> dict[str, Any]:
    """The JSON Schema (2020-12) of message `desc` in the proto3 JSON mapping.

    Args:
        desc: a message descriptor, e.g. `InvokeRequest.DESCRIPTOR`.
        describe: give messages and fields the contract's comments as
            `description` (from the generated stubs, `agentmesh.mcp.docs`).

    Returns:
        A schema object with `"type": "object"` at the root (what MCP requires
        of a tool's input and output schema), `$defs` when `desc` reaches a
        recursive message.
    """
    b = _Builder(describe=describe, shared=_shared_messages(desc))
    root = b.message(desc, ())
    doc: dict[str, Any] = {"$schema": DIALECT, **root}
    if b.defs:
        doc["$defs"] = b.defs
    return doc


__all__ = ["DIALECT", "ONEOF_TAKEN", "message_schema"]
