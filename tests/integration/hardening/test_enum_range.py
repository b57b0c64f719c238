"""Defect 3 of issue 20: an enum value the enum does not define (proto3
enums are open on the wire) is INVALID_ARGUMENT naming the field, for every
enum field reachable from every request message of the five daemons, and
ListSagas with the values from the report."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.hardening import (
    call_method,
    daemon_methods,
    errors_in_log,
    field_paths,
    field_violations,
    log_size,
    message_with,
)
from tests.integration.hardening.conftest import DAEMONS
from tests.procs import DaemonProcess

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

def set_enum(value: int) -> Any:
    """A `message_with` setter putting `value` in an enum field."""

    def put(parent: Any, f: Any) -> str:
        if f.is_repeated:
            getattr(parent, f.name).append(value)
            return f"{f.name}[0]"
        setattr(parent, f.name, value)
        return str(f.name)

    return put


@pytest.mark.parametrize("name", DAEMONS)
async def test_every_enum_field_rejects_undefined_values(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    proc = mesh[name]
    offset = log_size(proc)
    checked = 0
    async with grpc.aio.insecure_channel(proc.target) as ch:
        for method in daemon_methods(name):
            for path in field_paths(method.input_type, lambda f: f.enum_type is not None):
                body, field = message_with(method.input_type, path, set_enum(99))
                err = await call_method(ch, method, body, timeout_s=3.0)
                where = f"{method.full_name} {field}"
                assert err is not None, where
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, err)
                assert field in field_violations(err), (where, field_violations(err))
                checked += 1
    assert checked > 0
    assert errors_in_log(proc, offset=offset) == []


@pytest.mark.parametrize("state", [8, 10, 99, -1, 2**31 - 1])
async def test_list_sagas_with_an_undefined_state(
    mesh: dict[str, DaemonProcess], state: int
) -> None:
    async with grpc.aio.insecure_channel(mesh["saga"].target) as ch:
        stub = saga_pb2_grpc.SagaServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListSagas(saga_pb2.ListSagasRequest(states=[1, state]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "states[1]" in field_violations(err.value)
