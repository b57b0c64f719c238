from __future__ import annotations

import pytest

from agentmesh.runtime.config import ExtraOption, load_config


def test_defaults_follow_design_ports() -> None:
    cfg = load_config("saga", [], environ={})
    assert (cfg.port, cfg.metrics_port) == (50054, 9104)
    assert cfg.host == "127.0.0.1"


def test_precedence_flag_over_daemon_env_over_shared_env() -> None:
    env = {
        "AGENTMESH_PORT": "1111",
        "AGENTMESH_ROUTER_PORT": "2222",
        "AGENTMESH_REDIS_URL": "redis://x:1/2",
    }
    assert load_config("router", [], environ=env).port == 2222
    assert load_config("bus", [], environ=env).port == 1111
    assert load_config("router", ["--port", "3333"], environ=env).port == 3333
    assert load_config("router", [], environ=env).redis_url == "redis://x:1/2"


def test_typed_values_and_extra_options() -> None:
    cfg = load_config(
        "bus",
        ["--grace-period-s", "2.5", "--backend", "kafka"],
        extra_options=[ExtraOption("backend", "memory", "backend")],
        environ={"AGENTMESH_BUS_HEALTH_INTERVAL_S": "0.25"},
    )
    assert cfg.grace_period_s == 2.5
    assert cfg.health_interval_s == 0.25
    assert cfg.extra == {"backend": "kafka"}


def test_bad_env_value_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_config("bus", [], environ={"AGENTMESH_PORT": "not-a-port"})
    assert "AGENTMESH_PORT" in capsys.readouterr().err
