"""CLI commands that talk to running daemons: agents, route, invoke, bus, saga,
swarm and demo. Each is a thin layer over `agentmesh.Client`."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from google.protobuf import json_format
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agentmesh.agent.structs import dict_to_struct, message_to_dict, struct_to_dict
from agentmesh.cli import output as out
from agentmesh.cli.common import OutputOpt, fail, fmt, parse_json_arg, run, state_of

agents_app = typer.Typer(help="The agent catalog (registry).", no_args_is_help=True)
bus_app = typer.Typer(help="Publish and subscribe on the bus.", no_args_is_help=True)
saga_app = typer.Typer(help="Sagas: start, inspect, watch, cancel.", no_args_is_help=True)
swarm_app = typer.Typer(help="Swarms: deploy and watch.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Attach every command of this module to the root app."""
    app.add_typer(agents_app, name="agents")
    app.add_typer(bus_app, name="bus")
    app.add_typer(saga_app, name="saga")
    app.add_typer(swarm_app, name="swarm")
    from agentmesh.cli.tasks import task_app  # TaskService, served by the saga coordinator

    app.add_typer(task_app, name="task")
    from agentmesh.cli.safety import safety_app  # SafetyService, served by the router

    app.add_typer(safety_app, name="safety")
    app.command("route")(route)
    app.command("invoke")(invoke)
    app.command("demo", context_settings={"allow_extra_args": True,
                                          "ignore_unknown_options": True})(demo)


def _short(enum_name: str, prefix: str) -> str:
    return enum_name[len(prefix):] if enum_name.startswith(prefix) else enum_name


def _enum(prefix: str, value: str) -> str:
    """`least_loaded` → `STRATEGY_LEAST_LOADED` for prefix `STRATEGY_`."""
    v = value.strip().upper().replace("-", "_")
    return v if v.startswith(prefix) else prefix + v


def _selector(
    capability: list[str] | None, service_type: list[str] | None, tag: list[str] | None,
    version: str, min_health: float, location: str,
) -> dict[str, Any]:
    return {
        "capabilities": capability or [], "service_types": service_type or [],
        "tags": tag or [], "version_constraint": version, "min_health_score": min_health,
        "preferred_location": location,
    }


Capability = Annotated[list[str] | None, typer.Option("--capability", "-c",
                                                     help="required capability (repeatable)")]
ServiceType = Annotated[list[str] | None, typer.Option("--service-type",
                                                      help="service type (repeatable, OR)")]
Tag = Annotated[list[str] | None, typer.Option("--tag", help="required tag (repeatable)")]
Version = Annotated[str, typer.Option("--version", help='semver constraint, e.g. ">=1.2"')]
MinHealth = Annotated[float, typer.Option("--min-health", help="minimum health score 0..1")]
Location = Annotated[str, typer.Option("--location", help="preferred location")]


# ---- agents -------------------------------------------------------------------------
def _agent_row(a: Any) -> dict[str, Any]:
    d = message_to_dict(a)
    return {
        "agent_id": d["agent_id"], "type": d["agent_type"], "version": d["version"],
        "status": _short(str(d["status"]), "AGENT_STATUS_"),
        "health": d["health_score"], "endpoint": d["endpoint"],
        "capabilities": d["capabilities"], "queue": d.get("load", {}).get("queue_size", 0),
    }


AGENT_COLUMNS = ["agent_id", "type", "version", "status", "health", "endpoint", "capabilities",
                 "queue"]


@agents_app.command("list")
def agents_list(
    ctx: typer.Context,
    status: Annotated[str, typer.Option(help="only this status, e.g. active")] = "",
    limit: Annotated[int, typer.Option(help="stop after this many (0 = all)")] = 0,
    output: OutputOpt = None,
) -> None:
    """Every registered agent, in agent_id order."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> list[Any]:
        fields: dict[str, Any] = {}
        if status:
            fields["status"] = _enum("AGENT_STATUS_", status)
        found = []
        async with st.client() as c:
            async for a in c.iter_agents(**fields):
                found.append(a)
                if limit and len(found) >= limit:
                    break
        return found

    agents = run(body)
    out.emit(fmt_, [message_to_dict(a) for a in agents], rows=[_agent_row(a) for a in agents],
             columns=AGENT_COLUMNS, title=f"{len(agents)} agents")


@agents_app.command("get")
def agents_get(
    ctx: typer.Context,
    agent_id: Annotated[str, typer.Argument(help="the agent id")],
    output: OutputOpt = None,
) -> None:
    """One agent with its status, health and load."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.get_agent(agent_id=agent_id)).agent

    a = run(body)
    out.emit(fmt_, a, title=agent_id)


