"""`agentmesh console`: the mesh console, a web UI (agentmesh.console)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from agentmesh.cli import stack
from agentmesh.cli.common import fail, state_of


def console(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="interface to bind (keep it loopback unless "
                                            "a proxy in front authenticates)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port; 0 picks a free one (logged)")] = 8088,
    jaeger_url: Annotated[str, typer.Option(
        envvar="AGENTMESH_CONSOLE_JAEGER_URL",
        help="Jaeger UI base URL (http://host:16686): links each saga to its trace")] = "",
    bus_metrics_url: Annotated[str, typer.Option(
        envvar="AGENTMESH_CONSOLE_BUS_METRICS_URL",
        help="the bus gateway's /metrics URL: consumer lag on the Bus page")] = "",
    rate_limiter: Annotated[list[str] | None, typer.Option(
        "--rate-limiter", help="a rate limiter to show on the Router page (repeatable)")]
    = None,
    list_limit: Annotated[int, typer.Option(min=1, max=10_000,
                                            help="most rows a list page reads")] = 500,
) -> None:
    """Serve the mesh console: agents, sagas (live timelines), tasks, swarms, bus
    and router in a browser. Every call carries the request's `Authorization:
    Bearer` token, else --token; TLS as --tls-ca-file."""
    try:
        from agentmesh.console.server import serve
        from agentmesh.console.settings import ConsoleSettings
    except ImportError as e:
        raise fail(f"the console needs the console extra ({e}); "
                   "pip install 'agentmesh[console]'", code=2) from None
    st = state_of(ctx)
    settings = ConsoleSettings(
        targets=dict(stack.targets_for(st.run_dir, st.targets)),
        token=st.token or "", tls_ca_file=st.tls_ca_file or "",
        call_timeout_s=st.timeout_s, jaeger_url=jaeger_url,
        bus_metrics_url=bus_metrics_url, rate_limiters=tuple(rate_limiter or ()),
        list_limit=list_limit,
    )
    try:
        asyncio.run(serve(settings, host=host, port=port))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        raise fail(f"cannot serve on {host}:{port}: {e}") from None
