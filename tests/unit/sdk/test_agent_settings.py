"""The agent SDK's command line uses the runtime's settings mechanism:
AGENTMESH_AGENT_<NAME> under flags, over the constructor's values, typed,
range-checked, with the one boolean parser."""

from __future__ import annotations

import argparse

import pytest

from agentmesh.agent import Agent, AgentSettings
from agentmesh.agent.cli import add_arguments, apply_arguments
from agentmesh.runtime.settings import schema_properties


def parsed(agent: Agent, argv: list[str]) -> Agent:
    parser = argparse.ArgumentParser()
    add_arguments(parser, agent)
    apply_arguments(parser.parse_args(argv), agent)
    return agent


def test_flag_over_agent_env_over_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_AGENT_MAX_CONCURRENCY", "8")
    monkeypatch.setenv("AGENTMESH_AGENT_HEARTBEAT_INTERVAL_S", "2.5")
    # the daemons' shared variables are not the agent's
    monkeypatch.setenv("AGENTMESH_PORT", "50051")
    monkeypatch.setenv("AGENTMESH_AGENT_ID", "from-env")
    a = parsed(Agent("a1", port=7000, location="eu", max_concurrency=2), ["--port", "7001"])
    s = a.settings
    assert (s.port, s.max_concurrency, s.heartbeat_interval_s, s.location) == (7001, 8, 2.5, "eu")
    assert a.agent_id == "from-env" and a.load.capacity == 8
    assert isinstance(s, AgentSettings)


def test_bad_agent_values_stop_with_the_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTMESH_AGENT_METRICS_PORT", "-2")
    with pytest.raises(SystemExit):
        parsed(Agent("a2"), [])
    assert "AGENTMESH_AGENT_METRICS_PORT='-2' must be >= -1" in capsys.readouterr().err
    monkeypatch.delenv("AGENTMESH_AGENT_METRICS_PORT")
    with pytest.raises(SystemExit):
        parsed(Agent("a3"), ["--max-concurrency", "lots"])
    assert "--max-concurrency='lots' is not a whole number" in capsys.readouterr().err


def test_agent_settings_are_checked_on_construction_too() -> None:
    with pytest.raises(ValueError, match="--port='70000' must be <= 65535"):
        Agent("a4", port=70000)
    props = schema_properties(AgentSettings)
    assert props["idempotency_ttl_s"]["type"] == "number"
    assert "extra_metadata" not in props
