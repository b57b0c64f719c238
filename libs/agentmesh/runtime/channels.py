"""Outgoing gRPC channels that pass on the caller's deadline, request id,
trace id and bearer token.

Every call a daemon makes while serving an RPC gets
`timeout = min(own timeout, time left on the incoming RPC)`, so a downstream
agent never works past the moment the original caller gives up.

Replicas: a target names one address (`host:port`), several
(`host1:port1,host2:port2`) or a DNS name (`dns:///name:port`, e.g. a
Kubernetes headless Service, re-resolved by gRPC). Several addresses or a DNS
name get gRPC's `round_robin` policy with client-side health checking
(grpc.health.v1 Watch on the overall service ""), so calls spread over the
replicas and a replica that died (its connection dropped) or reports
NOT_SERVING (draining, or a dependency down) gets no new calls; no proxy is
needed. One address keeps gRPC's default (pick_first), as before.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from agentmesh.runtime import tracing
from agentmesh.runtime.context import remaining_s, request_id_var, trace_id_var

_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


#: Service config of a channel to several replicas: round_robin over the
#: ready ones, each watched with grpc.health.v1 (a server without the health
#: service counts as healthy, gRFC A17).
BALANCED_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def _split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); raises ValueError."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def balanced_target(target: str) -> tuple[str, str] | None:
    """The gRPC target and authority of a target naming several replicas.

    Args:
        target: `host:port`, `host1:port1,host2:port2,...` or a URI such as
            `dns:///name:port` / `ipv4:a:p,b:p`.

    Returns:
        None for one address (connect to it as given); `(target, authority)`
        otherwise: a DNS URI is passed on as it is (authority ""), and a list
        becomes an `ipv4:`/`ipv6:` address list, host names resolved now (all
        their addresses of one family), with the first host as the authority
        (the TLS name), so every replica must present a certificate for it.

    Raises:
        ValueError: a malformed address, a name that does not resolve, or a
            list mixing IPv4 and IPv6 (use a DNS name for that).
    """
    if target.startswith("dns:"):
        return target, ""
    if target.startswith(("ipv4:", "ipv6:")):
        return (target, "") if "," in target else None
    if "," not in target or "://" in target or target.startswith("unix:"):
        return None
    parts = [_split_host_port(a) for a in target.split(",") if a.strip()]
    if len(parts) < 2:
        return None
    v4: list[str] = []
    v6: list[str] = []
    for host, port in parts:
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise ValueError(f"cannot resolve {host!r} in target {target!r}: {e}") from e
            ips = [ipaddress.ip_address(i[4][0]) for i in infos]
            # a name with both families (localhost) counts as its IPv4 addresses
            if any(ip.version == 4 for ip in ips):
                ips = [ip for ip in ips if ip.version == 4]
        for ip in dict.fromkeys(ips):
            (v4 if ip.version == 4 else v6).append(
                f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"
            )
    if v4 and v6:
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses; use a DNS name")
    host0, port0 = parts[0]
    authority = f"[{host0}]:{port0}" if ":" in host0 else f"{host0}:{port0}"
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6)), authority


class _Propagate:
    """What every outgoing call gets: the bearer token, the request and trace
    ids of the RPC being served, and its remaining deadline as the timeout."""

    __slots__ = ("_auth",)

    def __init__(self, token: str) -> None:
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()

    def metadata(self, given: Any) -> tuple[tuple[str, Any], ...]:
        """The caller's metadata plus what it does not set itself, in that order."""
        md = list(given or ())
        keys = {k for k, _ in md}
        md.extend(kv for kv in self._auth if kv[0] not in keys)
        if (rid := request_id_var.get()) and "x-request-id" not in keys:
            md.append(("x-request-id", rid))
        if (tid := trace_id_var.get()) and "x-trace-id" not in keys:
            md.append(("x-trace-id", tid))
        return tuple(md)