@agents_app.command("discover")
def agents_discover(
    ctx: typer.Context,
    capability: Capability = None,
    service_type: ServiceType = None,
    tag: Tag = None,
    version: Version = "",
    min_health: MinHealth = 0.0,
    location: Location = "",
    max_results: Annotated[int, typer.Option("--max", help="at most this many (0 = all)")] = 0,
    include_inactive: Annotated[bool, typer.Option(help="also INACTIVE agents")] = False,
    output: OutputOpt = None,
) -> None:
    """Agents matching a selector, in discovery order."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return await c.discover_agents(
                selector=_selector(capability, service_type, tag, version, min_health, location),
                max_results=max_results, include_inactive=include_inactive,
            )

    resp = run(body)
    out.emit(fmt_, resp, rows=[_agent_row(a) for a in resp.agents], columns=AGENT_COLUMNS,
             title=f"{len(resp.agents)} of {resp.total_matches} matches")


# ---- route / invoke -------------------------------------------------------------------
def _route_message(
    payload: dict[str, Any], capability: list[str] | None, service_type: list[str] | None,
    tag: list[str] | None, version: str, min_health: float, location: str,
    target_id: list[str] | None, routing_key: str, affinity_key: str, priority: str,
    message_type: str,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "payload": {"struct_value": payload},
        "selector": _selector(capability, service_type, tag, version, min_health, location),
        "target_ids": target_id or [],
        "routing_key": routing_key, "affinity_key": affinity_key,
        "message_type": message_type,
    }
    if priority:
        msg["priority"] = _enum("PRIORITY_", priority)
    return msg


TargetId = Annotated[list[str] | None, typer.Option("--target-id",
                                                   help="candidate agent id (repeatable)")]
Strategy = Annotated[str, typer.Option(help="round_robin, least_loaded, consistent_hash, ...")]


def route(
    ctx: typer.Context,
    capability: Capability = None,
    service_type: ServiceType = None,
    tag: Tag = None,
    version: Version = "",
    min_health: MinHealth = 0.0,
    location: Location = "",
    target_id: TargetId = None,
    strategy: Strategy = "",
    max_targets: Annotated[int, typer.Option(help="targets to return")] = 1,
    payload: Annotated[str, typer.Option(help="JSON payload, or @file")] = "",
    routing_key: Annotated[str, typer.Option(help="key for consistent hashing")] = "",
    affinity_key: Annotated[str, typer.Option(help="session affinity key")] = "",
    priority: Annotated[str, typer.Option(help="low, normal, high, critical")] = "",
    message_type: Annotated[str, typer.Option(help="message type for route rules")] = "",
    output: OutputOpt = None,
) -> None:
    """Ask the router which agent(s) would get a message, without calling them."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    msg = _route_message(parse_json_arg(payload, "--payload"), capability, service_type, tag,
                         version, min_health, location, target_id, routing_key, affinity_key,
                         priority, message_type)

    async def body() -> Any:
        fields: dict[str, Any] = {"message": msg, "max_targets": max_targets}
        if strategy:
            fields["strategy"] = _enum("STRATEGY_", strategy)
        async with st.client() as c:
            return await c.route(**fields)

    resp = run(body)
    rows = [message_to_dict(t) for t in resp.targets]
    out.emit(fmt_, resp, rows=rows, columns=["agent_id", "endpoint", "health_score"],
             title=f"strategy {_short(message_to_dict(resp)['strategy'], 'STRATEGY_')}")


