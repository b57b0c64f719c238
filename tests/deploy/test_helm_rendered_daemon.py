"""A daemon started the way the chart starts it: the image's entry point
(deploy/docker/entrypoint.sh) with the Deployment's args and the environment
of its ConfigMap, against the real test Redis. Only the bind address and
ports are moved to loopback and free ports, as tests must."""

from __future__ import annotations

import os
import signal
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.chart import by_kind, container, daemon_env, render
from tests.health import wait_health
from tests.procs import DaemonProcess

pytestmark = pytest.mark.integration

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "entrypoint.sh"


async def test_registry_runs_from_the_rendered_manifest_and_drains_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    docs = render(f"global.redis.url={redis_url}", "global.gracePeriodSeconds=3")
    args = container(by_kind(docs, "Deployment")["mesh-registry"])["args"]
    env = daemon_env(docs, "registry")
    assert env["AGENTMESH_REDIS_URL"] == redis_url
    env.update(AGENTMESH_HOST="127.0.0.1", AGENTMESH_PORT="0", AGENTMESH_METRICS_PORT="0")
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.environ["PATH"]
    # python execs sh, which execs the daemon: one PID, as PID 1 in the pod
    launcher = "import os, sys; os.execvp('sh', ['sh', *sys.argv[1:]])"
    proc = DaemonProcess(["-c", launcher, str(ENTRYPOINT), *args], tmp_path / "reg.log", env)
    with proc.start():
        await wait_health(proc.target, 1, timeout_s=20)  # SERVING: its Redis probe passes
        proc.signal(signal.SIGTERM)
        # exec means the daemon itself got SIGTERM: it drains and exits 0
        assert proc.wait(timeout_s=20) == 0, proc.tail()
    assert '"msg": "serving"' in proc.tail(200)
