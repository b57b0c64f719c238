"""grpc.health.v1 checks of a daemon under test."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.waiting import eventually


async def health_status(
    where: str | grpc.aio.Channel, service: str = "", *, rpc_timeout_s: float = 5.0
) -> int:
    """The `HealthCheckResponse.ServingStatus` of `service` ("" = the whole server).

    Args:
        where: a `host:port` (checked over a plaintext channel opened for the
            call) or an open channel (e.g. one with TLS or a token).

    Raises:
        grpc.aio.AioRpcError: when the check itself fails.
    """
    req = health_pb2.HealthCheckRequest(service=service)
    if isinstance(where, str):
        async with grpc.aio.insecure_channel(where) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(req, timeout=rpc_timeout_s)
    else:
        resp = await health_pb2_grpc.HealthStub(where).Check(req, timeout=rpc_timeout_s)
    return int(resp.status)


async def wait_health(
    where: str | grpc.aio.Channel,
    want: int,
    *,
    timeout_s: float = 20.0,
    every_s: float = 0.2,
    rpc_errors_ok: bool = True,
) -> None:
    """Poll the server's health until it reports `want`.

    Args:
        rpc_errors_ok: a failing check counts as "not yet" (status -1); False
            re-raises it at once.

    Raises:
        AssertionError: `health stayed <last>, wanted <want>` after `timeout_s`.
    """
    last = -1

    async def reached() -> bool:
        nonlocal last
        try:
            last = await health_status(where)
        except grpc.aio.AioRpcError:
            if not rpc_errors_ok:
                raise
            last = -1
        return last == want

    try:
        await eventually(reached, timeout_s=timeout_s, every_s=every_s)
    except AssertionError:
        raise AssertionError(f"{where} health stayed {last}, wanted {want}") from None
