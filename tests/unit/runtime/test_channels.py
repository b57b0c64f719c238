"""Outgoing channels pass on the caller's deadline, ids and token (without a
client interceptor), and RuntimeServer wraps generic handlers as well as
registered ones. Real grpc.aio servers on loopback, raw-bytes methods."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agentmesh.runtime import metrics
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.context import deadline_var, request_id_var, trace_id_var
from agentmesh.runtime.errors import NotFound
from agentmesh.runtime.interceptors import RuntimeServer

SERVICE = "agentmesh.test.v1.Probe"


class Seen:
    """What the server saw of the last call: metadata and time remaining."""

    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []
        self.remaining_s: float | None = None
        self.request_id = ""

    def record(self, context: Any) -> None:
        self.metadata = [(k, v) for k, v in context.invocation_metadata() or ()]
        self.remaining_s = context.time_remaining()
        self.request_id = request_id_var.get()

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.metadata if k == key]


def probe_handler(seen: Seen) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: Any) -> bytes:
        seen.record(context)
        if request == b"missing":
            raise NotFound("no such thing")
        return request

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        seen.record(context)
        async for r in requests:
            yield r

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )


@pytest.fixture
async def plain() -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([probe_handler(seen)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        await server.stop(0)


async def test_ids_token_and_deadline_are_added_to_unary_calls(plain: Any) -> None:
    target, seen = plain
    request_id_var.set("req-1")
    trace_id_var.set("trace-1")
    deadline_var.set(time.monotonic() + 2.0)
    async with create_channel(target, token="s3cr3t") as ch:
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        assert await call(b"hi", timeout=30) == b"hi"
    assert seen.values("authorization") == ["Bearer s3cr3t"]
    assert seen.values("x-request-id") == ["req-1"]
    assert seen.values("x-trace-id") == ["trace-1"]
    # the incoming RPC's 2 s left win over the call's own 30 s
    assert seen.remaining_s is not None and 0 < seen.remaining_s < 2.5


async def test_callers_own_metadata_and_shorter_timeout_win(plain: Any) -> None:
    target, seen = plain
    request_id_var.set("req-ctx")
    trace_id_var.set("")
    deadline_var.set(time.monotonic() + 60.0)
    async with create_channel(target, token="s3cr3t") as ch:
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        await call(
            b"x",
            timeout=1.0,
            metadata=(("x-request-id", "req-own"), ("authorization", "Bearer other")),
        )
    assert seen.values("x-request-id") == ["req-own"]
    assert seen.values("authorization") == ["Bearer other"]
    assert seen.values("x-trace-id") == []
    # grpc rounds deadlines up a little; what matters is 1 s, not 60 s
    assert seen.remaining_s is not None and 0 < seen.remaining_s < 1.5


async def test_streams_propagate_and_no_deadline_means_none(plain: Any) -> None:
    target, seen = plain
    request_id_var.set("req-s")
    deadline_var.set(None)
    async with create_channel(target) as ch:
        call = ch.stream_stream(f"/{SERVICE}/Stream")()
        for part in (b"a", b"b"):
            await call.write(part)
        await call.done_writing()
        assert [r async for r in call] == [b"a", b"b"]
    assert seen.values("x-request-id") == ["req-s"]
    assert seen.values("authorization") == []
    assert seen.remaining_s is None


async def test_propagate_off_adds_nothing(plain: Any) -> None:
    target, seen = plain
    request_id_var.set("req-off")
    async with create_channel(target, token="s3cr3t", propagate=False) as ch:
        await ch.unary_unary(f"/{SERVICE}/Unary")(b"x")
    assert seen.values("x-request-id") == [] and seen.values("authorization") == []


def _handled(code: str) -> float:
    value = metrics.GRPC_HANDLED.labels(SERVICE, "Unary", code)._value.get()
    return float(value)


async def test_runtime_server_wraps_generic_handlers() -> None:
    seen = Seen()
    server = RuntimeServer(None)
    server.add_generic_rpc_handlers([probe_handler(seen)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ok0, nf0 = _handled("OK"), _handled("NOT_FOUND")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(f"/{SERVICE}/Unary")
            assert await call(b"hi", metadata=(("x-request-id", "rid-9"),)) == b"hi"
            assert seen.request_id == "rid-9"  # the wrapper set the contextvar
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"missing")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "no such thing"
            assert len(seen.request_id) == 32  # a new id when the caller sent none
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await ch.unary_unary(f"/{SERVICE}/Nope")(b"x")
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)
    assert _handled("OK") == ok0 + 1
    assert _handled("NOT_FOUND") == nf0 + 1


async def test_an_unsampled_trace_goes_on_without_a_client_span(plain: Any) -> None:
    from agentmesh.runtime import tracing

    target, seen = plain
    tracing.shutdown_tracing()
    assert tracing.configure_tracing(
        service_name="t", otlp_endpoint="127.0.0.1:9", sample_ratio=0.0
    )
    try:
        stored = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ctx = tracing.unsampled_context(stored)
        assert ctx is not None
        token = tracing.otel_context.attach(ctx)
        try:
            async with create_channel(target) as ch:
                await ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
        finally:
            tracing.otel_context.detach(token)
        assert seen.values("traceparent") == [stored]
        # Outside it the call is a root, unsampled at ratio 0, in a new trace.
        async with create_channel(target) as ch:
            await ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
        (tp,) = seen.values("traceparent")
        assert tp.split("-")[1] != stored.split("-")[1] and not int(tp[-2:], 16) & 1
    finally:
        tracing.shutdown_tracing()