class _PropagatingCallable:
    """A multi-callable that adds the propagated metadata and deadline at call
    time (so the contextvars of the calling task are the ones read).

    While tracing is on, each call also gets a CLIENT span (ended when the
    call finishes, with its status) whose W3C context goes out as
    `traceparent` / `tracestate` / `baggage`; under a CLIENT span the caller
    made itself (AgentClient.call) that one is propagated instead.
    """

    __slots__ = ("_inner", "_method", "_propagate")

    def __init__(self, inner: Any, propagate: _Propagate, method: str = "") -> None:
        self._inner = inner
        self._propagate = propagate
        self._method = method

    def __call__(
        self, request: Any = None, *, timeout: float | None = None, metadata: Any = None, **kw: Any
    ) -> Any:
        args = () if request is None else (request,)
        md = self._propagate.metadata(metadata)
        if not tracing.enabled() or any(k == "traceparent" for k, _ in md):
            return self._inner(*args, timeout=remaining_s(timeout), metadata=md, **kw)
        if tracing.client_span_open():
            md += tuple(tracing.outgoing_metadata(None))
            return self._inner(*args, timeout=remaining_s(timeout), metadata=md, **kw)
        if (unsampled := tracing.unsampled_metadata()) is not None:
            # An unsampled trace: its traceparent goes on, no span is made.
            return self._inner(*args, timeout=remaining_s(timeout), metadata=md + unsampled, **kw)
        span = tracing.start_client_span(self._method)
        md += tuple(tracing.outgoing_metadata(span))
        try:
            call = self._inner(*args, timeout=remaining_s(timeout), metadata=md, **kw)
        except BaseException:
            span.end()
            raise
        tracing.end_when_done(span, call)
        return call


class _PropagatingChannel(grpc.aio.Channel):
    """An aio channel whose calls carry the caller's deadline, ids and token.

    It wraps the multi-callables rather than using a grpc.aio client
    interceptor, which wraps every call in an InterceptedCall with an extra
    task and several extra futures: measured on Router.Invoke, that cost
    more than everything else the router adds to the agent call.
    """

    def __init__(self, inner: grpc.aio.Channel, token: str) -> None:
        self._inner = inner
        self._propagate = _Propagate(token)

    async def __aenter__(self) -> _PropagatingChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self._inner.close(None)

    async def close(self, grace: float | None = None) -> None:
        """See grpc.aio.Channel.close."""
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """See grpc.aio.Channel.get_state."""
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """See grpc.aio.Channel.wait_for_state_change."""
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """See grpc.aio.Channel.channel_ready."""
        await self._inner.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        """See grpc.aio.Channel.unary_unary; the call propagates context."""
        return _PropagatingCallable(
            self._inner.unary_unary(method, *args, **kw), self._propagate, method
        )

    def unary_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        """See grpc.aio.Channel.unary_stream; the call propagates context."""
        return _PropagatingCallable(
            self._inner.unary_stream(method, *args, **kw), self._propagate, method
        )

    def stream_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        """See grpc.aio.Channel.stream_unary; the call propagates context."""
        return _PropagatingCallable(
            self._inner.stream_unary(method, *args, **kw), self._propagate, method
        )

    def stream_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        """See grpc.aio.Channel.stream_stream; the call propagates context."""
        return _PropagatingCallable(
            self._inner.stream_stream(method, *args, **kw), self._propagate, method
        )


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
    """An aio channel to `target`: `host:port`, several replicas
    (`host1:port1,host2:port2`) or a DNS name (`dns:///name:port`); the
    latter two balance calls round robin over healthy replicas (module doc).

    Args:
        token: bearer token sent as `authorization` metadata.
        tls_ca_file: PEM CA; set turns TLS on.
        client_cert_file / client_key_file: PEM client identity for mTLS.
        options: extra channel options.
        propagate: add the deadline, ids and token to every call. Turn off only for
            baselines in benchmarks.

    Raises:
        FileNotFoundError: when a PEM file is missing.
        ValueError: a malformed or unresolvable replica list (`balanced_target`).
    """
    opts = [*_DEFAULT_OPTIONS, *options]
    if (balanced := balanced_target(target)) is not None:
        target, authority = balanced
        opts.append(("grpc.service_config", BALANCED_SERVICE_CONFIG))
        if authority:
            opts.append(("grpc.default_authority", authority))
    if tls_ca_file:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(tls_ca_file).read_bytes(),
            private_key=Path(client_key_file).read_bytes() if client_key_file else None,
            certificate_chain=Path(client_cert_file).read_bytes() if client_cert_file else None,
        )
        ch = grpc.aio.secure_channel(target, creds, options=opts)
    else:
        ch = grpc.aio.insecure_channel(target, options=opts)
    return _PropagatingChannel(ch, token) if propagate else ch
