"""A whole local stack started by `agentmesh up` on free, non-default ports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentmesh.cli.stack import free_port_block as _stack_free_port_block
from tests.procs import ROOT


def free_port_block(count: int = 11) -> int:
    """A base port B with B..B+count-1 all free (gRPC 5, metrics 5, Redis 1)."""
    return _stack_free_port_block(count, lo=21_000, hi=32_700)


def cli(
    *args: str, timeout_s: float = 120.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `python -m agentmesh.cli.main <args>` and capture its output."""
    res = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", *args],
                         capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if check and res.returncode != 0:
        raise AssertionError(f"agentmesh {' '.join(args)} exited {res.returncode}:\n"
                             f"{res.stdout}\n{res.stderr}")
    return res


@dataclass
class Stack:
    run_dir: Path
    base: int
    up_doc: dict[str, Any]

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return cli("--run-dir", str(self.run_dir), *args, **kw)

    def target(self, daemon: str) -> str:
        return f"127.0.0.1:{self.up_doc['daemons'][daemon]['port']}"

    @property
    def pids(self) -> list[int]:
        return [int(d["pid"]) for d in self.up_doc["daemons"].values()]

    @property
    def redis_url(self) -> str:
        return str(self.up_doc["redis_url"])


def up_args(run_dir: Path, base: int) -> list[str]:
    return ["--run-dir", str(run_dir), "up", "--base-port", str(base),
            "--metrics-base-port", str(base + 5), "--redis-port", str(base + 10),
            "--timeout-s", "90", "-o", "json"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("stack")
    for _ in range(2):  # a second block if another process grabbed one of ours meanwhile
        base = free_port_block()
        res = cli(*up_args(run_dir, base), timeout_s=150)
        if res.returncode == 0:
            break
        cli("--run-dir", str(run_dir), "down")
    else:
        raise AssertionError(f"up failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    s = Stack(run_dir, base, json.loads(res.stdout))
    try:
        yield s
    finally:
        cli("--run-dir", str(run_dir), "down", timeout_s=120)
