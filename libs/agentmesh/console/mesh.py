"""The console's one `agentmesh.Client` and the caller's credentials per request.

The channels carry no token of their own: every call sends the token of the
HTTP request that caused it (its `Authorization: Bearer` header, e.g. set by
an authenticating proxy), else the console's `--token`. So the mesh checks the
caller's roles, not the console's, and the console adds no access path.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request

from agentmesh.client import Client
from agentmesh.console.settings import ConsoleSettings

Metadata = Sequence[tuple[str, str]]


def bearer_of(request: Request) -> str:
    """The bearer token of `request`'s `Authorization` header, "" without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Mesh:
    """The client and the settings, shared by every request of one app.

    Args:
        settings: targets, token and TLS files.
    """

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        t = settings.targets
        self.client = Client(
            registry=t.get("registry"), router=t.get("router"), bus=t.get("bus"),
            saga=t.get("saga"), swarm=t.get("swarm"), token="",
            tls_ca_file=settings.tls_ca_file, client_cert_file=settings.client_cert_file,
            client_key_file=settings.client_key_file,
            default_timeout_s=settings.call_timeout_s,
        )

    def metadata(self, request: Request) -> Metadata:
        """gRPC metadata carrying the caller's token; () when there is none."""
        token = bearer_of(request) or self.settings.token
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def close(self) -> None:
        """Close the client's channels."""
        await self.client.close()


def mesh_of(request: Request) -> Mesh:
    """The Mesh of the app serving `request` (set by `agentmesh.console.app`)."""
    mesh: Mesh = request.app.state.mesh
    return mesh
