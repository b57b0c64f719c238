"""Server reflection that also resolves method symbols.

ghz and `grpcurl describe pkg.Service.Method` ask reflection for the file
containing a *method*. The upb-backed descriptor pool of protobuf ≥ 4 answers
that only for messages, enums and services, so the stock reflection servicer
replies NOT_FOUND and ghz fails with "Symbol not found". This pool wrapper
falls back to the method's service file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection


class MethodAwarePool:
    """Delegates to a DescriptorPool; FindFileContainingSymbol also knows methods."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        """The file defining `symbol`; methods resolve to their service's file.

        Raises:
            KeyError: when no message, enum, service or method has that name.
        """
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve grpc.reflection.v1alpha for `service_names` (plus reflection itself)."""
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME], server, pool=MethodAwarePool()
    )
