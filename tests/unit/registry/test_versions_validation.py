"""Version constraints and descriptor validation."""

from __future__ import annotations

import pytest

from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.errors import InvalidArgument
from services.registry.validation import endpoint_violation, validate_agent
from services.registry.versions import ConstraintError, parse_constraint, parse_version


@pytest.mark.parametrize(
    ("constraint", "version", "expected"),
    [
        (">=1.2.0", "1.2.0", True), (">=1.2.0", "1.1.9", False),
        (">1.2.0", "1.2.0", False), (">1.2.0", "1.2.1", True),
        ("=1.0.0", "1.0.0", True), ("==1.0.0", "1.0.1", False), ("1.0.0", "1.0.0", True),
        ("<2", "1.99.0", True), ("<2", "2.0.0", False),
        ("<=2.1.0", "2.1.0", True), ("<=2.1.0", "2.1.1", False),
        ("^1.4", "1.4.0", True), ("^1.4", "1.99.3", True), ("^1.4", "2.0.0", False),
        ("^1.4", "1.3.9", False),
        ("^0.2.3", "0.2.9", True), ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.3", True), ("^0.0.3", "0.0.4", False),
        ("~2.0.1", "2.0.9", True), ("~2.0.1", "2.1.0", False), ("~2.0.1", "2.0.0", False),
        ("~1", "1.9.0", True), ("~1", "2.0.0", False),
        ("=1.4", "1.4.7", True), ("=1.4", "1.5.0", False),
        (">=1.0.0, <2.0.0", "1.5.0", True), (">= 1.0.0 < 2.0.0", "2.0.0", False),
        (">=1.0.0", "1.0.0-rc.1", False),  # a pre-release sorts before its release
        ("", "9.9.9", True),
    ],
)
def test_constraints(constraint: str, version: str, expected: bool) -> None:
    assert parse_constraint(constraint)(parse_version(version)) is expected


@pytest.mark.parametrize("bad", [">=x", "^^1", "1.2.3.4", ">=1.0-rc", "latest", "=>1.0.0"])
def test_malformed_constraints(bad: str) -> None:
    with pytest.raises(ConstraintError):
        parse_constraint(bad)


@pytest.mark.parametrize("ep", ["10.0.1.50:5000", "agent.svc.local:443", "[::1]:50051"])
def test_good_endpoints(ep: str) -> None:
    assert endpoint_violation(ep) is None


@pytest.mark.parametrize("ep", ["tcp://10.0.0.1:5000", "host", "host:0", "host:70000",
                                ":80", "a b:80", "host:-1"])
def test_bad_endpoints(ep: str) -> None:
    assert endpoint_violation(ep) is not None


def test_validate_agent_reports_every_bad_field() -> None:
    a = registry_pb2.Agent(agent_id="Agent 1", version="one", endpoint="nowhere",
                           capabilities=["ok", ""])
    with pytest.raises(InvalidArgument) as e:
        validate_agent(a)
    fields = {f for f, _ in e.value.field_violations}
    assert fields == {"agent.agent_id", "agent.agent_type", "agent.version", "agent.endpoint",
                      "agent.capabilities[1]"}


def test_validate_agent_accepts_a_good_descriptor() -> None:
    a = registry_pb2.Agent(agent_id="agent-calc-001", agent_type="Calc", version="2.1.0",
                           endpoint="10.0.1.50:5000", capabilities=["carbon_calculation"])
    a.heartbeat_interval.FromMilliseconds(30_000)
    validate_agent(a)
    a.heartbeat_interval.FromMilliseconds(50)
    with pytest.raises(InvalidArgument):
        validate_agent(a)
