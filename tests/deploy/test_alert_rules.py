"""deploy/prometheus/rules.yaml: the five alerts of issue 9 are there, each
with a `for:`, a severity and annotations that say what to check; every
expression parses as PromQL and uses AgentMesh metrics. When promtool is
installed (deploy/local/tools.sh), `promtool check rules` and the unit tests
in rules.test.yaml must pass too; under CI a missing promtool is a failure.

That the daemons export every metric the rules use is checked against live
scrapes in tests/e2e/test_metrics_exported.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql_names import RULES, load_rules, metric_names, rule_exprs

RULES_TEST = RULES.with_name("rules.test.yaml")

#: alert -> (a metric its expression must use, severity).
ALERTS = {
    "AgentMeshSagaCompensationFailed": ("saga_compensation_failures_total", "critical"),
    "AgentMeshNoHealthyAgent": ("registry_capability_healthy_agents", "critical"),
    "AgentMeshConsumerLagHigh": ("message_bus_consumer_lag", "warning"),
    "AgentMeshDaemonNotServing": ("grpc_health_serving", "critical"),
    "AgentMeshCircuitBreakerOpenTooLong": ("routing_breaker_longest_open_seconds", "warning"),
}
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _rules() -> dict[str, dict[str, object]]:
    return {r["alert"]: r for g in load_rules()["groups"] for r in g["rules"] if "alert" in r}


def _promtool() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    gopath = shutil.which("go") and subprocess.run(
        ["go", "env", "GOPATH"], capture_output=True, text=True, check=False
    ).stdout.strip()
    candidate = Path(gopath or os.path.expanduser("~/go")) / "bin" / "promtool"
    return str(candidate) if candidate.exists() else None


def test_rule_file_structure() -> None:
    doc = load_rules()
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit", "labels"}, g["name"]
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for",
                              "labels", "annotations"}, r


def test_the_five_alerts_are_defined() -> None:
    rules = _rules()
    assert set(ALERTS) <= set(rules), f"missing: {set(ALERTS) - set(rules)}"
    for name, (metric, severity) in ALERTS.items():
        r = rules[name]
        assert metric in metric_names(str(r["expr"])), f"{name} does not use {metric}"
        assert _DURATION.match(str(r.get("for", ""))), f"{name}: needs a `for:` duration"
        labels = r["labels"]
        assert isinstance(labels, dict) and labels["severity"] == severity, name
        ann = r["annotations"]
        assert isinstance(ann, dict), name
        assert {"summary", "description", "runbook"} <= set(ann), f"{name}: {set(ann)}"
        assert all(str(v).strip() for v in ann.values()), f"{name}: empty annotation"


def test_every_expression_parses_to_agentmesh_metrics() -> None:
    for name, expr in rule_exprs().items():
        names = metric_names(expr)
        assert names, name
        assert all(
            n.startswith(("grpc_", "agentmesh_", "message_bus_", "routing_", "registry_",
                          "saga_", "swarm_"))
            for n in names
        ), f"{name}: {names}"


def test_unit_tests_cover_every_alert() -> None:
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == ["rules.yaml"]
    tested: dict[str, set[bool]] = {}
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            tested.setdefault(check["alertname"], set()).add(bool(check.get("exp_alerts")))
    for name in ALERTS:
        assert tested.get(name) == {True, False}, f"{name}: needs a firing and a quiet case"


def _run_promtool(*args: str) -> None:
    tool = _promtool()
    if tool is None:
        if os.environ.get("CI", "") not in ("", "0"):
            pytest.fail("promtool is missing under CI: run deploy/local/tools.sh")
        pytest.skip("promtool not installed (deploy/local/tools.sh installs it)")
    res = subprocess.run(
        [tool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, f"promtool {' '.join(args)}:\n{res.stdout}\n{res.stderr}"


def test_promtool_check_rules() -> None:
    _run_promtool("check", "rules", RULES.name)


def test_promtool_test_rules() -> None:
    _run_promtool("test", "rules", RULES_TEST.name)
