"""Channels, raw stubs and call behaviour shared by every Client method.

Every unary call gets a deadline (`timeout_s`, default `default_timeout_s`).
A failed call is retried with jittered exponential backoff inside that
deadline (tenacity) when `agentmesh.runtime.retry.is_retryable` allows it for
the RPC's contract-declared `idempotency_level` (a keyed request, e.g. a
StartSaga with `idempotency_key`, counts as IDEMPOTENT). Every
`grpc.aio.AioRpcError` is raised as the matching
`agentmesh.runtime.errors.AgentMeshError`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from agentmesh.agent.structs import dict_to_struct
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.config import DEFAULT_PORTS
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.runtime.retry import IdempotencyLevel, idempotency_of, is_retryable_error

M = TypeVar("M", bound=Message)
T = TypeVar("T")

#: What a client-streaming method accepts: an async or a plain iterable of requests.
Requests = AsyncIterable[T] | Iterable[T]

#: Client attribute → (daemon name, generated module, stub class).
_STUBS: dict[str, tuple[str, str, str]] = {
    "registry": ("registry", "agentmesh.registry.v1.registry_pb2_grpc", "RegistryServiceStub"),
    "coordination": (
        "registry", "agentmesh.registry.v1.coordination_pb2_grpc", "CoordinationServiceStub"
    ),
    "router": ("router", "agentmesh.router.v1.router_pb2_grpc", "RouterServiceStub"),
    "safety": ("router", "agentmesh.router.v1.safety_pb2_grpc", "SafetyServiceStub"),
    "bus": ("bus", "agentmesh.bus.v1.bus_pb2_grpc", "BusServiceStub"),
    "saga": ("saga", "agentmesh.saga.v1.saga_pb2_grpc", "SagaServiceStub"),
    "swarm": ("swarm", "agentmesh.swarm.v1.swarm_pb2_grpc", "SwarmServiceStub"),
    "task": ("saga", "agentmesh.task.v1.task_pb2_grpc", "TaskServiceStub"),
}

DAEMONS = ("bus", "router", "registry", "saga", "swarm")


def default_target(daemon: str) -> str:
    """`AGENTMESH_<DAEMON>_TARGET`, else `127.0.0.1:<default port>` from DESIGN.md."""
    env = os.environ.get(f"AGENTMESH_{daemon.upper()}_TARGET")
    return env or f"127.0.0.1:{DEFAULT_PORTS[daemon][0]}"


def _build(cls: type[M], request: M | None, fields: Mapping[str, Any]) -> M:
    """The request: `request` as given, or `cls(**fields)` with friendly conversions.

    Conversions: a Mapping for a Struct field becomes a Struct; a number for a
    Duration field is seconds; a datetime for a Timestamp field; a Mapping for
    any other message field is parsed with json_format (enum names and "1.5s"
    durations work); a string for an enum field is the value's name.

    Raises:
        TypeError: when both `request` and fields are given, or a field is unknown.
        ValueError: when a value cannot be converted (json_format's message).
    """
    if request is not None:
        if fields:
            raise TypeError("pass either a request message or keyword fields, not both")
        return request
    desc = cls.DESCRIPTOR
    kwargs: dict[str, Any] = {}
    for name, value in fields.items():
        fd = desc.fields_by_name.get(name)
        if fd is None:
            raise TypeError(
                f"{desc.name} has no field {name!r}; fields: {sorted(desc.fields_by_name)}"
            )
        kwargs[name] = _convert(fd, value)
    return cls(**kwargs)


def _convert(fd: Any, value: Any) -> Any:
    mt = fd.message_type
    if mt is not None and not fd.is_repeated:
        if isinstance(value, Message):
            return value
        if mt.full_name == "google.protobuf.Struct" and isinstance(value, Mapping):
            return dict_to_struct(value)
        if mt.full_name == "google.protobuf.Duration" and isinstance(value, (int, float)):
            d = duration_pb2.Duration()
            d.FromNanoseconds(int(value * 1e9))
            return d
        if mt.full_name == "google.protobuf.Timestamp" and hasattr(value, "timestamp"):
            t = timestamp_pb2.Timestamp()
            t.FromDatetime(value)
            return t
        if isinstance(value, Mapping):
            return json_format.ParseDict(dict(value), mt._concrete_class())
    if fd.enum_type is not None and isinstance(value, str):
        return fd.enum_type.values_by_name[value].number
    if (
        fd.enum_type is not None
        and fd.is_repeated
        and isinstance(value, (list, tuple))
    ):
        return [fd.enum_type.values_by_name[v].number if isinstance(v, str) else v for v in value]
    if mt is not None and fd.is_repeated and isinstance(value, (list, tuple)):
        if mt.GetOptions().map_entry:
            return value
        return [
            json_format.ParseDict(dict(v), mt._concrete_class()) if isinstance(v, Mapping) else v
            for v in value
        ]
    return value


class ClientBase:
    """Targets, channels and the call machinery.

    Args:
        registry / router / bus / saga / swarm: each daemon's `host:port`,
            its replicas (`host1:port1,host2:port2`) or a DNS name
            (`dns:///name:port`); replicas are balanced round robin over the
            healthy ones (agentmesh.runtime.channels). None reads
            `AGENTMESH_<DAEMON>_TARGET`, else the default port.
        token: bearer token sent on every call (`AGENTMESH_AUTH_TOKEN`).
        tls_ca_file: PEM CA; set turns TLS on (`AGENTMESH_TLS_CA_FILE`).
        client_cert_file / client_key_file: PEM client identity for mTLS.
        default_timeout_s: deadline of unary calls without `timeout_s`, seconds.
        retry_attempts: attempts of a retryable call, including the first.
    """

    def __init__(
        self,
        *,
        registry: str | None = None,
        router: str | None = None,
        bus: str | None = None,
        saga: str | None = None,
        swarm: str | None = None,
        token: str | None = None,
        tls_ca_file: str | None = None,
        client_cert_file: str = "",
        client_key_file: str = "",
        default_timeout_s: float = 10.0,
        retry_attempts: int = 4,
    ) -> None:
        given = {"registry": registry, "router": router, "bus": bus, "saga": saga, "swarm": swarm}
        self.targets: dict[str, str] = {
            d: (given[d] or default_target(d)) for d in DAEMONS
        }
        self.token = os.environ.get("AGENTMESH_AUTH_TOKEN", "") if token is None else token
        self.tls_ca_file = (
            os.environ.get("AGENTMESH_TLS_CA_FILE", "") if tls_ca_file is None else tls_ca_file
        )
        self.client_cert_file = client_cert_file
        self.client_key_file = client_key_file
        self.default_timeout_s = default_timeout_s
        self.retry_attempts = max(1, retry_attempts)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._services: dict[str, Any] = {}

    # ---- channels and raw stubs -------------------------------------------
    def channel(self, target: str) -> grpc.aio.Channel:
        """The shared channel to `target`, created on first use."""
        ch = self._channels.get(target)
        if ch is None:
            ch = create_channel(
                target,
                token=self.token,
                tls_ca_file=self.tls_ca_file,
                client_cert_file=self.client_cert_file,
                client_key_file=self.client_key_file,
            )
            self._channels[target] = ch
        return ch

    def _stub(self, attr: str) -> Any:
        """The raw stub of `attr` (a `_STUBS` key) on its daemon's shared channel."""
        stub = self._stubs.get(attr)
        if stub is None:
            import importlib

            daemon, module, cls = _STUBS[attr]
            stub = getattr(importlib.import_module(module), cls)(
                self.channel(self.targets[daemon])
            )
            self._stubs[attr] = stub
        return stub

    def _service(self, attr: str, cls: Callable[[ClientBase], T]) -> T:
        """The sub-client `cls` of `attr` (`client.registry`, ...), made once."""
        sub: T | None = self._services.get(attr)
        if sub is None:
            sub = self._services[attr] = cls(self)
        return sub

    async def close(self) -> None:
        """Close every channel."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        for ch in channels:
            await ch.close()

    async def __aenter__(self) -> ClientBase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- health -------------------------------------------------------------
    async def health(self, daemon: str, *, service: str = "", timeout_s: float = 2.0) -> str:
        """`grpc.health.v1` status of a daemon: "SERVING", "NOT_SERVING", ... or
        "UNREACHABLE" when the call fails (for example nothing listens)."""
        stub = health_pb2_grpc.HealthStub(self.channel(self.targets[daemon]))
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            return "UNREACHABLE" if e.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
            ) else e.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    # ---- call machinery -------------------------------------------------------
    def _metadata(self, metadata: Sequence[tuple[str, str]]) -> grpc.aio.Metadata | None:
        return grpc.aio.Metadata(*metadata) if metadata else None

    async def _unary(
        self,
        method: Any,
        request: Message,
        *,
        timeout_s: float | None,
        metadata: Sequence[tuple[str, str]],
        rpc: str,
    ) -> Any:
        """One unary call of `rpc` ("/pkg.Service/Method"), retried as its contract allows."""
        budget_s = self.default_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s if budget_s and budget_s > 0 else None
        level: IdempotencyLevel = idempotency_of(rpc, request=request)
        stop: stop_base = stop_after_attempt(self.retry_attempts)
        if deadline is not None:
            stop = stop | stop_after_delay(budget_s)
        md = self._metadata(metadata)
        try:
            async for attempt in AsyncRetrying(
                stop=stop,
                wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
                retry=retry_if_exception(
                    lambda e: is_retryable_error(e, idempotency=level)
                ),
                reraise=True,
            ):
                with attempt:
                    left = None if deadline is None else max(0.001, deadline - time.monotonic())
                    return await method(request, timeout=left, metadata=md)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _server_stream(
        self,
        method: Any,
        request: Message,
        *,
        timeout_s: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[Any]:
        call = method(request, timeout=timeout_s, metadata=self._metadata(metadata))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()

    async def _stream(
        self,
        method: Any,
        requests: AsyncIterable[Any] | Iterable[Any],
        *,
        timeout_s: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[Any]:
        call = method(requests, timeout=timeout_s, metadata=self._metadata(metadata))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()


__all__ = ["DAEMONS", "ClientBase", "Requests", "default_target"]
