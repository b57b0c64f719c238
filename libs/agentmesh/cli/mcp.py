"""`agentmesh mcp serve`: the mesh's tools for MCP clients (agentmesh.mcp)."""

from __future__ import annotations

import asyncio
import enum
from typing import Annotated

import typer

from agentmesh.cli import stack
from agentmesh.cli.common import fail, state_of

mcp_app = typer.Typer(help="Serve the mesh to MCP clients as tools.", no_args_is_help=True)


class Transport(enum.StrEnum):
    """How MCP clients reach the server."""

    stdio = "stdio"
    http = "http"


@mcp_app.command("serve")
def serve(
    ctx: typer.Context,
    transport: Annotated[Transport, typer.Option(
        "--transport", "-t", help="stdio (the client starts this process) or http "
        "(streamable HTTP on --host/--port)")] = Transport.stdio,
    host: Annotated[str, typer.Option(help="http: interface to bind (keep it loopback)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="http: port; 0 picks a free one (logged)")] = 8765,
    path: Annotated[str, typer.Option(help="http: path of the MCP endpoint")] = "/mcp",
    call_timeout_s: Annotated[float, typer.Option(
        min=0.001, help="deadline of each mesh call, seconds")] = 30.0,
    saga_timeout_s: Annotated[float, typer.Option(
        min=0.001, help="longest run_saga wait for a saga's end, seconds")] = 300.0,
) -> None:
    """Serve discover_agents, invoke, run_saga, schedule_task, get_task, publish and
    get_saga_history as MCP tools. stdio calls carry --token (AGENTMESH_AUTH_TOKEN);
    HTTP calls carry the request's `Authorization: Bearer` token."""
    try:
        from agentmesh.mcp.server import MeshServer, MeshServerOptions
    except ImportError as e:
        raise fail(f"the MCP server needs the mcp extra ({e}); "
                   "pip install 'agentmesh[mcp]'", code=2) from None
    st = state_of(ctx)
    opts = MeshServerOptions(
        targets=dict(stack.targets_for(st.run_dir, st.targets)),
        token=st.token or "",
        tls_ca_file=st.tls_ca_file,
        call_timeout_s=call_timeout_s,
        saga_timeout_s=saga_timeout_s,
    )
    srv = MeshServer(opts, http=transport is Transport.http)
    try:
        if transport is Transport.http:
            asyncio.run(srv.run_http(host=host, port=port, path=path))
        else:
            asyncio.run(srv.run_stdio())
    except KeyboardInterrupt:
        pass
