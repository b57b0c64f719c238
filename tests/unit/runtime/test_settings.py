"""Typed settings declared once (agentmesh.runtime.settings): the one boolean
parser, flag/env precedence, range checks, --help and the JSON-schema output."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agentmesh.runtime.config import load_config
from agentmesh.runtime.settings import (
    Settings,
    daemon_env_prefixes,
    load_settings,
    parse_bool,
    schema_properties,
    setting,
    setting_specs,
)


@dataclass(frozen=True)
class Demo(Settings):
    lease_ttl_ms: int = setting(5000, help="lease length", unit="ms", minimum=1)
    ratio: float = setting(0.5, help="a fraction", minimum=0, maximum=1)
    use_router: bool = setting(True, help="go through the router")
    mode: str = setting("fast", help="how to run", choices=("fast", "safe"))
    label: str = setting("", help="free text")


@pytest.mark.parametrize("word", ["true", "TRUE", " yes ", "Yes", "1", "on", "ON"])
def test_parse_bool_accepts_the_true_spellings(word: str) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", ["false", "False", "no", "NO", "0", "off", " Off"])
def test_parse_bool_accepts_the_false_spellings(word: str) -> None:
    assert parse_bool(word) is False


@pytest.mark.parametrize("word", ["", "maybe", "2", "y", "enabled", "truee"])
def test_parse_bool_rejects_anything_else_naming_the_source(word: str) -> None:
    with pytest.raises(ValueError, match=r"AGENTMESH_USE_ROUTER=.*is not a boolean"):
        parse_bool(word, source="AGENTMESH_USE_ROUTER")


def test_use_router_yes_means_true_and_a_typo_stops_startup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the bug of issue 14: "yes" used to turn the router off in the saga daemon
    cfg = load_config("saga", [], settings=Demo, environ={"AGENTMESH_USE_ROUTER": "yes"})
    assert cfg.settings_as(Demo).use_router is True
    off = load_config("saga", ["--use-router", "OFF"], settings=Demo, environ={})
    assert off.settings_as(Demo).use_router is False
    with pytest.raises(SystemExit):
        load_config("saga", [], settings=Demo, environ={"AGENTMESH_SAGA_USE_ROUTER": "ja"})
    assert "AGENTMESH_SAGA_USE_ROUTER='ja' is not a boolean" in capsys.readouterr().err


def test_precedence_flag_then_daemon_env_then_global_env_then_default() -> None:
    def ttl(argv: list[str], env: dict[str, str]) -> int:
        return load_config("saga", argv, settings=Demo, environ=env).settings_as(Demo).lease_ttl_ms

    both = {"AGENTMESH_SAGA_LEASE_TTL_MS": "2000", "AGENTMESH_LEASE_TTL_MS": "3000"}
    assert ttl([], {}) == 5000
    assert ttl([], {"AGENTMESH_LEASE_TTL_MS": "3000"}) == 3000
    assert ttl([], both) == 2000
    assert ttl(["--lease-ttl-ms", "1000"], both) == 1000
    # another daemon's variable is not this daemon's
    assert ttl([], {"AGENTMESH_SWARM_LEASE_TTL_MS": "7"}) == 5000
    assert daemon_env_prefixes("saga") == ("AGENTMESH_SAGA_", "AGENTMESH_")


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--lease-ttl-ms", "0"], {}, "--lease-ttl-ms='0' must be >= 1 ms"),
        (["--lease-ttl-ms", "5s"], {}, "--lease-ttl-ms='5s' is not a whole number ms"),
        ([], {"AGENTMESH_RATIO": "1.5"}, "AGENTMESH_RATIO='1.5' must be <= 1"),
        ([], {"AGENTMESH_SAGA_RATIO": "nan"}, "AGENTMESH_SAGA_RATIO='nan' is not a number"),
        ([], {"AGENTMESH_MODE": "slow"}, "AGENTMESH_MODE='slow' must be one of 'fast', 'safe'"),
        # the common settings are declared the same way
        ([], {"AGENTMESH_PORT": "70000"}, "AGENTMESH_PORT='70000' must be <= 65535"),
    ],
)
def test_a_bad_value_stops_startup_naming_the_setting(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_config("saga", argv, settings=Demo, environ=env)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_construction_checks_ranges_too() -> None:
    assert Demo(mode="SAFE").mode == "SAFE"  # choices compare case-insensitively
    with pytest.raises(ValueError, match=r"--ratio='-0.1' must be >= 0; --mode='x' must be one of"):
        Demo(ratio=-0.1, mode="x")
    assert Demo.from_strings({"lease_ttl_ms": " 42 ", "use_router": "no"}) == Demo(
        lease_ttl_ms=42, use_router=False
    )


def test_help_shows_help_unit_range_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(Demo, ["--help"], prefixes=("AGENTMESH_AGENT_",), environ={})
    out = " ".join(capsys.readouterr().out.split())
    assert "--lease-ttl-ms INT lease length [ms]; default 5000; >= 1" in out
    assert "--ratio NUM a fraction; default 0.5; >= 0, <= 1" in out
    assert "--use-router BOOL go through the router; default true" in out
    assert "--mode STR how to run; default 'fast'; one of 'fast', 'safe'" in out


def test_load_settings_reads_only_the_given_prefixes() -> None:
    env = {"AGENTMESH_LEASE_TTL_MS": "9", "AGENTMESH_AGENT_RATIO": "0.25"}
    s = load_settings(Demo, [], prefixes=("AGENTMESH_AGENT_",), environ=env)
    assert (s.lease_ttl_ms, s.ratio) == (5000, 0.25)


def test_schema_properties_have_real_types_bounds_and_units() -> None:
    props = schema_properties(Demo)
    assert props["lease_ttl_ms"] == {
        "type": "integer",
        "description": "lease length [ms]",
        "default": 5000,
        "minimum": 1,
    }
    assert props["ratio"] == {
        "type": "number",
        "description": "a fraction",
        "default": 0.5,
        "minimum": 0.0,
        "maximum": 1.0,
    }
    assert props["use_router"] == {
        "type": "boolean", "description": "go through the router", "default": True,
    }
    assert props["mode"]["enum"] == ["fast", "safe"] and props["mode"]["type"] == "string"
    assert list(props) == ["lease_ttl_ms", "ratio", "use_router", "mode", "label"]


def test_fields_without_setting_are_not_flags_and_bad_types_are_refused() -> None:
    @dataclass(frozen=True)
    class Derived(Demo):
        resolved: str = "x"

    assert "resolved" not in {s.name for s in setting_specs(Derived)}
    assert "resolved" not in schema_properties(Derived)

    @dataclass(frozen=True)
    class Bad(Settings):
        hosts: tuple[str, ...] = setting(("a",), help="not a scalar")

    with pytest.raises(TypeError, match="int, float, bool or str"):
        setting_specs(Bad)


def test_daemon_settings_cross_checks() -> None:
    from agentmesh.server.registry.settings import RegistrySettings
    from agentmesh.server.saga.settings import SagaSettings

    with pytest.raises(ValueError, match=r"--renew-interval-ms=5000 must be below"):
        SagaSettings(renew_interval_ms=5000)
    with pytest.raises(ValueError, match=r"--ttl-factor=2\.0 must exceed the stale factor"):
        RegistrySettings(ttl_factor=2.0)
    reg = RegistrySettings(flap_threshold=4, health_event_step=0.2)
    assert (reg.policy.flap_threshold, reg.policy.event_step) == (4, 0.2)
    assert reg.replica_id  # "" becomes <hostname>-<pid>


def test_bus_librdkafka_tuning_comes_from_the_bus_settings() -> None:
    from agentmesh.server.bus.kafka_backend import KafkaBackend
    from agentmesh.server.bus.settings import BusSettings

    cfg = load_config(
        "bus",
        ["--kafka-bootstrap", "127.0.0.1:1", "--kafka-linger-ms", "20"],
        settings=BusSettings,
        environ={"AGENTMESH_BUS_KAFKA_FETCH_WAIT_MAX_MS": "250"},
    )
    s = BusSettings.from_config(cfg)
    assert s.backend == "kafka" and s.instance_id
    backend = KafkaBackend(
        s.kafka_bootstrap,
        producer_tuning=s.kafka_producer_tuning(),
        fetch_wait_max_ms=s.kafka_fetch_wait_max_ms,
    )
    assert backend.producer_tuning["linger.ms"] == 20
    assert backend.producer_tuning["batch.num.messages"] == 10_000
    assert backend.consumer_config("g", earliest=True)["fetch.wait.max.ms"] == 250
