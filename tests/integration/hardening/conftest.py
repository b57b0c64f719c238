"""Fixtures for the hardening tests: real daemon processes on the session's
real Redis (and Kafka for the bus gateway)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra import flush_db
from tests.procs import DaemonProcess, ProcessGroup, daemon, testing_agent

#: Logical Redis DB of these tests.
HARDENING_DB = 9

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def hardening_redis_url(redis_server: Any) -> str:
    """URL of this suite's DB on the session Redis, flushed before the test."""
    return flush_db(redis_server.url_for_db(HARDENING_DB))


@pytest.fixture
def start_daemon(tmp_path: Path, hardening_redis_url: str) -> Iterator[StartDaemon]:
    """Start `python -m agentmesh.server.<name>` on the test DB: `start_daemon(name, *flags)`;
    every daemon started is stopped at teardown."""
    group = ProcessGroup()

    def start(name: str, *flags: str, redis_url: str = "") -> DaemonProcess:
        args = ["--redis-url", redis_url or hardening_redis_url, "--health-interval-s", "0.3"]
        return group.start(daemon(name, tmp_path, *args, *flags))

    yield start
    group.stop_all()


#: The five daemons, by the name `python -m agentmesh.server.<name>` runs.
DAEMONS = ("bus", "router", "registry", "saga", "swarm")


@pytest.fixture(scope="module")
def mesh(
    redis_server: Any, kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonProcess]]:
    """All five daemons on one flushed Redis DB, the bus gateway on the real
    Kafka broker, and a `noop` test agent `agent-fuzz-1` registered (the
    seeds of tests/hardening_seeds.py route to it); stopped at the end of
    the module. Key "agent" is the agent process."""
    url = flush_db(redis_server.url_for_db(HARDENING_DB + 1))
    logs = tmp_path_factory.mktemp("hardening-mesh")
    common = ["--redis-url", url, "--health-interval-s", "0.3", "--grace-period-s", "2"]
    group = ProcessGroup()
    procs = {}
    try:
        for name in DAEMONS:
            extra = ["--kafka-bootstrap", kafka_broker.bootstrap] if name == "bus" else []
            procs[name] = group.start(daemon(name, logs, *common, *extra))
        procs["agent"] = group.start(
            testing_agent(
                "noop", logs, "--registry-target", procs["registry"].target,
                agent_id="agent-fuzz-1",
            )
        )
        yield procs
    finally:
        group.stop_all()
