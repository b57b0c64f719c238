"""The retry classification, driven by the real generated descriptors."""

from __future__ import annotations

import importlib
import pkgutil

import grpc
import pytest

import agentmesh
from agentmesh.agent.v1 import agent_pb2
from agentmesh.bus.v1 import bus_pb2
from agentmesh.runtime.errors import ErrorReason, Unavailable
from agentmesh.runtime.retry import (
    IdempotencyLevel,
    idempotency_of,
    is_retryable,
    is_retryable_error,
    key_field_of,
    method_descriptor,
)

R = ErrorReason
L = IdempotencyLevel
C = grpc.StatusCode
GET_AGENT = "/agentmesh.registry.v1.RegistryService/GetAgent"
CREATE_PROPOSAL = "/agentmesh.registry.v1.CoordinationService/CreateProposal"
EXECUTE = "/agentmesh.agent.v1.AgentService/Execute"


def _all_methods() -> list[str]:
    names = []
    for area in pkgutil.iter_modules(agentmesh.__path__):
        try:
            pkg = importlib.import_module(f"agentmesh.{area.name}.v1")
        except ImportError:
            continue
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.endswith("_pb2"):
                continue
            fd = importlib.import_module(f"{pkg.__name__}.{mod.name}").DESCRIPTOR
            for svc in fd.services_by_name.values():
                names += [f"/{svc.full_name}/{m.name}" for m in svc.methods]
    return names


def test_levels_come_from_the_contract() -> None:
    assert idempotency_of(GET_AGENT) is L.NO_SIDE_EFFECTS
    assert idempotency_of("agentmesh.registry.v1.RegistryService.RegisterAgent") is L.IDEMPOTENT
    assert idempotency_of(CREATE_PROPOSAL) is L.IDEMPOTENCY_UNKNOWN
    assert idempotency_of("/agentmesh.agent.v1.AgentService/Evaluate") is L.NO_SIDE_EFFECTS
    assert method_descriptor(GET_AGENT).GetOptions().idempotency_level == L.NO_SIDE_EFFECTS
    with pytest.raises(KeyError):
        idempotency_of("/agentmesh.registry.v1.RegistryService/NoSuchMethod")


def test_every_rpc_declares_its_level_or_a_dedupe_key() -> None:
    """An RPC left IDEMPOTENCY_UNKNOWN must say so explicitly in the proto.

    The option's presence is what is checked: an unmarked RPC reads as
    UNKNOWN too, but nobody decided that.
    """
    methods = _all_methods()
    assert len(methods) > 50
    unmarked = [
        m for m in methods if not method_descriptor(m).GetOptions().HasField("idempotency_level")
    ]
    assert unmarked == []


def test_a_dedupe_key_makes_a_call_idempotent() -> None:
    assert key_field_of(EXECUTE) == "idempotency_key"
    assert idempotency_of(EXECUTE) is L.IDEMPOTENCY_UNKNOWN
    assert idempotency_of(EXECUTE, request=agent_pb2.ExecuteRequest()) is L.IDEMPOTENCY_UNKNOWN
    keyed = agent_pb2.ExecuteRequest(idempotency_key="sg_1/charge")
    assert idempotency_of(EXECUTE, request=keyed) is L.IDEMPOTENT
    publish = "/agentmesh.bus.v1.BusService/Publish"
    assert key_field_of(publish) == "message.id"
    with_id = bus_pb2.PublishRequest(message=bus_pb2.Envelope(id="m-1"))
    assert idempotency_of(publish, request=with_id) is L.IDEMPOTENT
    assert idempotency_of(publish, request=bus_pb2.PublishRequest()) is L.IDEMPOTENCY_UNKNOWN
    # A method marked IDEMPOTENT stays so without any key.
    assert key_field_of(GET_AGENT) == ""


def test_deadline_exceeded_is_retried_only_for_safe_methods() -> None:
    u = R.ERROR_REASON_UNSPECIFIED
    assert is_retryable(code=C.DEADLINE_EXCEEDED, reason=u, idempotency=idempotency_of(GET_AGENT))
    assert not is_retryable(
        code=C.DEADLINE_EXCEEDED, reason=u, idempotency=idempotency_of(CREATE_PROPOSAL)
    )


