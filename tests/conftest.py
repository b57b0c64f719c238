"""Session-wide test infrastructure: a real Redis and a real KRaft Kafka broker.

Fixtures:
    redis_server  (session) `tests.infra.RedisServer`, started on first use.
    kafka_broker  (session) `tests.infra.KafkaBroker`, started on first use.
    redis_url     (function) URL of a flushed logical DB on `redis_server`.
    redis_cluster (session) `tests.infra.RedisClusterServer`: a 3-master,
                  3-replica Redis Cluster on free loopback ports, started on
                  first use (deploy/local/redis.sh cluster), stopped by PID.
    kafka_cluster (session) `tests.infra.KafkaCluster`: three KRaft nodes
                  (broker + controller each) on free loopback ports, started
                  on first use (deploy/local/kafka.sh cluster), stopped by
                  PID; `.bootstrap` lists the three brokers. A test that
                  kills a node (`.kill(port)`) restarts it (`.start()`)
                  before it ends, so later users find all three.
    cluster_redis (function) an asyncio Redis Cluster client on `redis_cluster`,
                  every master flushed first.
    store_redis   (function, parametrized "single" / "cluster") an asyncio
                  client for store-level tests that run on both: a flushed
                  logical DB of `redis_server`, then `cluster_redis`. A test
                  module opts in by using it (the registry, saga, swarm and
                  router store tests do), so each such test runs once on
                  Redis Cluster too.

Environment:
    AGENTMESH_TEST_REDIS_URL       use this running Redis instead of starting one;
                                   `redis_server` is then an `ExternalRedis`
                                   (`.managed` is False; stop()/restart() raise, so
                                   tests that restart Redis must start their own
                                   `RedisServer`).
    AGENTMESH_TEST_KAFKA_BOOTSTRAP use this running broker instead of starting one.
    CI=1 / AGENTMESH_REQUIRE_INFRA=1  a server that fails to start errors the run;
                                   elsewhere the dependent tests are skipped.

`redis_url` hands each test logical DB 1..15 in turn (DB 0 is left to whoever
uses the server by hand) and runs FLUSHDB on it first. The rotation starts at
an offset derived from the PID so two sessions sharing one external Redis
rarely pick the same DB at the same moment; they can, though, so concurrent
runs that need full isolation should leave AGENTMESH_TEST_REDIS_URL unset and
get a private server. Tests using `redis_url` must not rely on data surviving
more than 14 later tests.

Areas add their own fixtures in conftest files below tests/.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra import (
    ExternalKafka,
    ExternalRedis,
    InfraError,
    KafkaBroker,
    KafkaCluster,
    RedisClusterServer,
    RedisServer,
    flush_db,
)

_MARKERS = {
    "integration": "needs real Redis and/or Kafka processes",
    "e2e": "runs the whole mesh end to end",
    "kafka": "needs the Kafka broker (slower to start than Redis)",
    "slow": "takes more than a few seconds",
}

_REDIS_DBS = 15  # logical DBs 1..15 of a default (databases 16) Redis


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def _infra_required() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("CI", "AGENTMESH_REQUIRE_INFRA"))


def _unavailable(what: str, err: Exception) -> None:
    # CI must never go green by skipping the tests that matter most.
    if _infra_required():
        pytest.fail(f"{what} failed to start (CI/AGENTMESH_REQUIRE_INFRA set): {err}")
    pytest.skip(f"{what} unavailable: {err}")


def _session_server(
    env_var: str,
    external: Callable[[str], Any],
    managed: Callable[..., Any],
    what: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """`external(address)` if `env_var` is set, else a started `managed(workdir=...)`."""
    address = os.environ.get(env_var)
    if address:
        yield external(address)
        return
    server = managed(workdir=Path(tmp_path_factory.mktemp(what.lower())))
    try:
        server.start()
    except InfraError as e:
        _unavailable(what, e)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may pause (SIGSTOP) or
    demote; resumed before it is stopped."""
    server = RedisServer(workdir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        pid = server.pid
        if pid is not None:  # a paused server cannot stop
            os.kill(pid, signal.SIGCONT)
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis for the whole session: external if AGENTMESH_TEST_REDIS_URL is set."""
    yield from _session_server(
        "AGENTMESH_TEST_REDIS_URL", ExternalRedis, RedisServer, "Redis", tmp_path_factory
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A KRaft broker for the whole session: external if AGENTMESH_TEST_KAFKA_BOOTSTRAP is set."""
    yield from _session_server(
        "AGENTMESH_TEST_KAFKA_BOOTSTRAP", ExternalKafka, KafkaBroker, "Kafka", tmp_path_factory
    )


_db_cycle = itertools.cycle([1 + (os.getpid() + i) % _REDIS_DBS for i in range(_REDIS_DBS)])


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """URL of a logical DB (1..15, rotating) on `redis_server`, flushed before the test."""
    return flush_db(redis_server.url_for_db(next(_db_cycle)))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """Six redis-server processes joined as 3 masters + 3 replicas, for the session."""
    server = RedisClusterServer(workdir=Path(tmp_path_factory.mktemp("redis-cluster")))
    try:
        server.start()
    except InfraError as e:
        _unavailable("Redis Cluster", e)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three KRaft Kafka nodes (deploy/local/kafka.sh cluster), for the session."""
    cluster = KafkaCluster(workdir=Path(tmp_path_factory.mktemp("kafka-cluster")))
    try:
        cluster.start()
    except InfraError as e:
        _unavailable("Kafka cluster", e)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServer) -> AsyncIterator[Any]:
    """A Redis Cluster client (`create_redis(cluster_nodes=...)`), all masters flushed."""
    from agentmesh.runtime.deps import create_redis

    redis_cluster.flush_all()
    client = create_redis(redis_cluster.url, cluster_nodes=redis_cluster.startup_nodes)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["single", "cluster"])
async def store_redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    """A client on a flushed single Redis DB, then (second run) on Redis Cluster."""
    from agentmesh.runtime.deps import create_redis

    if request.param == "cluster":
        # The session cluster is a sync fixture, so it can be looked up here
        # (an async one cannot be from inside this fixture's event loop).
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        cluster.flush_all()
        client = create_redis(cluster.url, cluster_nodes=cluster.startup_nodes)
    else:
        client = create_redis(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
