"""`agentmesh safety validate|constrain|breaker ...|limiter ...`: the router's
SafetyService from the command line; tables, or `-o json`.

Exit codes: `validate` exits 1 when the operation would be blocked; a refused
`limiter permit` (RESOURCE_EXHAUSTED, with the retry delay in its message)
and every other daemon error exit as every command does
(`agentmesh.cli.output.exit_code_for`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from google.protobuf import duration_pb2, json_format, struct_pb2

from agentmesh.agent.structs import message_to_dict
from agentmesh.cli import output as out
from agentmesh.cli.common import OutputOpt, fail, fmt, parse_json_arg, run, state_of
from agentmesh.router.v1 import router_pb2, safety_pb2

safety_app = typer.Typer(
    help="SafetyService: validate operations, constraints, named breakers and rate limiters.",
    no_args_is_help=True,
)
breaker_app = typer.Typer(help="Named circuit breakers.", no_args_is_help=True)
limiter_app = typer.Typer(help="Named rate limiters.", no_args_is_help=True)
safety_app.add_typer(breaker_app, name="breaker")
safety_app.add_typer(limiter_app, name="limiter")

VIOLATION_COLUMNS = ["rule", "level", "blocking", "description"]
BREAKER_COLUMNS = ["name", "state", "consecutive_failures", "successes", "failures",
                   "next_retry_time"]
_KINDS = {k.removeprefix("CONSTRAINT_KIND_").lower(): v
          for k, v in safety_pb2.ConstraintKind.items() if v}


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _level(level: str) -> router_pb2.SafetyLevel.ValueType:
    name = "SAFETY_LEVEL_" + level.strip().upper()
    if name not in router_pb2.SafetyLevel.keys() or name.endswith("UNSPECIFIED"):
        raise fail(f"unknown level {level!r}", hint="use warning or critical")
    return router_pb2.SafetyLevel.Value(name)


def breaker_row(b: safety_pb2.CircuitBreaker) -> dict[str, Any]:
    """One table row of a CircuitBreaker."""
    return {
        "name": b.name,
        "state": router_pb2.BreakerState.Name(b.state).removeprefix("BREAKER_STATE_"),
        "consecutive_failures": b.consecutive_failures,
        "successes": b.success_count,
        "failures": b.failure_count,
        "next_retry_time": b.next_retry_time.ToJsonString()
        if b.HasField("next_retry_time") else "",
    }


@safety_app.command("validate")
def validate(
    ctx: typer.Context,
    operation_type: Annotated[str, typer.Argument(help="what the operation does")],
    params: Annotated[str, typer.Option("--params", "-p", help="JSON parameters, or @file")]
    = "",
    agent: Annotated[str, typer.Option(help="the agent or system it would call")] = "",
    sender: Annotated[str, typer.Option(help="who asks (message.sender_id)")] = "",
    output: OutputOpt = None,
) -> None:
    """Dry-run the mesh's safety rules on an operation; exit 1 when it would be blocked."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return await c.validate(
                operation_type, parse_json_arg(params, "--params"), agent_id=agent,
                sender_id=sender,
            )

    v = run(body)
    blocking = {b.rule_name for b in v.blocking}
    rows = [
        {"rule": x.rule_name,
         "level": router_pb2.SafetyLevel.Name(x.level).removeprefix("SAFETY_LEVEL_"),
         "blocking": x.rule_name in blocking, "description": x.description}
        for x in v.violations
    ]
    title = "safe" if v.is_safe else "NOT safe"
    out.emit(fmt_, v, rows=rows, columns=VIOLATION_COLUMNS,
             title=f"{operation_type}: {title} ({len(rows)} violation(s))")
    if not v.is_safe:
        raise typer.Exit(1)


