"""RouterService servicer (minimal: health, reflection and metrics only)."""

from __future__ import annotations

from agentmesh.router.v1 import router_pb2_grpc
from agentmesh.runtime.server import Daemon

from services.router.settings import RouterSettings


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """RouterService over the registry's Redis state."""

    def __init__(self, daemon: Daemon, settings: RouterSettings) -> None:
        self._redis = daemon.redis()
        self._settings = settings

    async def start(self) -> None:
        """Start background work."""

    async def stop(self) -> None:
        """Stop background work."""
