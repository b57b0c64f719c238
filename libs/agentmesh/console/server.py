"""Serve the console with uvicorn on a port of its own."""

from __future__ import annotations

import json
import socket
import sys

from agentmesh.console.app import create_app
from agentmesh.console.settings import ConsoleSettings


async def serve(settings: ConsoleSettings, *, host: str = "127.0.0.1", port: int = 8088) -> None:
    """Serve until cancelled (SIGINT/SIGTERM stop uvicorn gracefully).

    Binds first, then logs `{"msg": "serving", "port": N, "url": ...}` on
    stderr, the line scripts and tests wait for (`port=0` picks a free port).

    Raises:
        OSError: the address cannot be bound.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(json.dumps({"msg": "serving", "port": bound, "url": f"http://{shown}:{bound}/"}),
          file=sys.stderr, flush=True)
    await srv.serve(sockets=[sock])
