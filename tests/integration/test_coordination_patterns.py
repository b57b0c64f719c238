"""The seeds' coordination examples as real processes against a real registry,
router, bus gateway and saga coordinator on the real Redis:
examples/coordination_patterns.py (the five patterns; each asserts its own
outcome and prints one line) and examples/process_heat_orchestrator.py (GL-001
on the Orchestrator base class)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentmesh.client import Client
from tests.infra import flush_db
from tests.integration.leader_candidate import FENCED_SET
from tests.procs import ROOT, DaemonProcess, ProcessGroup, daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration

#: A logical DB no other module uses.
PATTERNS_DB = 5
PATTERNS = ("master_slave", "peer_to_peer", "consensus", "choreography", "orchestration")


@pytest.fixture(scope="module")
def stack(
    redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, DaemonProcess]]]:
    url = flush_db(redis_server.url_for_db(PATTERNS_DB))
    logs = tmp_path_factory.mktemp("patterns")
    group = ProcessGroup()
    try:
        procs = {
            "registry": group.start(daemon("registry", logs, "--redis-url", url)),
            "router": group.start(daemon("router", logs, "--redis-url", url)),
            "bus": group.start(daemon("bus", logs, "--redis-url", url, "--backend", "memory")),
            "saga": group.start(daemon("saga", logs, "--redis-url", url)),
        }
        yield url, procs
    finally:
        group.stop_all()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_runs(stack: tuple[str, dict[str, DaemonProcess]], pattern: str) -> None:
    url, procs = stack
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "coordination_patterns.py"), pattern,
         "--registry", procs["registry"].target, "--bus", procs["bus"].target,
         "--saga", procs["saga"].target, "--redis-url", url],
        capture_output=True, text=True, timeout=120, cwd=Path(ROOT),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"{pattern.upper()} ok: "), out.stdout + out.stderr


def test_unknown_pattern_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "coordination_patterns.py"), "gossip"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "unknown pattern(s) gossip" in out.stderr


def _heat(stack: tuple[str, dict[str, DaemonProcess]], *extra: str) -> tuple[int, dict[str, Any]]:
    url, procs = stack
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "process_heat_orchestrator.py"),
         "--registry", procs["registry"].target, "--router", procs["router"].target,
         "--bus", procs["bus"].target, "--saga", procs["saga"].target, "--redis-url", url,
         *extra],
        capture_output=True, text=True, timeout=120,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, out.stdout + out.stderr
    return out.returncode, json.loads(lines[-1])


def test_process_heat_orchestrator_reads_votes_and_applies(
    stack: tuple[str, dict[str, DaemonProcess]],
) -> None:
    code, res = _heat(stack, "--target-c", "530")
    assert code == 0 and res["success"], res
    out = res["output"]
    # mean of 498, 505, 510 = 504.333; 500 + 1.5 * (530 - 504.333) = 538.5
    assert out["mean_temperature_c"] == pytest.approx(504.333, abs=1e-3)
    # 2 of 3 approvals decide it; a third vote may land before or after.
    assert out["setpoint_c"] == 538.5 and out["votes_for"] >= 2
    assert out["applied"]["set"]["setpoint_c"] == 538.5 and out["applied"]["verify"]["verified"]
    kinds = [k for k, _ in res["operations"]]
    assert kinds == ["invoke", "invoke", "invoke", "proposal", "bus", "saga"], kinds
    assert re.fullmatch(r"[0-9a-f]{64}", res["provenance_hash"])


def test_process_heat_orchestrator_refuses_an_unsafe_setpoint(
    stack: tuple[str, dict[str, DaemonProcess]],
) -> None:
    """500 + 1.5 * (600 - 504.3) = 643.5 > 600: the THRESHOLD constraint refuses
    it before any vote or saga."""
    code, res = _heat(stack, "--target-c", "600", "--max-step-c", "500")
    assert code == 1 and not res["success"]
    assert res["error"].startswith("SafetyViolation: set_setpoint refused by gl001-max-setpoint")
    assert [k for k, _ in res["operations"]] == ["invoke", "invoke", "invoke"]


def test_process_heat_operators_reject_a_large_step(
    stack: tuple[str, dict[str, DaemonProcess]],
) -> None:
    code, res = _heat(stack, "--target-c", "530", "--max-step-c", "10")
    assert code == 1 and "did not approve 538.5 C: PROPOSAL_STATE_REJECTED" in res["error"]
    assert "saga" not in [k for k, _ in res["operations"]]


async def test_a_sigstopped_leader_is_replaced_and_its_late_writes_refused(
    stack: tuple[str, dict[str, DaemonProcess]], tmp_path: Path,
) -> None:
    """MASTER_SLAVE under failure: the leader process is paused (SIGSTOP), its
    term expires, this candidate is elected with a larger token and writes; on
    SIGCONT the old leader's writes are refused by the fenced store and its
    block ends in LockLost."""
    url, procs = stack
    role, key = f"patterns-leader-{uuid.uuid4().hex[:6]}", f"patterns:fenced:{uuid.uuid4().hex[:6]}"
    leader = DaemonProcess(
        [str(Path(__file__).parent / "leader_candidate.py"), procs["registry"].target, url,
         role, key, "600"],
        tmp_path / "leader.log",
    ).start()
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        old = next(d for d in leader._log_docs(0) if d.get("msg") == "serving")["token"]
        await eventually(lambda: r.hget(key, "token"), what="the leader's first write")
        leader.signal(signal.SIGSTOP)
        async with Client(registry=procs["registry"].target) as c:
            async with c.elect(role, ttl_ms=10_000, campaign_timeout_s=20) as term:
                assert term.fencing_token > old
                script = r.register_script(FENCED_SET)
                assert await script(keys=[key], args=[term.fencing_token, "new leader"]) == 1
                leader.signal(signal.SIGCONT)
                lost = await eventually(
                    lambda: next((d for d in leader._log_docs(0) if d.get("msg") == "lost"), None),
                    timeout_s=20, what="the old leader's LockLost",
                )
                assert lost["token"] == old and leader.wait(10) == 0
                # Whatever the old leader tried after waking, the store kept ours.
                assert await r.hgetall(key) == {"token": str(term.fencing_token),
                                                "value": "new leader"}
    finally:
        leader.signal(signal.SIGCONT)
        leader.stop()
        await r.aclose()
