"""Defect 1 of issue 20: a request body that is not a protobuf of the
method's type is INVALID_ARGUMENT (never grpc's UNKNOWN), logged as one
rate-limited WARNING with no traceback, on unary, server-streaming and
bidirectional methods of a real daemon."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.hardening import GARBAGE, errors_in_log, log_docs, log_size, raw_stream, raw_unary
from tests.integration.hardening.conftest import StartDaemon

pytestmark = pytest.mark.integration

REG = "/agentmesh.registry.v1.RegistryService/"


async def test_garbage_bodies_are_invalid_argument_with_one_warning(
    start_daemon: StartDaemon,
) -> None:
    reg = start_daemon("registry")
    offset = log_size(reg)
    started = time.monotonic()
    async with grpc.aio.insecure_channel(reg.target) as ch:
        for _ in range(20):
            code = await raw_unary(ch, REG + "GetAgent", GARBAGE)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            await raw_stream(ch, REG + "WatchAgents", GARBAGE, client_streaming=False)
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            await raw_stream(ch, REG + "HeartbeatStream", GARBAGE, client_streaming=True)
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        # The daemon still answers well-formed calls.
        assert await raw_unary(ch, REG + "ListAgents", b"") == grpc.StatusCode.OK
    elapsed_s = time.monotonic() - started
    assert errors_in_log(reg, offset=offset) == []
    warnings = [d for d in log_docs(reg, offset=offset) if d.get("msg") == "undecodable request"]
    get_agent = [d for d in warnings if d["method"].endswith("/GetAgent")]
    # 20 bad calls, at most one line per method (and code) per second.
    assert 1 <= len(get_agent) <= 1 + int(elapsed_s)
    assert {d["method"].rsplit("/", 1)[1] for d in warnings} == {
        "GetAgent", "WatchAgents", "HeartbeatStream"
    }
    assert all("exc" not in d and len(d["reason"]) < 400 for d in warnings)