@safety_app.command("constrain")
def constrain(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the safety rule's name")],
    kind: Annotated[str, typer.Option(
        help="threshold, range, allowlist, denylist, pattern or required_fields")],
    field: Annotated[str, typer.Option(help="checked path, e.g. temperature or "
                                             "message.sender_id")] = "",
    min_value: Annotated[float | None, typer.Option("--min", help="lower bound")] = None,
    max_value: Annotated[float | None, typer.Option("--max", help="upper bound")] = None,
    value: Annotated[list[str] | None, typer.Option(
        help="allowed or denied JSON value (repeatable; bare text is a string)")] = None,
    pattern: Annotated[str, typer.Option(help="RE2 pattern")] = "",
    required_field: Annotated[list[str] | None, typer.Option(
        help="a path that must be present (repeatable)")] = None,
    required: Annotated[bool, typer.Option(help="a missing field fails")] = False,
    level: Annotated[str, typer.Option(help="warning or critical")] = "critical",
    message_type: Annotated[list[str] | None, typer.Option(
        "--type", help="operation types it applies to (repeatable; none = all)")] = None,
    description: Annotated[str, typer.Option(help="shown in violations")] = "",
    output: OutputOpt = None,
) -> None:
    """Add a typed constraint; prints the CEL safety rule it became."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    k = _KINDS.get(kind.strip().lower().replace("-", "_"))
    if k is None:
        raise fail(f"unknown kind {kind!r}", hint="use one of " + ", ".join(_KINDS))
    c = safety_pb2.Constraint(
        name=name, kind=k, field=field, pattern=pattern, fields=required_field or [],
        required=required, level=_level(level), message_types=message_type or [],
        description=description,
    )
    if min_value is not None:
        c.min = min_value
    if max_value is not None:
        c.max = max_value
    for raw in value or []:
        v = struct_pb2.Value()
        try:
            json_format.Parse(raw, v)
        except json_format.ParseError:
            v.string_value = raw
        c.values.append(v)

    async def body() -> Any:
        async with st.client() as cl:
            return (await cl.create_constraint(constraint=c)).rule

    rule = run(body)
    out.emit(fmt_, rule, rows=[{"name": rule.name, "condition": rule.condition}],
             columns=["name", "condition"], title="constraint created")


@breaker_app.command("create")
def breaker_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the breaker's name")],
    failures: Annotated[int, typer.Option(help="consecutive failures that open it")] = 5,
    open_s: Annotated[float, typer.Option(help="how long it stays open, s")] = 30.0,
    half_open: Annotated[int, typer.Option(help="successes in half-open that close it")] = 1,
    output: OutputOpt = None,
) -> None:
    """Declare a named circuit breaker."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    b = safety_pb2.CircuitBreaker(name=name, failure_threshold=max(0, failures),
                                  open_duration=_duration(open_s),
                                  half_open_max_calls=max(0, half_open))

    async def body() -> Any:
        async with st.client() as c:
            return (await c.create_circuit_breaker(breaker=b)).breaker

    got = run(body)
    out.emit(fmt_, got, rows=[breaker_row(got)], columns=BREAKER_COLUMNS,
             title="breaker created")


@breaker_app.command("get")
def breaker_get(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], output: OutputOpt = None
) -> None:
    """A breaker's state (OPEN past its interval reads HALF_OPEN)."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.get_circuit_breaker(name=name)).breaker

    got = run(body)
    out.emit(fmt_, got, rows=[breaker_row(got)], columns=BREAKER_COLUMNS, title="breaker")


@breaker_app.command("list")
def breaker_list(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Every named breaker, by name."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> list[Any]:
        items: list[Any] = []
        token = ""
        async with st.client() as c:
            while True:
                resp = await c.list_circuit_breakers(page_size=1000, page_token=token)
                items.extend(resp.breakers)
                token = resp.next_page_token
                if not token:
                    return items

    got = run(body)
    out.emit(fmt_, [message_to_dict(b) for b in got], rows=[breaker_row(b) for b in got],
             columns=BREAKER_COLUMNS, title=f"{len(got)} breaker(s)")


@breaker_app.command("record")
def breaker_record(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    success: Annotated[bool, typer.Option("--success/--failure", help="the call's outcome")],
    output: OutputOpt = None,
) -> None:
    """Record one guarded call's outcome; prints the new state."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.record_outcome(name=name, success=success)).breaker

    got = run(body)
    out.emit(fmt_, got, rows=[breaker_row(got)], columns=BREAKER_COLUMNS, title="recorded")


@limiter_app.command("create")
def limiter_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the limiter's name")],
    max_requests: Annotated[int, typer.Option("--max", help="permits per window (capacity)")],
    window_s: Annotated[float, typer.Option(help="refill period of --max permits, s")],
    per_key: Annotated[bool, typer.Option(help="one bucket per key")] = True,
    output: OutputOpt = None,
) -> None:
    """Declare a named rate limiter (token bucket)."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    lim = safety_pb2.RateLimiter(name=name, max_requests=max(0, max_requests),
                                 window=_duration(window_s), per_key=per_key)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.create_rate_limiter(limiter=lim)).limiter

    got = run(body)
    out.emit(fmt_, got, rows=[message_to_dict(got)],
             columns=["name", "max_requests", "window", "per_key"], title="limiter created")


@limiter_app.command("permit")
def limiter_permit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    key: Annotated[str, typer.Argument(help="whose bucket")] = "",
    count: Annotated[int, typer.Option(help="permits to take")] = 1,
    wait_s: Annotated[float, typer.Option(help="wait this long for permits, s")] = 0.0,
) -> None:
    """Take permits; fails (RESOURCE_EXHAUSTED, with the retry delay) when none are granted."""
    st = state_of(ctx)

    async def body() -> None:
        async with st.client() as c:
            await c.permit(name, key, max(0, count), wait_s=wait_s)

    run(body)
    out.console.print(f"granted {count} permit(s) of {name} for {key!r}", highlight=False)

