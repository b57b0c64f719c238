"""The MCP server of the mesh, on the official SDK's low-level `Server`.

The low-level server (not the decorator-based MCPServer) is used because the
tools' schemas come from the protobuf contract (`agentmesh.mcp.tools`), not
from Python signatures.

Whose token a call carries:
- stdio: the MCP client started this process, so the token given to it
  (`--token` / `AGENTMESH_AUTH_TOKEN`) is the caller's.
- streamable HTTP: the `Authorization: Bearer <token>` header of the HTTP
  request, and only that: a caller without one calls the mesh without a
  token (a mesh with auth on answers UNAUTHENTICATED), so a local process
  cannot borrow the identity of whoever started the server.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from agentmesh.client import Client
from agentmesh.mcp.tools import TOOLS, TOOLS_BY_NAME, Caller, Outcome, ToolSpec, call_tool
from agentmesh.runtime.retry import IdempotencyLevel

log = logging.getLogger("agentmesh.mcp")

#: Name the server reports in the MCP handshake.
SERVER_NAME = "agentmesh"


@dataclass
class MeshServerOptions:
    """Where the mesh is and the bounds of each tool call.

    Attributes:
        targets: `host:port` by daemon ("registry", "router", "bus", "saga",
            "swarm"); a missing one uses the Client's default.
        token: bearer token of stdio callers ("" for none). Never used on HTTP.
        tls_ca_file: PEM CA of the daemons; set turns TLS on.
        call_timeout_s: deadline of each unary mesh call, s.
        saga_timeout_s: longest `run_saga` wait for the end of a saga, s.
    """

    targets: dict[str, str | None] = field(default_factory=dict)
    token: str = ""
    tls_ca_file: str | None = None
    call_timeout_s: float = 30.0
    saga_timeout_s: float = 300.0


def tool_definition(spec: ToolSpec) -> types.Tool:
    """The MCP Tool of `spec`: schemas from the contract, hints from idempotency_level."""
    level = spec.level()
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema(),
        output_schema=spec.output_schema(),
        annotations=types.ToolAnnotations(
            title=spec.title,
            read_only_hint=level == IdempotencyLevel.NO_SIDE_EFFECTS,
            idempotent_hint=level != IdempotencyLevel.IDEMPOTENCY_UNKNOWN,
            destructive_hint=False,  # every tool adds (a call, a saga, a message), none deletes
            open_world_hint=True,  # the agents it reaches act on the world
        ),
    )


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying `token` as the mesh's auth reads it; () for none."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def http_token(request: Any) -> str:
    """The bearer token of an HTTP request's `Authorization` header, "" without one."""
    headers = getattr(request, "headers", None)
    value = headers.get("authorization", "") if headers is not None else ""
    scheme, _, token = str(value).partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def result_of(outcome: Outcome) -> types.CallToolResult:
    """The MCP result of a tool outcome (structured content and its JSON text)."""
    return types.CallToolResult(
        content=[types.TextContent(text=outcome.text)],
        structured_content=outcome.data,
        is_error=outcome.is_error,
    )


class MeshServer:
    """The mesh's tools behind one MCP low-level Server.

    Args:
        options: targets, the stdio token and call bounds.
        http: True when served over streamable HTTP (tokens come from headers).
    """

    def __init__(self, options: MeshServerOptions, *, http: bool = False) -> None:
        self.options = options
        self.http = http
        self.client: Client | None = None
        self.tools = [tool_definition(t) for t in TOOLS]
        self.server: Server[Any] = Server(
            SERVER_NAME,
            version=_version(),
            title="AgentMesh",
            description="Discover and invoke the mesh's agents, run sagas, schedule tasks, "
            "publish to the bus and read saga histories.",
            lifespan=self._lifespan,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )

    @asynccontextmanager
    async def _lifespan(self, _: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        t = self.options.targets
        # The channels carry no token: each call sends its caller's (bearer_metadata).
        self.client = Client(
            registry=t.get("registry"), router=t.get("router"), bus=t.get("bus"),
            saga=t.get("saga"), swarm=t.get("swarm"), token="",
            tls_ca_file=self.options.tls_ca_file, default_timeout_s=self.options.call_timeout_s,
        )
        try:
            yield {}
        finally:
            await self.client.close()
            self.client = None

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        spec = TOOLS_BY_NAME.get(params.name)
        if spec is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"unknown tool {params.name!r}; tools: {', '.join(TOOLS_BY_NAME)}",
            )
        assert self.client is not None, "the lifespan creates the client"
        token = http_token(ctx.request) if self.http else self.options.token
        caller = Caller(
            client=self.client,
            metadata=bearer_metadata(token),
            call_timeout_s=self.options.call_timeout_s,
            saga_timeout_s=self.options.saga_timeout_s,
            progress=ctx.session.report_progress,
        )
        try:
            outcome = await call_tool(spec, caller, params.arguments or {})
        except Exception as e:  # a defect here must not end the session; the model sees it
            log.exception("tool %s failed", spec.name)
            outcome = Outcome(
                data={"error": {"code": "INTERNAL", "message": f"{type(e).__name__}: {e}"}},
                text=f"INTERNAL: {type(e).__name__}: {e}",
                is_error=True,
            )
        return result_of(outcome)

    # ---- transports ----------------------------------------------------------
    async def run_stdio(self) -> None:
        """Serve one MCP client over this process's stdin/stdout until it closes."""
        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())

    async def run_http(self, *, host: str = "127.0.0.1", port: int = 0, path: str = "/mcp") -> None:
        """Serve streamable HTTP on `host:port` (0 picks a free port) until cancelled.

        Once bound, logs `{"msg": "serving", "port": N, "url": ...}` on stderr
        (the line the test harness and scripts wait for).
        """
        import uvicorn

        app = self.server.streamable_http_app(streamable_http_path=path, host=host)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        srv = uvicorn.Server(config)
        url = f"http://{host}:{bound}{path}"
        print(json.dumps({"msg": "serving", "port": bound, "url": url}), file=sys.stderr,
              flush=True)
        await srv.serve(sockets=[sock])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentmesh")
    except PackageNotFoundError:
        return "0"


__all__ = [
    "SERVER_NAME",
    "MeshServer",
    "MeshServerOptions",
    "bearer_metadata",
    "http_token",
    "result_of",
    "tool_definition",
]
