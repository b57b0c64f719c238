"""Defect 4 of issue 20: Durations and integers out of range. Every
Duration field reachable from every request of the five daemons answers a
huge, a negative and an unnormalised value with INVALID_ARGUMENT naming the
field and the allowed range; every integer field answers zero, -1 and its
type's extremes with anything but INTERNAL/UNKNOWN, logging nothing at ERROR
(RouterService.Invoke's retry policy and ScatterGather's timeout were the
reported OverflowErrors)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from agentmesh.runtime.request_checks import MAX_DURATION_S
from tests.hardening import (
    call_method,
    daemon_methods,
    errors_in_log,
    field_paths,
    field_violations,
    log_size,
    message_with,
)
from tests.hardening_seeds import SEEDS, seed_for
from tests.health import health_status
from tests.integration.hardening.conftest import DAEMONS
from tests.procs import DaemonProcess

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

C = FieldDescriptor
#: Integer C++ types and their extremes.
INT_RANGES = {
    C.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    C.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    C.CPPTYPE_UINT32: (0, 2**32 - 1),
    C.CPPTYPE_UINT64: (0, 2**64 - 1),
}
BAD_DURATIONS = [(10**11, 0), (MAX_DURATION_S + 1, 0), (-1, 0), (0, -5), (1, 2_000_000_000)]


def is_duration(f: Any) -> bool:
    return f.message_type is not None and f.message_type.full_name == "google.protobuf.Duration"


def set_duration(seconds: int, nanos: int) -> Any:
    def put(parent: Any, f: Any) -> str:
        d = getattr(parent, f.name).add() if f.is_repeated else getattr(parent, f.name)
        d.seconds, d.nanos = seconds, nanos
        return f"{f.name}[0]" if f.is_repeated else str(f.name)

    return put


def set_int(value: int) -> Any:
    def put(parent: Any, f: Any) -> str:
        if f.is_repeated:
            getattr(parent, f.name).append(value)
            return f"{f.name}[0]"
        setattr(parent, f.name, value)
        return str(f.name)

    return put


async def _assert_serving(proc: DaemonProcess) -> None:
    from grpc_health.v1 import health_pb2

    assert await health_status(proc.target, "") == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("name", DAEMONS)
async def test_durations_out_of_range_are_invalid_argument(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    proc = mesh[name]
    offset = log_size(proc)
    checked = 0
    async with grpc.aio.insecure_channel(proc.target) as ch:
        for method in daemon_methods(name):
            for path in field_paths(method.input_type, is_duration):
                for seconds, nanos in BAD_DURATIONS:
                    body, field = message_with(
                        method.input_type, path, set_duration(seconds, nanos)
                    )
                    err = await call_method(ch, method, body, timeout_s=3.0)
                    where = f"{method.full_name} {field}={seconds}s{nanos}ns"
                    assert err is not None, where
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, err)
                    bad = field_violations(err)
                    assert field in bad, (where, bad)
                    if seconds > MAX_DURATION_S:
                        assert f"{MAX_DURATION_S}s" in bad[field], bad
                    checked += 1
    if name != "registry" or checked:
        assert checked > 0
    await _assert_serving(proc)
    assert errors_in_log(proc, offset=offset) == []


@pytest.mark.parametrize("name", DAEMONS)
async def test_seeds_are_valid_requests(mesh: dict[str, DaemonProcess], name: str) -> None:
    """The seeds the integer test mutates pass validation (else it tests nothing)."""
    async with grpc.aio.insecure_channel(mesh[name].target) as ch:
        for method in daemon_methods(name):
            if method.full_name not in SEEDS:
                continue
            err = await call_method(ch, method, seed_for(method).SerializeToString(), timeout_s=2)
            code = err.code() if err is not None else grpc.StatusCode.OK
            assert code not in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN,
            ), (method.full_name, err)


@pytest.mark.parametrize("name", DAEMONS)
async def test_integers_at_their_extremes_are_never_internal(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    proc = mesh[name]
    offset = log_size(proc)
    async with grpc.aio.insecure_channel(proc.target) as ch:
        for method in daemon_methods(name):
            for path in field_paths(method.input_type, lambda f: f.cpp_type in INT_RANGES):
                lo, hi = INT_RANGES[path[-1].cpp_type]
                for value in sorted({0, max(lo, -1), lo, hi}):
                    body, field = message_with(
                        method.input_type, path, set_int(value), base=seed_for(method)
                    )
                    err = await call_method(ch, method, body, timeout_s=3.0)
                    code = err.code() if err is not None else grpc.StatusCode.OK
                    assert code not in (
                        grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN,
                    ), (f"{method.full_name} {field}={value}", err)
    await _assert_serving(proc)
    assert errors_in_log(proc, offset=offset) == []
