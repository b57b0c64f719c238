"""deploy/grafana/agentmesh.json: loads, has the panels the seeds ask for,
every query parses as PromQL and names real AgentMesh metrics, and the
datasource is a template variable so the dashboard imports anywhere.

That the daemons really export every name is checked against live scrapes in
tests/e2e/test_metrics_exported.py."""

from __future__ import annotations

import pytest

from tests.deploy.promql_names import (
    dashboard_exprs,
    load_dashboard,
    metric_names,
    panels,
    variables_in,
)

#: The seeds' dashboard (issue 9): panel title -> panel type.
REQUIRED_PANELS = {
    "Bus throughput (messages/s by type)": "timeseries",
    "Routing strategy distribution": "piechart",
    "Swarm convergence time (p50, p95, p99)": "timeseries",
    "Saga success rate": "stat",
    "Agent health heatmap": "heatmap",
    "End-to-end latency p95": "timeseries",
    "Consumer lag by group": "timeseries",
    "gRPC requests/s by daemon": "timeseries",
    "gRPC error ratio by daemon": "timeseries",
    "gRPC p99 latency by daemon": "timeseries",
}

#: Metric-name prefixes of the daemons (seed names) and the runtime.
PREFIXES = (
    "grpc_server_", "grpc_health_", "agentmesh_", "message_bus_", "routing_",
    "scatter_gather_", "registry_", "saga_", "swarm_", "task_", "pipeline_",
)


def test_dashboard_is_a_grafana_model() -> None:
    d = load_dashboard()
    assert d["uid"] == "agentmesh"
    assert d["title"] == "AgentMesh"
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(d):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']}: outside the 24-column grid"


def test_required_panels_present() -> None:
    by_title = {p["title"]: p["type"] for p in panels(load_dashboard())}
    missing = {t: ty for t, ty in REQUIRED_PANELS.items() if by_title.get(t) != ty}
    assert missing == {}, f"missing or wrong-type panels: {missing}"


def test_datasource_is_templated() -> None:
    d = load_dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p.get("targets", []):
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", p["title"]


def test_queries_use_only_defined_variables() -> None:
    d = load_dashboard()
    defined = {v["name"] for v in d["templating"]["list"]}
    builtin = {"__rate_interval", "__range", "__interval"}
    for title, exprs in dashboard_exprs().items():
        for e in exprs:
            assert variables_in(e) <= defined | builtin, f"{title}: {e}"


@pytest.mark.parametrize("title", sorted(dashboard_exprs()))
def test_panel_queries_parse_to_agentmesh_metrics(title: str) -> None:
    exprs = dashboard_exprs()[title]
    assert exprs, f"panel {title!r} has no query"
    for e in exprs:
        names = metric_names(e)
        assert names, f"{title}: no metric in {e}"
        assert all(n.startswith(PREFIXES) for n in names), f"{title}: foreign metric in {names}"


def test_extractor_sees_every_selector() -> None:
    # The extractor must not skip operands: a binary expression over two
    # aggregations of different metrics yields both names, and a parse error
    # is reported rather than passing silently.
    e = "sum(rate(a_total[$__rate_interval])) / on() group_left max(b{x=~\"$namespace\"})"
    assert metric_names(e) == {"a_total", "b"}
    with pytest.raises(ValueError, match="does not parse"):
        metric_names("sum(rate(a_total[5m])")
