"""Rendering for the CLI: rich tables for people, `--output json` for scripts,
and one error format with documented exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from agentmesh.agent.structs import message_to_dict
from agentmesh.runtime.errors import AgentMeshError

console = Console()
# soft_wrap: error lines stay whole, so logs and greps see one line per error.
err_console = Console(stderr=True, soft_wrap=True)

#: Exit codes: 0 ok, 1 failure, 2 usage (click), then by gRPC status.
EXIT_FAILURE = 1
EXIT_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.UNAVAILABLE: 3,
    grpc.StatusCode.DEADLINE_EXCEEDED: 3,
    grpc.StatusCode.NOT_FOUND: 4,
    grpc.StatusCode.INVALID_ARGUMENT: 5,
    grpc.StatusCode.FAILED_PRECONDITION: 6,
    grpc.StatusCode.ABORTED: 6,
    grpc.StatusCode.ALREADY_EXISTS: 6,
    grpc.StatusCode.UNAUTHENTICATED: 7,
    grpc.StatusCode.PERMISSION_DENIED: 7,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 8,
    grpc.StatusCode.UNIMPLEMENTED: 9,
}


def to_jsonable(value: Any) -> Any:
    """Messages → dicts (proto field names, enum names); containers recursively."""
    if isinstance(value, Message):
        return message_to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Print `value` as indented JSON on stdout (no colour, parseable)."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_cell(x) for x in v)
    if isinstance(v, Mapping):
        return json.dumps(v, default=str)
    return str(v)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str],
                *, title: str | None = None) -> None:
    """A rich table of `rows` with `columns` (keys of each row).

    A cell wider than its share of the terminal (80 columns when stdout is
    not a TTY, or $COLUMNS) folds onto more lines instead of being elided
    (`agent-c…`), so ids stay whole for whoever reads or copies them.
    """
    cols = list(columns)
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in cols))
    console.print(table)


def print_kv(doc: Mapping[str, Any], *, title: str | None = None) -> None:
    """A two-column key/value table."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    for k, v in doc.items():
        table.add_row(k, _cell(v))
    console.print(table)


def emit(
    output: str,
    value: Any,
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    columns: Iterable[str] = (),
    title: str | None = None,
) -> None:
    """JSON of `value` with `--output json`, else a table of `rows` (or of `value`)."""
    if output == "json":
        print_json(value)
    elif rows is not None:
        print_table(rows, columns, title=title)
    else:
        doc = to_jsonable(value)
        print_kv(doc if isinstance(doc, Mapping) else {"value": doc}, title=title)


def error(message: str, *, hint: str = "") -> None:
    """Print `error: message` (and a hint) on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", highlight=False)


def exit_code_for(exc: AgentMeshError) -> int:
    """The process exit code for a mesh error."""
    return EXIT_BY_CODE.get(exc.code, EXIT_FAILURE)


def describe(exc: AgentMeshError) -> str:
    """`CODE: message [field: description; ...]`."""
    text = f"{exc.code.name}: {exc.message}"
    violations = getattr(exc, "field_violations", None)
    if violations:
        text += " [" + "; ".join(f"{f}: {d}" for f, d in violations) + "]"
    return text