def invoke(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="the action to run")],
    input: Annotated[str, typer.Option("--input", "-i", help="JSON input, or @file")] = "",
    capability: Capability = None,
    service_type: ServiceType = None,
    tag: Tag = None,
    version: Version = "",
    min_health: MinHealth = 0.0,
    location: Location = "",
    target_id: TargetId = None,
    strategy: Strategy = "",
    idempotency_key: Annotated[str, typer.Option(help="dedupe key (default: a new uuid)")] = "",
    routing_key: Annotated[str, typer.Option(help="key for consistent hashing")] = "",
    priority: Annotated[str, typer.Option(help="low, normal, high, critical")] = "",
    endpoint: Annotated[str, typer.Option(help="call this agent directly, not via the router")]
    = "",
    output: OutputOpt = None,
) -> None:
    """Run an action on an agent the router picks (or on `--endpoint` directly)."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    data = parse_json_arg(input, "--input")
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"

    async def body() -> dict[str, Any]:
        async with st.client() as c:
            if endpoint:
                output_, xresp = await c.execute(endpoint, action, data, idempotency_key=key)
                return {"output": output_, "agent_id": xresp.agent_id,
                        "deduplicated": xresp.deduplicated, "attempts": 1}
            fields: dict[str, Any] = {
                "message": _route_message(data, capability, service_type, tag, version,
                                          min_health, location, target_id, routing_key, "",
                                          priority, ""),
                "action": action, "idempotency_key": key,
            }
            if strategy:
                fields["strategy"] = _enum("STRATEGY_", strategy)
            resp = await c.invoke(**fields)
            return {"output": struct_to_dict(resp.output), "agent_id": resp.agent_id,
                    "deduplicated": resp.deduplicated, "attempts": len(resp.attempts),
                    "attempt_log": [message_to_dict(a) for a in resp.attempts]}

    res = run(body)
    if fmt_ == "json":
        out.print_json(res)
    else:
        out.print_kv({"agent_id": res["agent_id"], "attempts": res["attempts"],
                      "deduplicated": res["deduplicated"],
                      "output": json.dumps(res["output"], indent=2)}, title=action)


# ---- bus ------------------------------------------------------------------------------
@bus_app.command("publish")
def bus_publish(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="topic, e.g. orders.created")],
    data: Annotated[str, typer.Option("--data", "-d", help="JSON body, or @file")] = "",
    text: Annotated[str, typer.Option(help="raw text body (text/plain) instead of JSON")] = "",
    key: Annotated[str, typer.Option(help="partition key")] = "",
    priority: Annotated[str, typer.Option(help="low, normal, high, critical")] = "",
    header: Annotated[list[str] | None, typer.Option("--header", "-H",
                                                    help="name=value (repeatable)")] = None,
    message_id: Annotated[str, typer.Option("--id", help="message id (default: new uuid)")]
    = "",
    count: Annotated[int, typer.Option(help="publish this many copies (ids get -<n>)")] = 1,
    output: OutputOpt = None,
) -> None:
    """Publish a message; returns after the bus confirms the write."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    headers = {}
    for h in header or []:
        name, sep, value = h.partition("=")
        if not sep:
            raise typer.BadParameter(f"--header {h!r} must be name=value")
        headers[name] = value
    if text:
        payload: dict[str, Any] = {"bytes_value": text.encode(), "content_type": "text/plain"}
    else:
        payload = {"struct_value": dict_to_struct(parse_json_arg(data, "--data"))}
    base_id = message_id or uuid.uuid4().hex

    async def body() -> list[dict[str, Any]]:
        from agentmesh.bus.v1 import bus_pb2
        from agentmesh.common.v1 import common_pb2

        results = []
        async with st.client() as c:
            with Progress(TextColumn("publishing"), BarColumn(), TextColumn("{task.completed}/"
                          "{task.total}"), console=out.err_console, transient=True,
                          disable=count < 20) as progress:
                task = progress.add_task("publish", total=count)
                for i in range(count):
                    env = bus_pb2.Envelope(
                        id=base_id if count == 1 else f"{base_id}-{i}", topic=topic, key=key,
                        payload=common_pb2.Payload(**payload), headers=headers,
                    )
                    if priority:
                        env.priority = common_pb2.Priority.Value(_enum("PRIORITY_", priority))
                    resp = await c.publish(message=env)
                    results.append({"id": resp.id, **message_to_dict(resp.position)})
                    progress.advance(task)
        return results

    res = run(body)
    out.emit(fmt_, res if count > 1 else res[0], rows=res,
             columns=["id", "topic", "partition", "offset"], title="published")


@bus_app.command("subscribe")
def bus_subscribe(
    ctx: typer.Context,
    pattern: Annotated[list[str], typer.Argument(help="topic pattern(s), e.g. orders.*")],
    group: Annotated[str, typer.Option(help="consumer group (default: a new one)")] = "",
    earliest: Annotated[bool, typer.Option(help="start from the earliest message")] = False,
    max_messages: Annotated[int, typer.Option("--max", help="exit after this many (0 = never)")]
    = 0,
    timeout_s: Annotated[float, typer.Option(help="exit after this long idle (0 = never)")]
    = 0.0,
    no_ack: Annotated[bool, typer.Option(help="do not ack (messages are redelivered)")]
    = False,
    output: OutputOpt = None,
) -> None:
    """Stream messages and ack each one after printing it. Ctrl-C stops."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    consumer_group = group or f"cli-{uuid.uuid4().hex[:8]}"

    async def body() -> int:
        from agentmesh.bus.v1 import bus_pb2

        outbox: asyncio.Queue[bus_pb2.SubscribeRequest | None] = asyncio.Queue()
        await outbox.put(bus_pb2.SubscribeRequest(open=bus_pb2.SubscriptionOpen(
            topic_patterns=pattern, consumer_group=consumer_group,
            start_position=(bus_pb2.START_POSITION_EARLIEST if earliest
                            else bus_pb2.START_POSITION_LATEST),
        )))

        async def requests() -> Any:
            while (item := await outbox.get()) is not None:
                yield item

        seen = 0
        async with st.client() as c:
            stream = c.subscribe_stream(requests())
            it = stream.__aiter__()
            while True:
                try:
                    resp = await (asyncio.wait_for(it.__anext__(), timeout_s) if timeout_s
                                  else it.__anext__())
                except (StopAsyncIteration, TimeoutError):
                    break
                if resp.HasField("started"):
                    out.err_console.print(
                        f"subscribed to {', '.join(resp.started.topics) or '(no topics yet)'} "
                        f"as group {consumer_group}", style="dim")
                    continue
                for m in resp.batch.messages:
                    _print_delivery(fmt_, m)
                    seen += 1
                    if not no_ack:
                        await outbox.put(bus_pb2.SubscribeRequest(
                            ack=bus_pb2.Ack(ack_ids=[m.ack_id])))
                    if max_messages and seen >= max_messages:
                        break
                if max_messages and seen >= max_messages:
                    break
            await outbox.put(None)
        return seen

    try:
        run(body)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _print_delivery(fmt_: str, m: Any) -> None:
    env = m.envelope
    if env.payload.HasField("struct_value"):
        body: Any = struct_to_dict(env.payload.struct_value)
    else:
        raw = env.payload.bytes_value
        body = raw.decode(errors="replace") if env.payload.content_type.startswith("text") \
            else raw.hex()
    doc = {"id": env.id, "topic": env.topic, "key": env.key,
           "partition": m.position.partition, "offset": m.position.offset,
           "delivery_attempt": m.delivery_attempt, "headers": dict(env.headers), "data": body}
    if fmt_ == "json":
        # One JSON document per line, so `| jq` works on an endless stream.
        print(json.dumps(doc, default=str), flush=True)
    else:
        out.console.print(f"[bold]{env.topic}[/] [{m.position.partition}:{m.position.offset}] "
                          f"id={env.id} key={env.key or '-'}  {json.dumps(body, default=str)}",
                          highlight=False)


# ---- saga --------------------------------------------------------------------------------
def _saga_row(s: Any) -> dict[str, Any]:
    d = message_to_dict(s)
    steps = d.get("steps", [])
    done = sum(1 for x in steps if str(x.get("status", "")).endswith("COMPLETED"))
    return {"saga_id": d["saga_id"], "definition": d.get("definition", {}).get("name", ""),
            "state": _short(str(d["state"]), "SAGA_STATE_"), "steps": f"{done}/{len(steps)}",
            "created": d.get("create_time", ""),
            "error": (d.get("error") or {}).get("message", "")}


SAGA_COLUMNS = ["saga_id", "definition", "state", "steps", "created", "error"]
_SAGA_DONE = ("SAGA_STATE_COMPLETED", "SAGA_STATE_COMPENSATED", "SAGA_STATE_FAILED",
              "SAGA_STATE_CANCELLED")


def load_saga_file(path: Path) -> tuple[Any, dict[str, Any]]:
    """Parse a saga YAML/JSON file into (SagaDefinition, input).

    The file is either a SagaDefinition in proto JSON form (snake_case or
    camelCase keys, enum names, durations like "30s"), or
    `{definition: <SagaDefinition>, input: {...}}`.

    Raises:
        typer.BadParameter: when the file cannot be read or does not parse.
    """
    from agentmesh.saga.v1 import saga_pb2

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{path}: expected a mapping at the top level")
    inp: dict[str, Any] = {}
    if "definition" in doc:
        inp = doc.get("input") or {}
        doc = doc["definition"]
    try:
        definition = json_format.ParseDict(doc, saga_pb2.SagaDefinition())
    except json_format.ParseError as e:
        raise typer.BadParameter(f"not a SagaDefinition ({path}): {e}") from None
    return definition, inp


@saga_app.command("start")
def saga_start(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--file", "-f", help="saga definition YAML/JSON")],
    input: Annotated[str, typer.Option("--input", "-i", help="JSON input, or @file")] = "",
    idempotency_key: Annotated[str, typer.Option(help="start once per key")] = "",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until it ends")] = False,
    output: OutputOpt = None,
) -> None:
    """Start a saga from a definition file; `--watch` follows it to the end."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)
    definition, file_input = load_saga_file(file)
    data = {**file_input, **parse_json_arg(input, "--input")}

    async def body() -> Any:
        async with st.client() as c:
            resp = await c.start_saga(definition=definition, input=data,
                                      idempotency_key=idempotency_key)
            if watch:
                return await _watch_saga(c, resp.saga.saga_id, fmt_)
            return resp.saga

    saga = run(body)
    if not watch:
        out.emit(fmt_, saga, rows=[_saga_row(saga)], columns=SAGA_COLUMNS, title="saga started")
    elif saga.state != _saga_state("SAGA_STATE_COMPLETED"):
        raise typer.Exit(1)


def _saga_state(name: str) -> int:
    from agentmesh.saga.v1 import saga_pb2

    return int(saga_pb2.SagaState.Value(name))


async def _watch_saga(c: Any, saga_id: str, fmt_: str) -> Any:
    """Print events until the saga ends; returns the final Saga."""
    saga = (await c.get_saga(saga_id=saga_id)).saga
    total = max(1, len(saga.steps))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
                  console=out.err_console, transient=True, disable=fmt_ == "json") as progress:
        task = progress.add_task(saga_id, total=total)
        done: set[str] = set()
        async for resp in c.watch_saga(saga_id=saga_id):
            ev = message_to_dict(resp.event)
            kind = _short(str(ev["type"]), "SAGA_EVENT_TYPE_")
            if fmt_ == "json":
                print(json.dumps(ev, default=str), flush=True)
            else:
                err = (ev.get("error") or {}).get("message", "")
                progress.console.print(
                    f"#{ev['sequence']:>4} {kind:<28} {ev.get('step_name', '')} "
                    f"{'attempt ' + str(ev['attempt']) if ev.get('attempt') else ''} "
                    f"{'- ' + err if err else ''}", highlight=False)
            if kind in ("STEP_COMPLETED", "STEP_SKIPPED", "STEP_FAILED"):
                done.add(str(ev.get("step_name")))
                progress.update(task, completed=len(done))
            if kind in ("SAGA_COMPLETED", "SAGA_COMPENSATED", "SAGA_FAILED", "SAGA_CANCELLED"):
                break
    saga = (await c.get_saga(saga_id=saga_id)).saga
    if fmt_ == "json":
        # The last line of the JSON-lines stream is the final saga.
        print(json.dumps({"saga": message_to_dict(saga)}, default=str), flush=True)
    else:
        out.print_table([_saga_row(saga)], SAGA_COLUMNS, title="saga finished")
    return saga


@saga_app.command("get")
def saga_get(
    ctx: typer.Context,
    saga_id: Annotated[str, typer.Argument(help="the saga id")],
    output: OutputOpt = None,
) -> None:
    """One saga with its steps."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.get_saga(saga_id=saga_id)).saga

    saga = run(body)
    if fmt_ == "json":
        out.print_json(saga)
        return
    out.print_table([_saga_row(saga)], SAGA_COLUMNS, title=saga_id)
    steps = [message_to_dict(s) for s in saga.steps]
    out.print_table(
        [{"step": s["name"], "status": _short(str(s["status"]), "STEP_STATUS_"),
          "attempts": s.get("attempts", 0),
          "compensations": s.get("compensation_attempts", 0),
          "error": (s.get("error") or {}).get("message", "")} for s in steps],
        ["step", "status", "attempts", "compensations", "error"], title="steps",
    )


@saga_app.command("list")
def saga_list(
    ctx: typer.Context,
    state: Annotated[list[str] | None, typer.Option(help="only these states (repeatable)")]
    = None,
    definition: Annotated[str, typer.Option(help="only this definition name")] = "",
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    output: OutputOpt = None,
) -> None:
    """Sagas, newest first as the coordinator orders them."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> list[Any]:
        found: list[Any] = []
        token = ""
        async with st.client() as c:
            while len(found) < limit:
                resp = await c.list_sagas(
                    states=[_enum("SAGA_STATE_", s) for s in state or []],
                    definition_name=definition, page_size=min(100, limit - len(found)),
                    page_token=token,
                )
                found.extend(resp.sagas)
                token = resp.next_page_token
                if not token:
                    break
        return found

    sagas = run(body)
    out.emit(fmt_, [message_to_dict(s) for s in sagas], rows=[_saga_row(s) for s in sagas],
             columns=SAGA_COLUMNS, title=f"{len(sagas)} sagas")


@saga_app.command("watch")
def saga_watch(
    ctx: typer.Context,
    saga_id: Annotated[str, typer.Argument(help="the saga id")],
    output: OutputOpt = None,
) -> None:
    """Follow a saga's events until it ends; exits 1 unless it COMPLETED."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return await _watch_saga(c, saga_id, fmt_)

    saga = run(body)
    if saga.state != _saga_state("SAGA_STATE_COMPLETED"):
        raise typer.Exit(1)


@saga_app.command("cancel")
def saga_cancel(
    ctx: typer.Context,
    saga_id: Annotated[str, typer.Argument(help="the saga id")],
    reason: Annotated[str, typer.Option(help="why, for the event log")] = "cancelled from CLI",
    output: OutputOpt = None,
) -> None:
    """Cancel a running saga (completed steps are compensated)."""
    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return (await c.cancel_saga(saga_id=saga_id, reason=reason)).saga

    saga = run(body)
    out.emit(fmt_, saga, rows=[_saga_row(saga)], columns=SAGA_COLUMNS, title="cancel requested")


# ---- swarm -------------------------------------------------------------------------------
def _swarm_row(s: Any) -> dict[str, Any]:
    d = message_to_dict(s)
    stats = d.get("stats", {})
    return {"swarm_id": d["swarm_id"], "objective": d.get("task", {}).get("objective", ""),
            "state": _short(str(d["state"]), "SWARM_STATE_"),
            "iteration": stats.get("iteration", 0), "best": stats.get("best_fitness"),
            "partitions": f"{stats.get('partitions_done', 0)}/{stats.get('partitions_total', 0)}",
            "agents": stats.get("active_agents", 0)}


SWARM_COLUMNS = ["swarm_id", "objective", "state", "iteration", "best", "partitions", "agents"]
_SWARM_DONE = ("SWARM_STATE_COMPLETED", "SWARM_STATE_FAILED", "SWARM_STATE_STOPPED")


@swarm_app.command("deploy")
def swarm_deploy(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("--file", "-f", help="SwarmTask YAML/JSON")],
    swarm_id: Annotated[str, typer.Option(help="id (makes the deploy idempotent)")] = "",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow until it ends")] = False,
    output: OutputOpt = None,
) -> None:
    """Deploy a swarm from a SwarmTask file (proto JSON form, e.g. objective,
    behavior: BEHAVIOR_FORAGING, max_iterations, builtin/agent_evaluated/partition_work)."""
    from agentmesh.swarm.v1 import swarm_pb2

    st, fmt_ = state_of(ctx), fmt(ctx, output)
    try:
        doc = yaml.safe_load(file.read_text())
        task = json_format.ParseDict(doc.get("task", doc) if isinstance(doc, dict) else doc,
                                     swarm_pb2.SwarmTask())
    except (OSError, yaml.YAMLError, json_format.ParseError, AttributeError) as e:
        raise typer.BadParameter(f"{file}: {e}") from None

    async def body() -> Any:
        async with st.client() as c:
            swarm = await c.deploy_swarm(task, swarm_id=swarm_id)
            if watch:
                return await _watch_swarm(c, swarm.swarm_id, fmt_)
            return swarm

    swarm = run(body)
    if not watch:
        out.emit(fmt_, swarm, rows=[_swarm_row(swarm)], columns=SWARM_COLUMNS,
                 title="swarm deployed")
    elif swarm.state != swarm_pb2.SWARM_STATE_COMPLETED:
        raise typer.Exit(1)


async def _watch_swarm(c: Any, swarm_id: str, fmt_: str) -> Any:
    swarm = (await c.get_swarm(swarm_id=swarm_id)).swarm
    total = swarm.task.max_iterations or swarm.task.data_partitions or 100
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=out.err_console, transient=True, disable=fmt_ == "json") as progress:
        task = progress.add_task(swarm_id, total=total, info="")
        async for resp in c.watch_swarm(swarm_id=swarm_id):
            d = message_to_dict(resp)
            stats = d.get("stats", {})
            if fmt_ == "json":
                print(json.dumps(d, default=str), flush=True)
            if stats.get("partitions_total"):
                progress.update(task, total=stats["partitions_total"],
                                completed=stats.get("partitions_done", 0),
                                info=f"{stats.get('partitions_done', 0)} partitions")
            else:
                progress.update(task, completed=stats.get("iteration", 0),
                                info=f"best {stats.get('best_fitness', 0):.6g}")
            if str(d.get("state")) in _SWARM_DONE:
                break
    swarm = (await c.get_swarm(swarm_id=swarm_id)).swarm
    if fmt_ == "json":
        print(json.dumps({"swarm": message_to_dict(swarm)}, default=str), flush=True)
    else:
        out.print_table([_swarm_row(swarm)], SWARM_COLUMNS, title="swarm finished")
    return swarm


@swarm_app.command("watch")
def swarm_watch(
    ctx: typer.Context,
    swarm_id: Annotated[str, typer.Argument(help="the swarm id")],
    output: OutputOpt = None,
) -> None:
    """Follow a swarm's progress until it ends; exits 1 unless it COMPLETED."""
    from agentmesh.swarm.v1 import swarm_pb2

    st, fmt_ = state_of(ctx), fmt(ctx, output)

    async def body() -> Any:
        async with st.client() as c:
            return await _watch_swarm(c, swarm_id, fmt_)

    swarm = run(body)
    if swarm.state != swarm_pb2.SWARM_STATE_COMPLETED:
        raise typer.Exit(1)


# ---- demo ----------------------------------------------------------------------------------
def demo(ctx: typer.Context) -> None:
    """Run the Scope 3 demo end to end (`agentmesh.demo.run_demo`); extra
    arguments are passed on to it."""
    if importlib.util.find_spec("agentmesh.demo") is None:
        raise fail("the demo is not available yet in this build (agentmesh.demo is missing)",
                   hint="see issue #8; `agentmesh up` starts the stack meanwhile")
    mod = importlib.import_module("agentmesh.demo")
    fn = getattr(mod, "run_demo", None)
    if fn is None:
        raise fail("agentmesh.demo has no run_demo() yet")
    st = state_of(ctx)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    if "argv" in params:
        kwargs["argv"] = list(ctx.args)
    if "output" in params:
        kwargs["output"] = st.output
    if "run_dir" in params:
        kwargs["run_dir"] = st.run_dir
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    if isinstance(result, int) and result != 0:
        raise typer.Exit(result)


async def _await(x: Any) -> Any:
    return await x
