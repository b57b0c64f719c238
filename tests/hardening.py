"""Helpers for the hardening tests (tests/integration/hardening): raw-bytes
calls to any method, log-line inspection and process RSS of real daemons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import psutil

from tests.procs import DaemonProcess

#: A length-delimited field 1 whose length runs past the end: no message type decodes it.
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f\x01"


def log_docs(proc: DaemonProcess, *, offset: int = 0) -> list[dict[str, Any]]:
    """The JSON log lines the process wrote after byte `offset`."""
    docs: list[dict[str, Any]] = []
    with Path(proc.log_path).open("rb") as f:
        f.seek(offset)
        for line in f:
            if line.startswith(b"{"):
                try:
                    docs.append(json.loads(line))
                except ValueError:
                    pass
    return docs


def log_size(proc: DaemonProcess) -> int:
    """Bytes in the process's log so far (an offset for `log_docs`)."""
    return Path(proc.log_path).stat().st_size


def errors_in_log(proc: DaemonProcess, *, offset: int = 0) -> list[dict[str, Any]]:
    """Log lines at ERROR or above since `offset`."""
    return [d for d in log_docs(proc, offset=offset) if d.get("level") in ("ERROR", "CRITICAL")]


def rss_mb(proc: DaemonProcess) -> float:
    """Resident set size of the process, in MiB."""
    return float(psutil.Process(proc.pid).memory_info().rss) / (1024 * 1024)


async def raw_unary(
    channel: grpc.aio.Channel, method: str, body: bytes, *, timeout_s: float = 5.0
) -> grpc.StatusCode:
    """Send `body` as the request bytes of unary `method`; the status code."""
    call = channel.unary_unary(method)
    try:
        await call(body, timeout=timeout_s)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def raw_stream(
    channel: grpc.aio.Channel,
    method: str,
    body: bytes,
    *,
    client_streaming: bool,
    timeout_s: float = 5.0,
) -> grpc.StatusCode:
    """Send `body` as the (first) request message of streaming `method` and
    read the response stream to its end; the status code."""
    try:
        if client_streaming:
            call: Any = channel.stream_stream(method)(iter([body]), timeout=timeout_s)
        else:
            call = channel.unary_stream(method)(body, timeout=timeout_s)
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def handled_counts(metrics_text: str, method: str) -> dict[str, float]:
    """grpc_server_handled_total of `method` (short name) by code, from a scrape."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("grpc_server_handled_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        if f'grpc_method="{method}"' not in labels:
            continue
        code = labels.split('grpc_code="', 1)[1].split('"', 1)[0]
        out[code] = out.get(code, 0.0) + float(value)
    return out


def field_violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """field → description from the google.rpc.BadRequest of a rich error."""
    from google.rpc import error_details_pb2, status_pb2

    out: dict[str, str] = {}
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for d in status.details:
                br = error_details_pb2.BadRequest()
                if d.Unpack(br):
                    out.update({v.field: v.description for v in br.field_violations})
    return out


#: The generated modules whose services the five daemons serve.
SERVICE_MODULES = {
    "bus": ("agentmesh.bus.v1.bus_pb2",),
    "router": ("agentmesh.router.v1.router_pb2", "agentmesh.router.v1.safety_pb2"),
    "registry": ("agentmesh.registry.v1.registry_pb2", "agentmesh.registry.v1.coordination_pb2"),
    "saga": ("agentmesh.saga.v1.saga_pb2",),
    "swarm": ("agentmesh.swarm.v1.swarm_pb2",),
}


def daemon_methods(name: str) -> list[Any]:
    """The MethodDescriptors of every service daemon `name` serves, from the
    generated descriptors (services added to those files are picked up)."""
    import importlib

    out: list[Any] = []
    for mod_name in SERVICE_MODULES[name]:
        mod = importlib.import_module(mod_name)
        for svc in mod.DESCRIPTOR.services_by_name.values():
            out.extend(svc.methods)
    return out


async def call_method(
    channel: grpc.aio.Channel, method: Any, body: bytes, *, timeout_s: float = 5.0
) -> grpc.aio.AioRpcError | None:
    """Send `body` as the request (the first request message of a client
    stream) of MethodDescriptor `method`; read the responses until the end,
    or for server streams until `timeout_s` passes (then the call is
    cancelled and None returned). The error, or None."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            call: Any = channel.stream_stream(path)(iter([body]), timeout=timeout_s)
        elif method.server_streaming:
            call = channel.unary_stream(path)(body, timeout=timeout_s)
        else:
            await channel.unary_unary(path)(body, timeout=timeout_s)
            return None
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and (
            method.server_streaming or method.client_streaming
        ):
            return None  # a stream that was still open when we stopped reading
        return err
    return None


def field_paths(
    desc: Any, want: Any, depth: int = 0, seen: tuple[str, ...] = ()
) -> list[list[Any]]:
    """Every chain of fields from message descriptor `desc` to a field for
    which `want(field)` is true (maps and google.* types not entered), at
    most 4 messages deep."""
    out: list[list[Any]] = []
    for f in desc.fields:
        if want(f):
            out.append([f])
        elif (
            f.message_type is not None
            and depth < 4
            and not f.message_type.full_name.startswith("google.")
            and not f.message_type.GetOptions().map_entry
            and f.message_type.full_name not in seen
        ):
            for rest in field_paths(f.message_type, want, depth + 1, (*seen, desc.full_name)):
                out.append([f, *rest])
    return out


def message_with(
    desc: Any, path: list[Any], set_value: Any, *, base: Any = None
) -> tuple[bytes, str]:
    """A request of type `desc` (a copy of `base` when given) with the field
    at `path` set by `set_value(parent, field)` (which returns the field's
    path element, e.g. "timeout" or "states[0]"); the bytes and the dotted
    field path."""
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(desc)()
    if base is not None:
        msg.CopyFrom(base)
    cur: Any = msg
    names: list[str] = []
    for f in path[:-1]:
        if f.is_repeated:
            items = getattr(cur, f.name)
            cur = items[0] if len(items) else items.add()
            names.append(f"{f.name}[0]")
        else:
            cur = getattr(cur, f.name)
            names.append(f.name)
    if path[-1].is_repeated:
        cur.ClearField(path[-1].name)  # the mutation is the field's first item
    names.append(set_value(cur, path[-1]))
    return msg.SerializeToString(), ".".join(names)
