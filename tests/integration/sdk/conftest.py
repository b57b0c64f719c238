"""Fixtures for SDK integration tests: Redis DB 6 (sdk/cli/demo) and agent processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents import forget_agent_keys
from tests.procs import AgentProcess, ProcessGroup, testing_agent

#: Logical Redis DB of the sdk/cli/demo tests.
SDK_DB = 6


@pytest.fixture
def sdk_redis_url(redis_server: Any) -> str:
    """URL of DB 6. Not flushed (the CLI and demo tests share it); tests use unique ids."""
    return str(redis_server.url_for_db(SDK_DB))


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start `python -m agentmesh.agent.testing <kind> ...` processes; all are stopped
    after the test and their Redis keys (when given `--redis-url`) deleted."""
    group = ProcessGroup()

    def spawn(kind: str, *flags: str, agent_id: str = "") -> AgentProcess:
        return group.start(testing_agent(kind, tmp_path, *flags, agent_id=agent_id))

    yield spawn
    group.stop_all()
    for p in group.started:
        if "--redis-url" in p.args:
            forget_agent_keys(p.args[p.args.index("--redis-url") + 1], p.agent_id)  # type: ignore[attr-defined]
