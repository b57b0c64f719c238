"""Outgoing gRPC channels that pass on the caller's deadline, request id,
trace id and bearer token.

Every call a daemon makes while serving an RPC gets
`timeout = min(own timeout, time left on the incoming RPC)`, so a downstream
agent never works past the moment the original caller gives up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from agentmesh.runtime.context import remaining_s, request_id_var, trace_id_var

_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


class _Propagate(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = list(d.metadata or ())
        keys = {k for k, _ in md}
        md.extend(kv for kv in self._auth if kv[0] not in keys)
        if (rid := request_id_var.get()) and "x-request-id" not in keys:
            md.append(("x-request-id", rid))
        if (tid := trace_id_var.get()) and "x-trace-id" not in keys:
            md.append(("x-trace-id", tid))
        timeout = remaining_s(d.timeout)
        return grpc.aio.ClientCallDetails(
            d.method, timeout, grpc.aio.Metadata(*md), d.credentials, d.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request_iterator)


def create_channel(
    target: str,
    *,
    token: str = "",
    tls_ca_file: str = "",
    client_cert_file: str = "",
    client_key_file: str = "",
    options: Sequence[tuple[str, Any]] = (),
    propagate: bool = True,
) -> grpc.aio.Channel:
    """An aio channel to `target` (`host:port`).

    Args:
        token: bearer token sent as `authorization` metadata.
        tls_ca_file: PEM CA; set turns TLS on.
        client_cert_file / client_key_file: PEM client identity for mTLS.
        options: extra channel options.
        propagate: add the deadline/id/token interceptor. Turn off only for
            baselines in benchmarks.

    Raises:
        FileNotFoundError: when a PEM file is missing.
    """
    opts = [*_DEFAULT_OPTIONS, *options]
    interceptors = [_Propagate(token)] if propagate else None
    if tls_ca_file:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(tls_ca_file).read_bytes(),
            private_key=Path(client_key_file).read_bytes() if client_key_file else None,
            certificate_chain=Path(client_cert_file).read_bytes() if client_cert_file else None,
        )
        return grpc.aio.secure_channel(target, creds, options=opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
