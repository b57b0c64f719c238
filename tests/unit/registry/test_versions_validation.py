"""Descriptor validation (version constraints are agentmesh.catalog's:
tests/unit/catalog/test_catalog.py)."""

from __future__ import annotations

import pytest

from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.server.registry.validation import endpoint_violation, validate_agent


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
