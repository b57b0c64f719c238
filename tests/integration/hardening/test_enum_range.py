"""Defect 3 of issue 20: an enum value the enum does not define (proto3
enums are open on the wire) is INVALID_ARGUMENT naming the field, for every
enum field reachable from every request message of the five daemons, and
ListSagas with the values from the report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.hardening import call_method, daemon_methods, errors_in_log, field_violations, log_size
from tests.integration.hardening.conftest import DAEMONS
from tests.procs import DaemonProcess

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

def enum_paths(desc: Any, depth: int = 0, seen: tuple[str, ...] = ()) -> Iterator[list[Any]]:
    """Every chain of fields from `desc` to an enum field (maps and
    well-known types left out), at most 4 messages deep."""
    for f in desc.fields:
        if f.enum_type is not None:
            yield [f]
        elif (
            f.message_type is not None
            and depth < 4
            and not f.message_type.full_name.startswith("google.")
            and not f.message_type.GetOptions().map_entry
            and f.message_type.full_name not in seen
        ):
            for rest in enum_paths(f.message_type, depth + 1, (*seen, desc.full_name)):
                yield [f, *rest]


def with_bad_enum(desc: Any, path: list[Any], value: int) -> tuple[bytes, str]:
    """A request of type `desc` whose enum at `path` holds `value`, and the
    field path the error must name."""
    cls = message_factory.GetMessageClass(desc)
    msg = cls()
    cur: Any = msg
    names: list[str] = []
    for f in path[:-1]:
        if f.is_repeated:
            cur = getattr(cur, f.name).add()
            names.append(f"{f.name}[0]")
        else:
            cur = getattr(cur, f.name)
            names.append(f.name)
    last = path[-1]
    if last.is_repeated:
        getattr(cur, last.name).append(value)
        names.append(f"{last.name}[0]")
    else:
        setattr(cur, last.name, value)
        names.append(last.name)
    return msg.SerializeToString(), ".".join(names)


@pytest.mark.parametrize("name", DAEMONS)
async def test_every_enum_field_rejects_undefined_values(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    proc = mesh[name]
    offset = log_size(proc)
    checked = 0
    async with grpc.aio.insecure_channel(proc.target) as ch:
        for method in daemon_methods(name):
            for path in enum_paths(method.input_type):
                body, field = with_bad_enum(method.input_type, path, 99)
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
