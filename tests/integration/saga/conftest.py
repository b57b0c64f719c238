"""Saga integration fixtures: Redis DB 3, real test-agent processes, real coordinators.

Agents are registered the way the registry does it (the documented contract
`am:reg:agent:{id}` HASH with `endpoint` and `status`, written by
tests.registry_records) into the saga test DB, so these tests do not depend
on the registry daemon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import duration_pb2

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.infra import flush_db
from tests.procs import AgentProcess, DaemonProcess, daemon
from tests.registry_records import queue_agent_record

SAGA_DB = 3
HERE = Path(__file__).resolve().parent
FAST = ("--lease-ttl-ms", "1500", "--renew-interval-ms", "300", "--recovery-interval-ms", "300")


@pytest.fixture(scope="module")
def saga_redis_url(redis_server: Any) -> str:
    """URL of the saga test DB (3), flushed once per module."""
    return flush_db(redis_server.url_for_db(SAGA_DB))


@pytest.fixture(scope="module")
def rsync(saga_redis_url: str) -> redis.Redis:
    """A synchronous client on the saga test DB (decoded strings)."""
    return redis.Redis.from_url(saga_redis_url, decode_responses=True)


def start_agent(agent_id: str, url: str, log_dir: Path, r: redis.Redis) -> AgentProcess:
    """Start a saga_agent.py process and register its endpoint."""
    p = AgentProcess(
        [str(HERE / "saga_agent.py"), "--agent-id", agent_id, "--port", "0",
         "--metrics-port", "-1", "--redis-url", url],
        log_dir / f"agent-{agent_id}.log",
        agent_id=agent_id,
    ).start()
    with r.pipeline() as pipe:
        queue_agent_record(pipe, agent_id, endpoint=p.target, capabilities=["saga_test"])
        pipe.execute()
    return p


@pytest.fixture(scope="module")
def agent(
    saga_redis_url: str, rsync: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """The test agent `saga-agent-a`."""
    with start_agent("saga-agent-a", saga_redis_url, tmp_path_factory.mktemp("agents"), rsync) as p:
        yield p


def start_coordinator(url: str, log_dir: Path, *extra: str) -> DaemonProcess:
    """Start `python -m agentmesh.server.saga` on free ports with fast leases."""
    return daemon(
        "saga", log_dir, "--redis-url", url, *FAST, *extra
    ).start()


@pytest.fixture(scope="module")
def coordinator(
    saga_redis_url: str, agent: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """One saga coordinator for the module."""
    with start_coordinator(saga_redis_url, tmp_path_factory.mktemp("saga")) as p:
        yield p


@pytest.fixture
async def stub(coordinator: DaemonProcess) -> AsyncIterator[saga_pb2_grpc.SagaServiceStub]:
    """A SagaService client on the module's coordinator."""
    async with grpc.aio.insecure_channel(coordinator.target) as ch:
        yield saga_pb2_grpc.SagaServiceStub(ch)


# ---- helpers ------------------------------------------------------------------------
def ms(millis: int) -> duration_pb2.Duration:
    """A Duration of `millis` milliseconds."""
    d = duration_pb2.Duration()
    d.FromMilliseconds(millis)
    return d


def step(
    name: str,
    action: str = "",
    *,
    comp: str | None = None,
    deps: tuple[str, ...] = (),
    agent_id: str = "saga-agent-a",
    **kw: Any,
) -> saga_pb2.Step:
    """A Step on the test agent; compensation defaults to `undo_<name>`."""
    s = saga_pb2.Step(
        name=name,
        agent_id=agent_id,
        action=action or f"do_{name}",
        compensation_action=f"undo_{name}" if comp is None else comp,
        depends_on=list(deps),
        **kw,
    )
    return s


def chain(*names: str, **kw: Any) -> list[saga_pb2.Step]:
    """Steps that run one after another."""
    return [step(n, deps=(names[i - 1],) if i else (), **kw) for i, n in enumerate(names)]


async def wait_final(
    stub: saga_pb2_grpc.SagaServiceStub, saga_id: str, timeout_s: float = 30.0
) -> saga_pb2.Saga:
    """Poll GetSaga until the saga is in a final state."""
    final = {
        saga_pb2.SAGA_STATE_COMPLETED,
        saga_pb2.SAGA_STATE_COMPENSATED,
        saga_pb2.SAGA_STATE_FAILED,
        saga_pb2.SAGA_STATE_CANCELLED,
    }
    deadline = time.monotonic() + timeout_s
    while True:
        s = (await stub.GetSaga(saga_pb2.GetSagaRequest(saga_id=saga_id))).saga
        if s.state in final:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"saga {saga_id} not final after {timeout_s}s: {s}")
        await asyncio.sleep(0.05)


async def run(
    stub: saga_pb2_grpc.SagaServiceStub,
    steps: list[saga_pb2.Step],
    input: dict[str, Any] | None = None,
    **defn_kw: Any,
) -> saga_pb2.Saga:
    """Start an inline saga and wait for its final state."""
    d = saga_pb2.SagaDefinition(steps=steps, **defn_kw)
    req = saga_pb2.StartSagaRequest(definition=d)
    if input:
        req.input.update(input)
    started = await stub.StartSaga(req)
    return await wait_final(stub, started.saga.saga_id)


def effects(
    r: Any, saga_id: str, kind: str = "exec", agent_id: str = "saga-agent-a"
) -> dict[str, int]:
    """{idempotency key: times it took effect} for one saga."""
    return {
        k: int(v)
        for k, v in r.hgetall(f"am:saga:test:{agent_id}:{kind}").items()
        if k.startswith(saga_id + "/")
    }


def order(
    r: Any, saga_id: str, kind: str = "comp", agent_id: str = "saga-agent-a"
) -> list[str]:
    """Step names (key without the saga id) in the order their calls took effect."""
    out = []
    for e in r.lrange(f"am:saga:test:{agent_id}:log", 0, -1):
        k, _, key = e.partition("|")
        if k == kind and key.startswith(saga_id + "/"):
            rest = key[len(saga_id) + 1 :]
            out.append(rest.removesuffix("/compensate"))
    return out


async def events(stub: saga_pb2_grpc.SagaServiceStub, saga_id: str) -> list[saga_pb2.SagaEvent]:
    """The whole event log."""
    out: list[saga_pb2.SagaEvent] = []
    token = ""
    while True:
        resp = await stub.GetSagaEvents(
            saga_pb2.GetSagaEventsRequest(saga_id=saga_id, page_size=200, page_token=token)
        )
        out.extend(resp.events)
        if not resp.next_page_token or not resp.events:
            return out
        token = resp.next_page_token
