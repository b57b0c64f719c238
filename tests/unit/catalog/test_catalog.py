"""The shared registry catalog module's pure parts: key names, agent-hash
parsing, version constraints, selector validation, filters and ordering."""

from __future__ import annotations

import math

import pytest

from agentmesh import catalog
from agentmesh.catalog import (
    AgentInfo,
    ConstraintError,
    discovery_order,
    parse_constraint,
    parse_health,
    parse_version,
    selector_filter,
    selector_violations,
    version_matches,
)
from agentmesh.common.v1 import common_pb2


def test_key_names_follow_the_registry_schema() -> None:
    assert catalog.PREFIX == "am:reg:{catalog}:"
    assert catalog.agent_key("a1") == "am:reg:{catalog}:agent:a1"
    assert catalog.descriptor_key("a1") == "am:reg:{catalog}:pb:a1"
    assert catalog.load_key("a1") == "am:reg:{catalog}:load:a1"
    assert catalog.capability_index_key("calc") == "am:reg:{catalog}:idx:cap:calc"
    assert catalog.service_type_index_key("compute") == "am:reg:{catalog}:idx:stype:compute"
    assert catalog.tag_index_key("prod") == "am:reg:{catalog}:idx:tag:prod"
    assert catalog.health_key() == "am:reg:{catalog}:health"
    assert catalog.agents_key() == "am:reg:{catalog}:agents"
    assert catalog.deadline_key() == "am:reg:{catalog}:deadline"
    assert catalog.counts_key() == "am:reg:{catalog}:counts"
    assert catalog.revision_key() == "am:reg:{catalog}:rev"
    assert catalog.events_key() == "am:reg:{catalog}:events"
    assert catalog.agent_key("a1", prefix="x:") == "x:agent:a1"
    assert catalog.tag_index_key("t", prefix="x:") == "x:idx:tag:t"


def test_load_fields_are_the_load_metrics_fields() -> None:
    assert set(catalog.LOAD_FIELDS) == set(common_pb2.LoadMetrics.DESCRIPTOR.fields_by_name)


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
    assert version_matches(version, constraint) is expected


@pytest.mark.parametrize(
    "bad", [">=x", "^^1", "1.2.3.4", ">=1.0-rc", "latest", "=>1.0.0", "!=1.0.0"]
)
def test_malformed_constraints(bad: str) -> None:
    with pytest.raises(ConstraintError):
        parse_constraint(bad)
    with pytest.raises(ConstraintError):
        version_matches("1.0.0", bad)


def test_unparsable_versions_match_only_the_empty_constraint() -> None:
    assert not version_matches("junk", ">=1")
    assert not version_matches("1.2", "^1")  # agent versions must be full semver
    assert not version_matches("", ">=0.0.0")
    assert version_matches("junk", "")
    assert version_matches("junk", "  ")


def test_selector_violations_report_constraint_and_health_bound() -> None:
    assert selector_violations(common_pb2.AgentSelector(version_constraint="^1.2")) == []
    bad = selector_violations(
        common_pb2.AgentSelector(version_constraint="latest", min_health_score=1.5),
        field="steps[0].selector",
    )
    assert [f for f, _ in bad] == [
        "steps[0].selector.version_constraint",
        "steps[0].selector.min_health_score",
    ]
    assert "latest" in bad[0][1]
    nan = common_pb2.AgentSelector(min_health_score=math.nan)
    assert [f for f, _ in selector_violations(nan)] == ["selector.min_health_score"]
    assert selector_violations(common_pb2.AgentSelector(min_health_score=-0.1)) != []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, 1.0), (b"", 1.0), ("", 1.0), (b"0.250000", 0.25), ("0.9", 0.9),
     (b"junk", 0.0), ("nan", 0.0), ("inf", 0.0), ("-inf", 0.0)],
)
def test_parse_health(raw: bytes | str | None, expected: float) -> None:
    assert parse_health(raw) == expected


def test_agent_info_from_hash_fields() -> None:
    a = AgentInfo.from_fields("a1", [b"h:1", b"DEGRADED", b"0.5", b"eu", b"1.2.3"])
    assert a == AgentInfo("a1", "h:1", "DEGRADED", 0.5, "eu", "1.2.3")
    b = AgentInfo.from_fields("b1", ["h:2", None, None, None, None])
    assert b == AgentInfo("b1", "h:2", "", 1.0, "", "")
    assert AgentInfo.from_fields("gone", [None, None, None, None, None]) is None
    assert AgentInfo.from_fields("empty", [b"", b"ACTIVE", b"1", b"", b""]) is None


def test_discovery_order_is_location_then_health_then_id() -> None:
    agents = [
        AgentInfo("c", "h", "ACTIVE", 0.9, "us"),
        AgentInfo("b", "h", "ACTIVE", 0.9, "eu"),
        AgentInfo("a", "h", "ACTIVE", 0.5, "eu"),
        AgentInfo("d", "h", "ACTIVE", 1.0, "us"),
        AgentInfo("e", "h", "ACTIVE", 0.9, "us"),
    ]
    eu_first = sorted(agents, key=discovery_order("eu"))
    assert [a.agent_id for a in eu_first] == ["b", "a", "d", "c", "e"]
    none = sorted(agents, key=discovery_order(""))
    assert [a.agent_id for a in none] == ["d", "b", "c", "e", "a"]
    # no agent in the preferred location: plain health, then id
    assert sorted(agents, key=discovery_order("ap")) == none


def test_selector_filter_applies_min_health_and_version() -> None:
    sel = common_pb2.AgentSelector(min_health_score=0.5, version_constraint="^2")
    admits = selector_filter(sel)
    assert admits(AgentInfo("a", "h", "ACTIVE", 0.5, version="2.3.0"))
    assert not admits(AgentInfo("a", "h", "ACTIVE", 0.49, version="2.3.0"))
    assert not admits(AgentInfo("a", "h", "ACTIVE", 1.0, version="3.0.0"))
    assert not admits(AgentInfo("a", "h", "ACTIVE", 1.0, version=""))
    # no constraint: any version, even none
    assert selector_filter(common_pb2.AgentSelector())(AgentInfo("a", "h", "", 0.0))
    with pytest.raises(ConstraintError):
        selector_filter(common_pb2.AgentSelector(version_constraint=">=x"))
