"""The daemons' image (deploy/docker/Dockerfile), checked without Docker:
hadolint, then the properties the Helm chart relies on, read with
dockerfile-parse; the .dockerignore keeps the build context to the sources;
the entry point dispatches to each daemon."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.deploy.chart import CHART, DAEMONS, ROOT

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs with ARG defaults substituted in FROM lines."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    return [
        (i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"
    ]


def stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage (the first list holds the global ARGs)."""
    out: list[list[tuple[str, str]]] = [[]]
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def global_args() -> dict[str, str]:
    return dict(v.split("=", 1) for k, v in stages()[0] if k == "ARG")


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path=sysconfig.get_path("scripts"))
    if path is None:
        if os.environ.get("CI") or os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail(f"{tool} is not installed: run `bash .ci/install.sh`")
        pytest.skip(f"{tool} not installed")
    return path


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [require("hadolint"), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install agentmesh\n")
    proc = subprocess.run([require("hadolint"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_multi_stage_on_slim_python_pinned_by_tag() -> None:
    args = global_args()
    froms = [value for stage in stages()[1:] for key, value in stage if key == "FROM"]
    assert len(froms) == 3
    images = []
    for value in froms:
        image, _, name = value.partition(" AS ")
        images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
        assert name, f"unnamed stage {value!r}"
    assert froms[-1].endswith(" AS runtime")
    for image in images:
        _repo, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{image} is not pinned by tag"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", images[-1])
    assert images[1] == images[-1]  # the venv is built on the image it runs on


def test_runtime_stage_runs_as_the_charts_non_root_uid() -> None:
    runtime = dict(stages()[-1])
    user = runtime["USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), (
        user
    )  # numeric: runAsNonRoot checks it
    values = yaml.safe_load((CHART / "values.yaml").read_text())["global"]
    assert (
        int(uid)
        == values["securityContext"]["runAsUser"]
        == values["podSecurityContext"]["runAsUser"]
    )
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    assert f"--uid {uid}" in runtime["RUN"]
    # read-only root: nothing to write outside /tmp at run time
    env = " ".join(v for k, v in stages()[-1] if k == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "MPLCONFIGDIR=/tmp/"):
        assert setting in env


def test_grpc_health_probe_is_built_at_the_tools_sh_pin() -> None:
    tools = (ROOT / "deploy" / "local" / "tools.sh").read_text()
    pin = re.search(r'"grpc-health-probe\|[^|]+\|[^|]+\|(v[\d.]+)\|', tools)
    assert pin, "grpc-health-probe pin not found in deploy/local/tools.sh"
    probe_stage = stages()[1]
    assert ("ARG", f"GRPC_HEALTH_PROBE_VERSION={pin.group(1)}") in probe_stage
    assert any(k == "RUN" and "go install" in v for k, v in probe_stage)
    copies = [v for k, v in stages()[-1] if k == "COPY"]
    assert "--from=probe /out/grpc-health-probe /usr/local/bin/grpc-health-probe" in copies
    # the chart's TLS probes and test pod call it by this name
    test_pod = (CHART / "templates" / "tests" / "test-health.yaml").read_text()
    assert 'command: ["grpc-health-probe"]' in test_pod


def test_entrypoint_and_ports_match_the_chart() -> None:
    runtime = dict(stages()[-1])
    assert runtime["ENTRYPOINT"] == '["agentmesh-daemon"]'
    exposed = {int(p) for p in runtime["EXPOSE"].split()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for daemon in DAEMONS:
        ports = values[daemon]["ports"]
        assert {ports["grpc"], ports["metrics"]} <= exposed
    assert "HEALTHCHECK" not in runtime  # Kubernetes ignores it; the chart probes instead


def _dockerignore_patterns() -> list[tuple[bool, str]]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [
        (line.startswith("!"), line.lstrip("!").rstrip("/"))
        for line in (raw.strip() for raw in lines)
        if line and not line.startswith("#")
    ]


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, pattern in _dockerignore_patterns():
        glob = pattern.removeprefix("**/")
        for cand in candidates:
            names = [cand] + ([cand.split("/")[-1]] if pattern.startswith("**/") else [])
            if any(fnmatch.fnmatchcase(n, glob) for n in names):
                verdict = not negate
    return verdict


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    for path in (
        ".git/HEAD",
        ".run/setup.stamp",
        "tests/conftest.py",
        "demo-out/report.json",
        "perf/run_all.py",
        "deploy/local/kafka/target/x.jar",
        "agentmesh.egg-info/PKG-INFO",
        "libs/agentmesh/__pycache__/x.pyc",
        "deploy/helm/agentmesh/values.yaml",
        ".venv/bin/python",
        "examples/x.py",
    ):
        assert ignored(path), path
    for path in (
        "pyproject.toml",
        "README.md",
        "libs/agentmesh/runtime/server.py",
        "services/bus/__main__.py",
        "deploy/docker/entrypoint.sh",
    ):
        assert not ignored(path), path


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = []
    for stage in stages()[1:]:
        for key, value in stage:
            if key != "COPY" or "--from=" in value:
                continue
            words = [w for w in value.split() if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not ignored(src), f"COPY {src}: excluded by .dockerignore"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_entrypoint_runs_each_daemon(daemon: str) -> None:
    env = {**os.environ, "PATH": sysconfig.get_path("scripts") + os.pathsep + os.environ["PATH"]}
    for name in (daemon, f"agentmesh-{daemon}"):
        proc = subprocess.run(
            ["sh", str(ENTRYPOINT), name, "--help"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: agentmesh-{daemon} "), proc.stdout[:200]


def test_entrypoint_refuses_an_unknown_daemon_and_needs_one() -> None:
    proc = subprocess.run(["sh", str(ENTRYPOINT), "gateway"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown daemon 'gateway'" in proc.stderr
    proc = subprocess.run(["sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: agentmesh-daemon" in proc.stderr
    proc = subprocess.run(["sh", str(ENTRYPOINT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "bus | router | registry | saga | swarm" in proc.stdout


def test_entrypoint_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
