"""A newcomer's install paths, each in a fresh virtualenv:

* `pip install .` (no extras) gives the agent SDK, the client and the CLI
  without the daemons' engines: importing them works with confluent-kafka,
  redis-py, cel-python and matplotlib absent, and the distribution claims no
  top-level module but `agentmesh`;
* the demo's setup path (`bash .ci/install.sh demo`, what `make demo` runs)
  with no Go toolchain and no Go tools on PATH installs what the demo needs,
  and the demo then completes.

Both need the package index (pip downloads the dependencies); the demo venv
reuses pip's cache from the first one.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--suppliers", "2000", "--agents", "6", "--partitions", "30",
         "--agents-per-process", "3", "--samples", "4", "--heartbeat-interval-s", "2"]
ENGINES = ("confluent_kafka", "redis", "celpy", "matplotlib", "uhashring", "semver")

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without AgentMesh settings and without Go on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTMESH_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        d for d in env.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "go").exists() and not (Path(d) / "grpcurl").exists()
    )
    env.update(extra)
    return env


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout_s: float
         ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout_s, check=False)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-3000:]}"
    return res


def test_plain_install_is_the_sdk_and_client_without_the_engines(tmp_path: Path) -> None:
    py = _venv(tmp_path / "venv")
    env = _clean_env()
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
         env=env, cwd=tmp_path, timeout_s=400)
    probe = f"""
import importlib.util, json
from importlib.metadata import distribution
import agentmesh.agent, agentmesh.client, agentmesh.cli.main
from agentmesh.agent import Agent
from agentmesh.client import Client
agent = Agent("fresh-1", agent_type="fresh", version="1.0.0", capabilities=["x"])
dist = distribution("agentmesh")
files = [str(f) for f in dist.files or []]
print(json.dumps({{
    "absent": [m for m in {ENGINES!r} if importlib.util.find_spec(m) is None],
    "top_level": sorted({{f.split("/")[0] for f in files
                          if f.endswith(".py") and "/" in f and ".dist-info" not in f}}),
    "daemons": sorted(f for f in files if f.startswith("agentmesh/server/")
                      and f.endswith("/__main__.py")),
}}))
"""
    # Run outside the checkout so nothing is imported from it by accident.
    out = _run([str(py), "-c", probe], env=env, cwd=tmp_path, timeout_s=120)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(doc["absent"]) == sorted(ENGINES), doc
    assert doc["top_level"] == ["agentmesh"], doc
    assert doc["daemons"] == [f"agentmesh/server/{d}/__main__.py"
                              for d in ("bus", "registry", "router", "saga", "swarm")], doc


def test_demo_setup_without_go_tools_then_the_demo_completes(tmp_path: Path) -> None:
    py = _venv(tmp_path / "venv")
    env = _clean_env(PYTHON=str(py))
    _run(["bash", str(ROOT / ".ci/install.sh"), "demo"], env=env, cwd=ROOT, timeout_s=400)
    absent = _run([str(py), "-c", "import importlib.util as u; "
                   "print(u.find_spec('grpc_tools') is None)"], env=env, cwd=tmp_path,
                  timeout_s=60)
    assert absent.stdout.strip() == "True", "the demo profile installed the dev tools"
    out = tmp_path / "demo-out"
    _run([str(py), "-m", "agentmesh.cli.main", "--output", "json", "demo", *SMALL,
          "--out", str(out)], env=env, cwd=tmp_path, timeout_s=240)
    report = json.loads((out / "report.json").read_text())
    checks = report["verification"]["checks"]
    assert report["verification"]["ok"] and all(checks.values()), checks
    assert (out / "top_naics.png").stat().st_size > 0  # the [demo] extra's charts
