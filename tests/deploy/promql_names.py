"""Metric names used by the Grafana dashboard and the Prometheus rules, found
by parsing each PromQL expression with `promql-parser` (the Rust PromQL
parser's Python binding) instead of guessing with regexes.

    dashboard_exprs() -> {panel title: [expr, ...]}
    rule_exprs()      -> {alert name: expr}
    metric_names(expr) -> {"grpc_server_handled_total", ...}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "agentmesh.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"

#: Grafana's built-in range variables are not PromQL; give them a duration.
_GRAFANA_RANGES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON model."""
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def load_rules() -> dict[str, Any]:
    """rules.yaml as loaded by PyYAML."""
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return doc


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def dashboard_exprs() -> dict[str, list[str]]:
    """Panel title -> its targets' PromQL expressions."""
    return {
        p["title"]: [t["expr"] for t in p.get("targets", []) if t.get("expr")]
        for p in panels(load_dashboard())
    }


def rule_exprs() -> dict[str, str]:
    """Alert (or record) name -> expression, over every group of rules.yaml."""
    return {
        r.get("alert") or r["record"]: str(r["expr"])
        for g in load_rules()["groups"]
        for r in g["rules"]
    }


def to_promql(expr: str) -> str:
    """A dashboard expression with Grafana variables replaced so it parses.

    Range variables become durations; other variables (`$namespace`) only
    appear inside label matcher strings, where they stay as they are.
    """
    for var, dur in _GRAFANA_RANGES.items():
        expr = expr.replace(var, dur)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names selected anywhere in `expr`.

    Raises:
        ValueError: the expression does not parse, or selects a series
            without a metric name (`{job="x"}`), which cannot be checked.
    """
    try:
        tree = promql_parser.parse(to_promql(expr))
    except Exception as exc:  # the binding raises its own error types
        raise ValueError(f"PromQL does not parse: {exc}\n  {expr}") from exc
    names: set[str] = set()
    _walk(tree, names, expr)
    return names


def _walk(node: Any, names: set[str], expr: str) -> None:
    if isinstance(node, promql_parser.VectorSelector):
        name = node.name or next(
            (m.value for m in node.matchers.matchers if m.name == "__name__"), None
        )
        if not name:
            raise ValueError(f"selector without a metric name in {expr}")
        names.add(name)
    elif isinstance(node, promql_parser.MatrixSelector):
        _walk(node.vector_selector, names, expr)
    elif isinstance(node, promql_parser.BinaryExpr):
        _walk(node.lhs, names, expr)
        _walk(node.rhs, names, expr)
    elif isinstance(node, promql_parser.AggregateExpr):
        _walk(node.expr, names, expr)
        if node.param is not None:
            _walk(node.param, names, expr)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, names, expr)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr,
                           promql_parser.SubqueryExpr)):
        _walk(node.expr, names, expr)


def all_used_names() -> set[str]:
    """Every metric name the dashboard and the rules use."""
    names: set[str] = set()
    for exprs in dashboard_exprs().values():
        for e in exprs:
            names |= metric_names(e)
    for e in rule_exprs().values():
        names |= metric_names(e)
    return names


def variables_in(expr: str) -> set[str]:
    """Grafana variable names an expression refers to."""
    return {a or b for a, b in _VARIABLE.findall(expr)}
