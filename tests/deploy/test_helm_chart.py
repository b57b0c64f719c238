"""The chart lints (--strict) and renders with its defaults and with every
example and CI values file, and every rendered object passes strict
Kubernetes schema validation, offline: the schemas come from the
kubernetes-validate package, because CI has no route to schema hosts.

ServiceMonitor is a prometheus-operator CRD that kubernetes-validate does not
know, so its shape is checked by assertions instead.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.deploy.chart import CHART, DAEMONS, KUBE_VERSION, VALUES_FILES, by_kind, helm, render

#: Kinds the chart renders that are not built into Kubernetes.
CRD_KINDS = {"ServiceMonitor"}
#: values-ha-redis-cluster.yaml is an overlay: it is checked on top of values-ha.yaml.
VALUES_CASES = [
    (),
    *[(v,) for v in VALUES_FILES],
    ("values-ha.yaml", "values-ha-redis-cluster.yaml"),
]


def test_ci_values_files_cover_the_required_configurations() -> None:
    names = {v.removeprefix("ci/").removesuffix("-values.yaml") for v in VALUES_FILES}
    assert {"default", "ha", "secure", "minimal", "monitoring"} <= names


@pytest.mark.parametrize("values", VALUES_CASES, ids=lambda v: "+".join(v) or "defaults")
def test_chart_lints_strictly(values: tuple[str, ...]) -> None:
    args = [helm(), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["--values", str(CHART / v)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pinned_helm_renders_and_lints_without_kube_version() -> None:
    # The pinned helm is built as its release binaries are (tools.sh stamps the
    # Kubernetes version from its client-go); built without it, helm assumes
    # v1.20 and refuses the chart's kubeVersion ">=1.27" unless told a version.
    for cmd in (["template", "agentmesh"], ["lint", "--strict"]):
        proc = subprocess.run([helm(), *cmd, str(CHART)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", VALUES_CASES, ids=lambda v: "+".join(v) or "defaults")
def test_rendered_objects_pass_strict_kubernetes_schemas(values: tuple[str, ...]) -> None:
    import kubernetes_validate

    docs = render(values=values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # strict: unknown fields are errors, so a mistyped key cannot hide
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_a_broken_manifest_is_caught_by_the_validation() -> None:
    # The check above can fail: the same validator refuses a misspelt field.
    import kubernetes_validate

    deployment = by_kind(render(), "Deployment")["mesh-registry"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def _service_monitor_shape(sm: dict[str, Any], service: dict[str, Any]) -> None:
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) == {"namespaceSelector", "selector", "endpoints"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["agentmesh"]}
    # it selects exactly the daemon's Service, on a port that Service has
    labels = service["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    for key in ("interval", "scrapeTimeout"):
        assert endpoint[key][:-1].isdigit() and endpoint[key][-1] in "sm"


def test_service_monitors_select_each_daemons_metrics_port() -> None:
    docs = render(values=("ci/monitoring-values.yaml",))
    monitors = by_kind(docs, "ServiceMonitor")
    services = by_kind(docs, "Service")
    assert set(monitors) == {f"mesh-{d}" for d in DAEMONS}
    for name, sm in monitors.items():
        _service_monitor_shape(sm, services[name])
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not by_kind(render(), "ServiceMonitor")