@pytest.mark.parametrize(
    ("code", "reason", "unknown", "safe"),
    [
        (C.UNAVAILABLE, R.ERROR_REASON_UNSPECIFIED, False, True),
        (C.UNAVAILABLE, R.ERROR_REASON_UNKNOWN_OUTCOME, False, True),
        (C.UNAVAILABLE, R.ERROR_REASON_REDIS_DOWN, False, True),
        (C.UNAVAILABLE, R.ERROR_REASON_NO_HEALTHY_TARGET, True, True),
        (C.UNAVAILABLE, R.ERROR_REASON_CIRCUIT_OPEN, True, True),
        (C.UNAVAILABLE, R.ERROR_REASON_KAFKA_QUEUE_FULL, True, True),
        (C.UNAVAILABLE, R.ERROR_REASON_IDEMPOTENCY_STORE_DOWN, True, True),
        (C.UNAVAILABLE, R.ERROR_REASON_EXECUTE_IN_FLIGHT, True, True),
        (C.UNAVAILABLE, R.ERROR_REASON_ATTEMPTS_EXHAUSTED, False, False),
        (C.ABORTED, R.ERROR_REASON_COMPENSATED, False, False),
        (C.ABORTED, R.ERROR_REASON_UNSPECIFIED, False, False),
        (C.RESOURCE_EXHAUSTED, R.ERROR_REASON_RATE_LIMITED, True, True),
        (C.RESOURCE_EXHAUSTED, R.ERROR_REASON_UNSPECIFIED, True, True),
        (C.RESOURCE_EXHAUSTED, R.ERROR_REASON_MESSAGE_TOO_LARGE, False, False),
        (C.FAILED_PRECONDITION, R.ERROR_REASON_SAFETY_VIOLATION, False, False),
        (C.INVALID_ARGUMENT, R.ERROR_REASON_UNSPECIFIED, False, False),
        (C.INTERNAL, R.ERROR_REASON_UNSPECIFIED, False, False),
        (C.UNKNOWN, R.ERROR_REASON_UNSPECIFIED, False, False),
        (C.OK, R.ERROR_REASON_UNSPECIFIED, False, False),
    ],
)
def test_table(code: grpc.StatusCode, reason: int, unknown: bool, safe: bool) -> None:
    r = reason  # an ErrorReason value
    assert is_retryable(code=code, reason=r, idempotency=L.IDEMPOTENCY_UNKNOWN) is unknown  # type: ignore[arg-type]
    assert is_retryable(code=code, reason=r, idempotency=L.IDEMPOTENT) is safe  # type: ignore[arg-type]
    assert is_retryable(code=code, reason=r, idempotency=L.NO_SIDE_EFFECTS) is safe  # type: ignore[arg-type]


def test_errors_are_classified_by_their_error_info() -> None:
    down = Unavailable("x", reason=R.ERROR_REASON_NO_HEALTHY_TARGET)
    assert is_retryable_error(down, idempotency=L.IDEMPOTENCY_UNKNOWN)
    outcome = Unavailable("x", reason=R.ERROR_REASON_UNKNOWN_OUTCOME)
    assert not is_retryable_error(outcome, idempotency=L.IDEMPOTENCY_UNKNOWN)
    assert is_retryable_error(outcome, idempotency=L.IDEMPOTENT)
    assert not is_retryable_error(ValueError("x"), idempotency=L.IDEMPOTENT)


def test_an_unavailable_that_never_left_the_caller_is_retried_for_any_method() -> None:
    level = idempotency_of(CREATE_PROPOSAL)
    u = R.ERROR_REASON_UNSPECIFIED
    assert not is_retryable(code=C.UNAVAILABLE, reason=u, idempotency=level)
    assert is_retryable(code=C.UNAVAILABLE, reason=u, idempotency=level, reached=False)
    # Only UNAVAILABLE: a deadline may pass after the request left.
    assert not is_retryable(code=C.DEADLINE_EXCEEDED, reason=u, idempotency=level, reached=False)
    # Never for a compensated key.
    assert not is_retryable(
        code=C.UNAVAILABLE, reason=R.ERROR_REASON_COMPENSATED, idempotency=level, reached=False
    )
