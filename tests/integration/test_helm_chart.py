"""The Helm chart lints, renders in its main configurations, and every rendered
object passes strict Kubernetes schema validation (offline schemas from the
kubernetes-validate package, because CI has no route to schema hosts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "agentmesh"


def helm() -> str:
    path = shutil.which("helm") or os.path.expanduser("~/go/bin/helm")
    if not Path(path).exists():
        if os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail("helm is not installed: run `bash deploy/local/tools.sh`")
        pytest.skip("helm not installed (bash deploy/local/tools.sh)")
    return path


def render(*sets: str) -> list[dict]:
    args = [helm(), "template", "mesh", str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_lints() -> None:
    subprocess.run([helm(), "lint", "--strict", str(CHART)], check=True, timeout=60)


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("auth.enabled=true", "tls.enabled=true", "tls.mutual=true"),
        ("bus.backend=memory", "daemons.swarm.enabled=false", "podDisruptionBudget.enabled=false"),
    ],
)
def test_rendered_objects_pass_strict_schema(sets: tuple[str, ...], tmp_path: Path) -> None:
    import kubernetes_validate

    docs = render(*sets)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert "mesh-registry" in deployments
    if "daemons.swarm.enabled=false" in sets:
        assert "mesh-swarm" not in deployments


def test_probes_use_grpc_health_and_ports_match_design() -> None:
    docs = render()
    ports = {"bus": 50051, "router": 50052, "registry": 50053, "saga": 50054, "swarm": 50055}
    for name, port in ports.items():
        dep = next(
            d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"mesh-{name}"
        )
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["grpc"]["port"] == port
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["AGENTMESH_PORT"] == str(port)
        assert c["args"] == [f"agentmesh-{name}"]
