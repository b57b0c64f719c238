"""`agentmesh task schedule|get|list|wait|cancel`: TaskService (served by the
saga coordinator) from the command line; tables, or `-o json`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from agentmesh.agent.structs import message_to_dict
from agentmesh.cli import output as out
from agentmesh.cli.common import OutputOpt, fmt, parse_json_arg, run, state_of

task_app = typer.Typer(help="Tasks: schedule, inspect, wait, cancel.", no_args_is_help=True)

TASK_COLUMNS = ["task_id", "type", "state", "priority", "agent", "attempt", "error"]
_TERMINAL = ("TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_TIMEOUT",
             "TASK_STATE_CANCELLED")


def _enum(prefix: str, value: str) -> str:
    v = value.strip().upper().replace("-", "_")
    return v if v.startswith(prefix) else prefix + v


def _short(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def task_row(t: Any) -> dict[str, Any]:
    """One table row of a Task."""
    d = message_to_dict(t)
    return {
        "task_id": d.get("task_id", ""),
        "type": d.get("task_type", ""),
        "state": _short(str(d.get("state", "")), "TASK_STATE_"),
        "priority": _short(str(d.get("priority", "PRIORITY_NORMAL")), "PRIORITY_"),
        "agent": d.get("assigned_agent_id", ""),
        "attempt": d.get("attempt", 0),
        "error": (d.get("error") or {}).get("message", ""),
    }


def _state_name(t: Any) -> str:
    from agentmesh.task.v1 import task_pb2

    return task_pb2.TaskState.Name(t.state)


@task_app.command("schedule")
def task_schedule(
    ctx: typer.Context,
    task_type: Annotated[str, typer.Argument(help="the agent action to run")],
    agent: Annotated[str, typer.Option(help="run on this agent id")] = "",
    capability: Annotated[list[str] | None, typer.Option(
        help="or on an agent with these capabilities (repeatable)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="required tags (repeatable)")] = None,
    payload: Annotated[str, typer.Option("--payload", "-p", help="JSON input, or @file")] = "",
    priority: Annotated[str, typer.Option(help="critical, high, normal or low")] = "normal",
    strategy: Annotated[str, typer.Option(
        help="round_robin, least_loaded, priority_weighted, capability_match, random "
        "(empty = the type's default)")] = "",
    timeout_s: Annotated[float, typer.Option(help="run timeout of one attempt, s")] = 0.0,
    max_attempts: Annotated[int, typer.Option(help="attempts in all (0 = 3)")] = 0,
    idempotency_key: Annotated[str, typer.Option(help="schedule once per key")] = "",
    wait: Annotated[bool, typer.Option("--wait", "-w", help="wait for the result")] = False,
    output: OutputOpt = None,
) -> None:
    """Queue a task; `--wait` prints its result (exit 1 unless it COMPLETED)."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    fields: dict[str, Any] = {
        "task_type": task_type,
        "payload": parse_json_arg(payload, "--payload"),
        "priority": _enum("PRIORITY_", priority),
        "idempotency_key": idempotency_key,
        "retry_policy": {"max_attempts": max_attempts},
    }
    if agent:
        fields["agent_id"] = agent
    else:
        fields["selector"] = {"capabilities": capability or [], "tags": tag or []}
    if strategy:
        fields["strategy"] = _enum("BALANCE_STRATEGY_", strategy)
    if timeout_s > 0:
        fields["timeout"] = timeout_s

    async def body() -> Any:
        async with st.client() as c:
            t = (await c.schedule_task(**fields)).task
            if wait:
                return await _wait(c, t.task_id, fmt_)
            return t

    t = run(body)
    if not wait:
        out.emit(fmt_, t, rows=[task_row(t)], columns=TASK_COLUMNS, title="task scheduled")
    elif _state_name(t) != "TASK_STATE_COMPLETED":
        raise typer.Exit(1)


async def _wait(c: Any, task_id: str, fmt_: str) -> Any:
    """Print state changes until the task ends; returns the final Task."""
    last = None
    async for resp in c.watch_task(task_id=task_id):
        last = resp.task
        if fmt_ == "json":
            print(json.dumps(message_to_dict(last), default=str), flush=True)
        else:
            r = task_row(last)
            out.console.print(
                f"rev {last.revision:>3} {r['state']:<10} {r['agent']} "
                f"{'attempt ' + str(r['attempt']) if r['attempt'] else ''} "
                f"{'- ' + r['error'] if r['error'] else ''}", highlight=False)
    if last is None:
        last = (await c.get_task(task_id=task_id)).task
    if fmt_ != "json":
        out.print_table([task_row(last)], TASK_COLUMNS, title="task finished")
        if last.HasField("result"):
            out.print_json(last.result)
    return last


@task_app.command("get")
def task_get(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="the task id")],
    output: OutputOpt = None,
) -> None:
    """One task with its result or error."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.get_task(task_id=task_id)).task

    t = run(body)
    out.emit(fmt_, t, rows=[task_row(t)], columns=TASK_COLUMNS, title=task_id)


@task_app.command("list")
def task_list(
    ctx: typer.Context,
    state: Annotated[list[str] | None, typer.Option(help="only these states (repeatable)")]
    = None,
    task_type: Annotated[str, typer.Option("--type", help="only this task type")] = "",
    agent: Annotated[str, typer.Option(help="only tasks assigned to this agent")] = "",
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    output: OutputOpt = None,
) -> None:
    """Tasks, newest first."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> list[Any]:
        found: list[Any] = []
        token = ""
        async with st.client() as c:
            while len(found) < limit:
                resp = await c.list_tasks(
                    states=[_enum("TASK_STATE_", s) for s in state or []], task_type=task_type,
                    agent_id=agent, page_size=min(100, limit - len(found)), page_token=token)
                found.extend(resp.tasks)
                token = resp.next_page_token
                if not token:
                    break
        return found

    tasks = run(body)
    out.emit(fmt_, [message_to_dict(t) for t in tasks], rows=[task_row(t) for t in tasks],
             columns=TASK_COLUMNS, title=f"{len(tasks)} tasks")


@task_app.command("wait")
def task_wait(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="the task id")],
    output: OutputOpt = None,
) -> None:
    """Follow a task until it ends; exits 1 unless it COMPLETED."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return await _wait(c, task_id, fmt_)

    t = run(body)
    if _state_name(t) != "TASK_STATE_COMPLETED":
        raise typer.Exit(1)


@task_app.command("cancel")
def task_cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="the task id")],
    output: OutputOpt = None,
) -> None:
    """Cancel a task: a queued one never starts, a running one's call is cancelled."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.cancel_task(task_id=task_id)).task

    t = run(body)
    out.emit(fmt_, t, rows=[task_row(t)], columns=TASK_COLUMNS,
             title="cancelled" if _state_name(t) == "TASK_STATE_CANCELLED" else "cancel requested")
