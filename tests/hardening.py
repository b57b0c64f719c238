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
