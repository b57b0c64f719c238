"""The contract's comments, for the tools' schema descriptions.

Runtime descriptors carry no comments, but the generated `.pyi` stubs next to
each `_pb2` module do: mypy-protobuf writes every message, field and enum
value comment of the .proto as a docstring, and those stubs are committed,
checked fresh with the code (`make check-generated`) and installed as package
data. Reading them with `ast` gives the comments without a second generated
artifact that could drift.

A message or field without a stub (the google.protobuf well-known types) has
no description; that is all.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor


@dataclass
class _ClassDocs:
    """Docstrings of one stub class: its own, its members', its nested classes'."""

    doc: str = ""
    members: dict[str, str] = field(default_factory=dict)
    classes: dict[str, _ClassDocs] = field(default_factory=dict)


def _read_body(body: list[ast.stmt]) -> _ClassDocs:
    out = _ClassDocs()
    for i, node in enumerate(body):
        if isinstance(node, ast.ClassDef):
            inner = _read_body(node.body)
            inner.doc = ast.get_docstring(node) or ""
            out.classes[node.name] = inner
        elif isinstance(node, ast.FunctionDef):  # message fields are @property stubs
            doc = ast.get_docstring(node)
            if doc:
                out.members[node.name] = doc
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                out.members[node.target.id] = _clean(nxt.value.value)
    return out


def _clean(doc: str) -> str:
    lines = [ln.strip() for ln in doc.strip().splitlines()]
    return "\n".join(lines)


@functools.cache
def _module_docs(proto_file: str) -> _ClassDocs | None:
    """The stub docs of the `_pb2` module generated from `proto_file`
    ("agentmesh/router/v1/router.proto"), None without a stub."""
    module = proto_file.removesuffix(".proto").replace("/", ".") + "_pb2"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    stub = Path(spec.origin).with_suffix(".pyi")
    if not stub.is_file():
        return None
    return _read_body(ast.parse(stub.read_text(encoding="utf-8")).body)


def _scope(full_name: str, package: str, proto_file: str) -> _ClassDocs | None:
    """The stub class of a message named `full_name` (nested names included)."""
    docs = _module_docs(proto_file)
    if docs is None:
        return None
    rel = full_name[len(package) + 1:] if package else full_name
    for part in rel.split("."):
        docs = docs.classes.get(part)
        if docs is None:
            return None
    return docs


def message_doc(desc: Descriptor) -> str:
    """The leading comment of message `desc`, "" when none is known."""
    cls = _scope(desc.full_name, desc.file.package, desc.file.name)
    return cls.doc.strip() if cls is not None else ""


def field_doc(fd: FieldDescriptor) -> str:
    """The comment of field `fd`, "" when none is known."""
    parent = fd.containing_type
    if parent is None:
        return ""
    cls = _scope(parent.full_name, parent.file.package, parent.file.name)
    return cls.members.get(fd.name, "").strip() if cls is not None else ""


def enum_value_docs(enum: EnumDescriptor) -> dict[str, str]:
    """Value name -> comment of enum `enum` ({} when unknown).

    mypy-protobuf puts the values in `_<Enum>EnumTypeWrapper`, beside the enum
    at module level or inside its message's class.
    """
    outer = enum.containing_type
    if outer is not None:
        scope = _scope(outer.full_name, outer.file.package, outer.file.name)
    else:
        scope = _module_docs(enum.file.name)
    if scope is None:
        return {}
    wrapper = scope.classes.get(f"_{enum.name}EnumTypeWrapper")
    return dict(wrapper.members) if wrapper is not None else {}


__all__ = ["enum_value_docs", "field_doc", "message_doc"]
