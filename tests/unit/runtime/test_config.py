from __future__ import annotations

import pytest

from agentmesh.runtime.config import load_config
from agentmesh.server.bus.settings import BusSettings


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


def test_typed_values_and_daemon_settings() -> None:
    cfg = load_config(
        "bus",
        ["--grace-period-s", "2.5", "--backend", "kafka"],
        settings=BusSettings,
        environ={"AGENTMESH_BUS_HEALTH_INTERVAL_S": "0.25", "AGENTMESH_READ_AHEAD": "7"},
    )
    assert cfg.grace_period_s == 2.5
    assert cfg.health_interval_s == 0.25
    bus = cfg.settings_as(BusSettings)
    assert (bus.backend, bus.read_ahead, bus.auto_create_topics) == ("kafka", 7, True)


def test_bad_env_value_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_config("bus", [], environ={"AGENTMESH_PORT": "not-a-port"})
    assert "AGENTMESH_PORT" in capsys.readouterr().err


def test_sentinel_settings_parse_into_nodes() -> None:
    env = {
        "AGENTMESH_REDIS_SENTINELS": "sentinel-0:26379, sentinel-1:26380,[::1]:26381",
        "AGENTMESH_SAGA_REDIS_SENTINEL_MASTER": "agentmesh",
    }
    cfg = load_config("saga", [], environ=env)
    assert cfg.redis_sentinel_nodes == [
        ("sentinel-0", 26379),
        ("sentinel-1", 26380),
        ("::1", 26381),
    ]
    assert cfg.redis_sentinel_master == "agentmesh"
    assert load_config("bus", [], environ=env).redis_sentinel_master == "mymaster"
    assert load_config("bus", [], environ={}).redis_sentinel_nodes == []


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AGENTMESH_REDIS_SENTINELS": "sentinel-0"}, "AGENTMESH_REDIS_SENTINELS"),
        ({"AGENTMESH_REDIS_SENTINELS": "s:99999"}, "not host:port"),
        (
            {"AGENTMESH_REDIS_SENTINELS": "s:1", "AGENTMESH_REDIS_SENTINEL_MASTER": ""},
            "AGENTMESH_REDIS_SENTINEL_MASTER",
        ),
        ({"AGENTMESH_LOG_FORMAT": "logfmt"}, "use json or text"),
        ({"AGENTMESH_KAFKA_SECURITY_PROTOCOL": "TLS"}, "SASL_SSL"),
        (
            {
                "AGENTMESH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "AGENTMESH_KAFKA_SASL_MECHANISM": "GSSAPI",
                "AGENTMESH_KAFKA_SASL_USERNAME": "u",
                "AGENTMESH_KAFKA_SASL_PASSWORD": "p",
            },
            "SCRAM-SHA-512",
        ),
        # SASL credentials without a SASL protocol would silently go unused.
        ({"AGENTMESH_KAFKA_SASL_USERNAME": "mesh"}, "set it to SASL_SSL"),
        ({"AGENTMESH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "AGENTMESH_KAFKA_SASL_PASSWORD"),
        (
            {"AGENTMESH_KAFKA_SECURITY_PROTOCOL": "SSL", "AGENTMESH_KAFKA_SSL_CERT_FILE": "c"},
            "AGENTMESH_KAFKA_SSL_KEY_FILE",
        ),
        ({"AGENTMESH_KAFKA_SSL_CA_FILE": "/ca.crt"}, "set it to SSL or SASL_SSL"),
    ],
)
def test_settings_that_cannot_work_fail_at_startup_with_a_fix(
    env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        load_config("bus", [], environ=env)
    assert needle in capsys.readouterr().err


def test_kafka_and_log_settings_are_read_like_the_others() -> None:
    env = {
        "AGENTMESH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "AGENTMESH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "AGENTMESH_KAFKA_SASL_USERNAME": "mesh",
        "AGENTMESH_BUS_KAFKA_SASL_PASSWORD": "s3cret",
        "AGENTMESH_KAFKA_SSL_CA_FILE": "/etc/agentmesh/kafka/ca.crt",
        "AGENTMESH_LOG_FORMAT": "text",
    }
    cfg = load_config("bus", ["--log-format", "JSON"], environ=env)
    assert cfg.kafka_sasl_password == "s3cret"
    assert cfg.kafka_ssl_ca_file == "/etc/agentmesh/kafka/ca.crt"
    assert cfg.log_format == "JSON"  # the flag wins; case does not matter
    # the bus-only password leaves the router with SASL and no password: refused
    with pytest.raises(SystemExit):
        load_config("router", [], environ=env)
    shared = {**env, "AGENTMESH_KAFKA_SASL_PASSWORD": "s3cret"}
    assert load_config("router", [], environ=shared).log_format == "text"
