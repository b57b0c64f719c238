"""Render the Helm chart with the pinned helm binary, for the chart tests.

`render(values_files, sets)` runs `helm template` and returns the objects;
`render_error` returns helm's error for values that must be refused. Offline:
nothing here reaches a cluster or a schema host.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "agentmesh"
#: Kubernetes version the manifests are rendered for and validated against.
KUBE_VERSION = "1.30.0"
DAEMONS = ("bus", "router", "registry", "saga", "swarm")
#: Example and CI values files; each must lint, render and validate.
VALUES_FILES = [
    *sorted(p.relative_to(CHART).as_posix() for p in CHART.glob("ci/*-values.yaml")),
    "values-ha.yaml",
]
RELEASE = "mesh"


def helm() -> str:
    """Path of helm (deploy/local/tools.sh installs it); skips, or fails under CI."""
    path = shutil.which("helm") or os.path.expanduser("~/go/bin/helm")
    if not Path(path).exists():
        if os.environ.get("AGENTMESH_REQUIRE_INFRA") or os.environ.get("CI"):
            pytest.fail("helm is not installed: run `bash deploy/local/tools.sh`")
        pytest.skip("helm not installed (bash deploy/local/tools.sh)")
    return path


def _template_args(values: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    args = [
        helm(),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        "agentmesh",
        "--kube-version",
        KUBE_VERSION,
    ]
    for v in values:
        args += ["--values", str(CHART / v)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def _render(values: tuple[str, ...], sets: tuple[str, ...]) -> str:
    proc = subprocess.run(_template_args(values, sets), capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise AssertionError(f"helm template {values} {sets} failed:\n{proc.stderr}")
    return proc.stdout


def render(*sets: str, values: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The objects `helm template` renders (test hooks included)."""
    import yaml

    return [d for d in yaml.safe_load_all(_render(tuple(values), tuple(sets))) if d]


def render_error(*sets: str, values: tuple[str, ...] = ()) -> str:
    """helm's stderr for values that must fail; raises if rendering succeeds."""
    proc = subprocess.run(
        _template_args(tuple(values), tuple(sets)), capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 0:
        raise AssertionError(f"helm template accepted {values} {sets}")
    return proc.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of `kind` by metadata.name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The one container of a daemon's Deployment."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def daemon_env(docs: list[dict[str, Any]], daemon: str) -> dict[str, str]:
    """The environment the daemon's container gets: its ConfigMap (envFrom),
    then `env` (secret references become `<secret>/<key>` placeholders)."""
    name = f"{RELEASE}-{daemon}"
    env = dict(by_kind(docs, "ConfigMap")[name]["data"])
    for e in container(by_kind(docs, "Deployment")[name]).get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = f"{ref['name']}/{ref['key']}"
    return env
