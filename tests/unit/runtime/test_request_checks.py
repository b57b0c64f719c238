"""The runtime's request checks (runtime/request_checks.py) on real
generated messages: decoding, enum values, Durations and field paths."""

from __future__ import annotations

from agentmesh.registry.v1 import registry_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.request_checks import (
    MAX_DURATION_S,
    MAX_VIOLATIONS,
    Rejected,
    UndecodableRequest,
    checked_deserializer,
    violations,
)
from agentmesh.saga.v1 import saga_pb2


def test_garbage_is_rejected_as_undecodable() -> None:
    de = checked_deserializer(saga_pb2.ListSagasRequest.FromString)
    assert de is not None
    out = de(b"\x0a\xff\xff\xff\xff\x0f")
    assert isinstance(out, Rejected) and out.undecodable
    assert isinstance(out.error, UndecodableRequest)
    assert "agentmesh.saga.v1.ListSagasRequest" in out.error.message


def test_a_valid_request_passes_through() -> None:
    de = checked_deserializer(saga_pb2.ListSagasRequest.FromString)
    assert de is not None
    req = saga_pb2.ListSagasRequest(states=[saga_pb2.SAGA_STATE_RUNNING], page_size=5)
    assert de(req.SerializeToString()) == req


def test_undefined_enum_values_are_named_by_path() -> None:
    req = saga_pb2.ListSagasRequest(states=[1, 99, -1])
    assert [f for f, _ in violations(req)] == ["states[1]", "states[2]"]
    inv = router_pb2.InvokeRequest(strategy=2**31 - 1)
    inv.message.priority = 42
    found = dict(violations(inv))
    assert set(found) == {"strategy", "message.priority"}
    assert "is not a Strategy" in found["strategy"]


def test_durations_out_of_range_name_the_range() -> None:
    req = router_pb2.InvokeRequest()
    req.retry_policy.initial_backoff.seconds = 10**11
    req.retry_policy.max_backoff.seconds = -1
    req.retry_policy.attempt_timeout.nanos = 1_000_000_000
    found = dict(violations(req))
    assert set(found) == {
        "retry_policy.initial_backoff",
        "retry_policy.max_backoff",
        "retry_policy.attempt_timeout",
    }
    assert f"{MAX_DURATION_S}s" in found["retry_policy.initial_backoff"]
    req.retry_policy.Clear()
    req.retry_policy.initial_backoff.seconds = MAX_DURATION_S
    assert violations(req) == []


def test_nested_repeated_messages_and_the_violation_cap() -> None:
    req = registry_pb2.RegisterAgentRequest()
    req.agent.sla.max_latency.seconds = -5
    assert [f for f, _ in violations(req)] == ["agent.sla.max_latency"]
    many = saga_pb2.ListSagasRequest(states=[99] * 50)
    assert len(violations(many)) == MAX_VIOLATIONS
