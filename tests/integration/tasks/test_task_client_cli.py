"""The client SDK's schedule_task / wait_task and `agentmesh task ...` on a
real coordinator with real SDK agents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.client import Client, TaskCancelled, TaskFailed, TaskTimedOut
from agentmesh.runtime.errors import NotFound
from tests.procs import DaemonProcess, scrape_metrics

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[3]


async def test_wait_task_returns_the_result(coordinator: DaemonProcess) -> None:
    async with Client(saga=coordinator.target) as c:
        t = (await c.schedule_task(task_type="echo", agent_id="ta-a", payload={"k": "v"},
                                   priority="PRIORITY_HIGH")).task
        out = await c.wait_task(t.task_id, timeout_s=20)
    assert out["echo"] == {"k": "v"} and out["agent"] == "ta-a"


async def test_wait_task_raises_for_each_unsuccessful_end(coordinator: DaemonProcess) -> None:
    async with Client(saga=coordinator.target) as c:
        failed = (await c.schedule_task(task_type="fail", agent_id="ta-a")).task
        with pytest.raises(TaskFailed) as ei:
            await c.wait_task(failed.task_id, timeout_s=20)
        assert ei.value.task.error.code == "FAILED_PRECONDITION"
        slow = (await c.schedule_task(task_type="slow", agent_id="ta-a", timeout=0.2,
                                      payload={"delay_ms": 2000},
                                      retry_policy={"max_attempts": 1})).task
        with pytest.raises(TaskTimedOut):
            await c.wait_task(slow.task_id, timeout_s=20)
        queued = (await c.schedule_task(task_type="echo", selector={"capabilities": ["none"]})
                  ).task
        await c.cancel_task(task_id=queued.task_id)
        with pytest.raises(TaskCancelled):
            await c.wait_task(queued.task_id, timeout_s=20)
        with pytest.raises(NotFound):
            await c.wait_task("t-missing", timeout_s=5)


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", "--saga", target, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


async def test_cli_schedule_get_list_wait_cancel(coordinator: DaemonProcess) -> None:
    res = cli(coordinator.target, "task", "schedule", "echo", "--agent", "ta-a",
              "--payload", '{"n": 7}', "--priority", "low", "-o", "json")
    assert res.returncode == 0, res.stderr
    task = json.loads(res.stdout)
    tid = task["task_id"]
    assert task["state"] == "TASK_STATE_PENDING" and task["priority"] == "PRIORITY_LOW"
    res = cli(coordinator.target, "task", "wait", tid)
    assert res.returncode == 0, res.stderr
    assert "COMPLETED" in res.stdout
    got = json.loads(cli(coordinator.target, "task", "get", tid, "-o", "json").stdout)
    assert got["result"]["echo"] == {"n": 7}
    listed = cli(coordinator.target, "task", "list", "--type", "echo", "--state", "completed")
    assert listed.returncode == 0 and "2 tasks" in listed.stdout  # a table
    listed = cli(coordinator.target, "task", "list", "--type", "echo", "--state", "completed",
                 "-o", "json")
    assert tid in [t["task_id"] for t in json.loads(listed.stdout)]
    res = cli(coordinator.target, "task", "schedule", "echo", "--capability", "absent",
              "-o", "json")
    queued = json.loads(res.stdout)["task_id"]
    res = cli(coordinator.target, "task", "cancel", queued, "-o", "json")
    assert json.loads(res.stdout)["state"] == "TASK_STATE_CANCELLED"
    assert cli(coordinator.target, "task", "wait", queued).returncode == 1
    bad = cli(coordinator.target, "task", "schedule", "", "--agent", "ta-a")
    assert bad.returncode != 0 and "task_type" in (bad.stdout + bad.stderr)


async def test_task_metrics_are_exported(coordinator: DaemonProcess) -> None:
    async with Client(saga=coordinator.target) as c:
        t = (await c.schedule_task(task_type="metered", agent_id="ta-a",
                                   priority="PRIORITY_CRITICAL")).task
        await c.wait_task(t.task_id, timeout_s=20)
    text = scrape_metrics(coordinator.metrics_port)
    assert 'task_scheduled_total{priority="critical",type="metered"} 1.0' in text
    assert 'task_completed_total{status="completed",type="metered"} 1.0' in text
    for name in ("task_queue_depth{priority=\"low\"}", "task_wait_ms_count", "task_run_ms_count"):
        assert name in text, name
