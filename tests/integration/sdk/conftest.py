"""Fixtures for SDK integration tests: Redis DB 6 (sdk/cli/demo) and agent processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import DaemonProcess

#: Logical Redis DB of the sdk/cli/demo tests.
SDK_DB = 6


@pytest.fixture
def sdk_redis_url(redis_server: Any) -> str:
    """URL of DB 6. Not flushed (the CLI and demo tests share it); tests use unique ids."""
    return str(redis_server.url_for_db(SDK_DB))


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start `python -m agentmesh.agent.testing <kind> ...` processes; all are stopped after."""
    started: list[DaemonProcess] = []

    def spawn(kind: str, *flags: str, agent_id: str = "") -> DaemonProcess:
        agent_id = agent_id or f"agent-t-{uuid.uuid4().hex[:10]}"
        p = DaemonProcess(
            ["-m", "agentmesh.agent.testing", kind, "--agent-id", agent_id, "--port", "0",
             *flags],
            tmp_path / f"{agent_id}-{len(started)}.log",
        )
        started.append(p)
        p.agent_id = agent_id  # type: ignore[attr-defined]
        return p.start()

    yield spawn
    for p in started:
        p.stop()
    _forget_agents(started)


def _forget_agents(procs: list[DaemonProcess]) -> None:
    """Delete what the agents left in Redis (idempotency results, effects)."""
    import redis

    for p in procs:
        if "--redis-url" not in p.args:
            continue
        url = p.args[p.args.index("--redis-url") + 1]
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            keys = list(client.scan_iter(f"am:agent:{p.agent_id}:*", count=500))  # type: ignore[attr-defined]
            if keys:
                client.delete(*keys)
        except redis.ConnectionError:
            pass  # a test's private Redis, already stopped
        finally:
            client.close()
