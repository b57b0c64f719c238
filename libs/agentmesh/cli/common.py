"""State and helpers shared by the CLI commands."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from agentmesh.cli import output as out
from agentmesh.cli import stack
from agentmesh.client import Client
from agentmesh.runtime.errors import AgentMeshError

T = TypeVar("T")


@dataclass
class CliState:
    """Global options, shared by every command through the typer context."""

    output: str = "table"
    run_dir: Path = Path(".run")
    targets: dict[str, str | None] = field(default_factory=dict)
    token: str | None = None
    tls_ca_file: str | None = None
    timeout_s: float = 10.0

    def client(self) -> Client:
        """A Client wired to the resolved targets."""
        t = stack.targets_for(self.run_dir, self.targets)
        return Client(
            registry=t["registry"], router=t["router"], bus=t["bus"], saga=t["saga"],
            swarm=t["swarm"], token=self.token, tls_ca_file=self.tls_ca_file,
            default_timeout_s=self.timeout_s,
        )


OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="table or json (default: the global --output)"),
]


def state_of(ctx: typer.Context) -> CliState:
    """The CliState of this invocation."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


def fmt(ctx: typer.Context, output: str | None) -> str:
    """The output format: the command's `--output`, else the global one.

    Raises:
        typer.BadParameter: for anything but table or json.
    """
    value = output or state_of(ctx).output
    if value not in ("table", "json"):
        raise typer.BadParameter(f"--output must be table or json, not {value!r}")
    return value


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body; mesh errors become `error: ...` and an exit code."""
    try:
        return asyncio.run(_as_coro(coro_fn))
    except AgentMeshError as e:
        hint = ""
        if e.code.name == "UNAVAILABLE":
            hint = "is the stack up? `agentmesh status` shows each daemon's health"
        out.error(out.describe(e), hint=hint)
        raise typer.Exit(out.exit_code_for(e)) from None


async def _as_coro(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


def fail(message: str, *, code: int = out.EXIT_FAILURE, hint: str = "") -> typer.Exit:
    """Print an error and return the Exit to raise."""
    out.error(message, hint=hint)
    return typer.Exit(code)


def parse_json_arg(value: str, what: str) -> dict[str, Any]:
    """A JSON object from a `--input`-style argument: inline JSON, or `@path` to a
    JSON/YAML file.

    Raises:
        typer.BadParameter: when it is not a JSON object.
    """
    import json

    import yaml

    try:
        if value.startswith("@"):
            text = Path(value[1:]).read_text()
            doc = yaml.safe_load(text)
        else:
            doc = json.loads(value) if value else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"{what}: {e}") from None
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc
