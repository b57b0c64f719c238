"""`agentmesh`: run the local stack and talk to the mesh.

    agentmesh up | down | status
    agentmesh agents list | get | discover
    agentmesh route | invoke
    agentmesh bus publish | subscribe
    agentmesh saga start -f def.yaml | get | list | watch | cancel
    agentmesh swarm deploy | watch
    agentmesh mcp serve [--transport stdio|http]
    agentmesh console [--port 8088]
    agentmesh demo

Daemon addresses come from `--registry/--router/--bus/--saga/--swarm` (or
`AGENTMESH_<DAEMON>_TARGET`), else from the stack `up` started in `--run-dir`,
else the default ports. Every command prints a table, or JSON with
`--output json`. Errors print `error: CODE: message` on stderr and exit
non-zero: 1 failure, 2 usage, 3 unavailable or deadline, 4 not found,
5 invalid argument, 6 failed precondition/aborted, 7 auth, 8 resource
exhausted, 9 unimplemented.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from agentmesh.cli import commands, stack
from agentmesh.cli import output as out
from agentmesh.cli.common import CliState, OutputOpt, fail, fmt, state_of
from agentmesh.cli.console import console
from agentmesh.cli.mcp import mcp_app
from agentmesh.runtime.config import DEFAULT_PORTS

app = typer.Typer(
    name="agentmesh",
    help="AgentMesh: run the local stack and talk to the mesh.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", envvar="AGENTMESH_OUTPUT",
                                        help="table or json")] = "table",
    run_dir: Annotated[Path, typer.Option(envvar="AGENTMESH_RUN_DIR",
                                          help="run directory of `up` (PIDs, logs)")]
    = Path(".run"),
    registry: Annotated[str | None, typer.Option(envvar="AGENTMESH_REGISTRY_TARGET",
                                                 help="registry host:port")] = None,
    router: Annotated[str | None, typer.Option(envvar="AGENTMESH_ROUTER_TARGET",
                                               help="router host:port")] = None,
    bus: Annotated[str | None, typer.Option(envvar="AGENTMESH_BUS_TARGET",
                                            help="bus host:port")] = None,
    saga: Annotated[str | None, typer.Option(envvar="AGENTMESH_SAGA_TARGET",
                                             help="saga coordinator host:port")] = None,
    swarm: Annotated[str | None, typer.Option(envvar="AGENTMESH_SWARM_TARGET",
                                              help="swarm engine host:port")] = None,
    token: Annotated[str | None, typer.Option(envvar="AGENTMESH_AUTH_TOKEN",
                                              help="bearer token")] = None,
    tls_ca_file: Annotated[str | None, typer.Option(envvar="AGENTMESH_TLS_CA_FILE",
                                                    help="PEM CA; turns TLS on")] = None,
    timeout_s: Annotated[float, typer.Option(help="deadline of each call, seconds")] = 10.0,
) -> None:
    if output not in ("table", "json"):
        raise typer.BadParameter(f"--output must be table or json, not {output!r}")
    ctx.obj = CliState(
        output=output, run_dir=run_dir,
        targets={"registry": registry, "router": router, "bus": bus, "saga": saga,
                 "swarm": swarm},
        token=token, tls_ca_file=tls_ca_file, timeout_s=timeout_s,
    )


# ---- up / down / status ----------------------------------------------------------
@app.command()
def up(
    ctx: typer.Context,
    run_dir: Annotated[Path | None, typer.Option(help="run directory (default: global)")]
    = None,
    redis_port: Annotated[int, typer.Option(envvar="AGENTMESH_UP_REDIS_PORT",
                                            help="port of the Redis to start")] = 6379,
    redis_url: Annotated[str, typer.Option(envvar="AGENTMESH_UP_REDIS_URL",
                                           help="use this running Redis instead")] = "",
    base_port: Annotated[int, typer.Option(
        envvar="AGENTMESH_UP_BASE_PORT",
        help="gRPC port of the bus; router, registry, saga, swarm follow (+1..+4)")]
    = DEFAULT_PORTS["bus"][0],
    metrics_base_port: Annotated[int, typer.Option(
        envvar="AGENTMESH_UP_METRICS_BASE_PORT", help="metrics port of the bus; others follow")]
    = DEFAULT_PORTS["bus"][1],
    timeout_s: Annotated[float, typer.Option(help="wait this long for SERVING")] = 90.0,
    output: OutputOpt = None,
) -> None:
    """Start Redis and the five daemons in the background; wait until all are SERVING."""
    st = state_of(ctx)
    fmt_ = fmt(ctx, output)
    opts = stack.UpOptions(
        run_dir=run_dir or st.run_dir, redis_port=redis_port, redis_url=redis_url,
        base_port=base_port, metrics_base_port=metrics_base_port, timeout_s=timeout_s,
    )
    names = ([] if redis_url else ["redis"]) + list(opts.daemons)
    try:
        with Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} serving"), TimeElapsedColumn(),
            console=out.err_console, transient=True,
        ) as progress:
            task = progress.add_task("starting the stack", total=len(names))
            serving: set[str] = set()

            def on_progress(name: str, status: str) -> None:
                if status == "SERVING":
                    serving.add(name)
                progress.update(task, completed=len(serving),
                                description=f"{name}: {status.lower()}")

            state = stack.up(opts, on_progress=on_progress)
            progress.update(task, description="stack is up")
    except stack.StackError as e:
        raise fail(str(e), hint=f"logs are in {opts.run_dir}/") from None
    rows = [{"component": "redis", "target": state.redis_url, "pid": None, "log": "-"}] + [
        {"component": d.name, "target": d.target, "pid": d.pid, "log": d.log}
        for d in state.daemons.values()
    ]
    out.emit(fmt_, {"run_dir": state.run_dir, "redis_url": state.redis_url,
                    "daemons": {n: vars(d) for n, d in state.daemons.items()}},
             rows=rows, columns=["component", "target", "pid", "log"], title="AgentMesh is up")


@app.command()
def down(
    ctx: typer.Context,
    run_dir: Annotated[Path | None, typer.Option(help="run directory (default: global)")]
    = None,
    grace_s: Annotated[float, typer.Option(help="drain budget before SIGKILL, seconds")]
    = 15.0,
    output: OutputOpt = None,
) -> None:
    """Stop exactly what `up` started (SIGTERM, drain, then SIGKILL) and its Redis."""
    st = state_of(ctx)
    fmt_ = fmt(ctx, output)
    results = stack.down(run_dir or st.run_dir, grace_s=grace_s)
    if not results:
        if fmt_ == "json":
            out.print_json({"stopped": []})
        else:
            out.console.print(f"nothing to stop in {run_dir or st.run_dir}")
        return
    out.emit(fmt_, {"stopped": [{"component": c, "outcome": o} for c, o in results]},
             rows=[{"component": c, "outcome": o} for c, o in results],
             columns=["component", "outcome"], title="AgentMesh is down")


@app.command()
def status(
    ctx: typer.Context,
    run_dir: Annotated[Path | None, typer.Option(help="run directory (default: global)")]
    = None,
    output: OutputOpt = None,
) -> None:
    """Health of each daemon (grpc.health.v1); exits 3 unless all are SERVING."""
    st = state_of(ctx)
    fmt_ = fmt(ctx, output)
    rd = run_dir or st.run_dir
    rows = stack.status_rows(rd, stack.targets_for(rd, st.targets))
    out.emit(fmt_, rows, rows=rows, columns=["daemon", "target", "health", "pid",
                                            "metrics_port"], title="AgentMesh status")
    if any(r["health"] != "SERVING" for r in rows):
        raise typer.Exit(3)


commands.register(app)
# `agentmesh mcp serve`; the MCP SDK is imported only when it runs.
app.add_typer(mcp_app, name="mcp")
app.command("console")(console)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # keep gRPC's C-core chatter off the terminal
    app()


if __name__ == "__main__":
    main()
