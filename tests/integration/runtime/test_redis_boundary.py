"""The one Redis error boundary (agentmesh.runtime.redis_errors), end to end.

In process: a RuntimeServer whose handlers talk to a real Redis that is
unreachable, paused or a read-only replica answers UNAVAILABLE with ErrorInfo
REDIS_DOWN and a RetryInfo, for unary and streaming RPCs, with one WARNING;
a commit script's own error reply stays a bug (INTERNAL), not an outage.

With processes: every daemon that reads Redis (registry and its
CoordinationService, router, saga, swarm) answers the same when its real
redis-server stops, never INTERNAL or UNKNOWN, and logs one WARNING for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.registry.v1 import coordination_pb2, coordination_pb2_grpc, registry_pb2_grpc
from agentmesh.registry.v1 import registry_pb2 as reg_pb
from agentmesh.router.v1 import router_pb2, router_pb2_grpc
from agentmesh.runtime import interceptors
from agentmesh.runtime.deps import create_redis
from agentmesh.runtime.errors import DOMAIN, from_rpc_error
from agentmesh.runtime.interceptors import RuntimeServer
from agentmesh.runtime.redis_errors import REDIS_RETRY_DELAY_S, RedisDownLog
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.servicer import new_saga_id
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc
from tests.health import wait_health
from tests.infra import RedisServer, free_port
from tests.procs import DaemonProcess, ProcessGroup, daemon

pytestmark = pytest.mark.integration

SERVICE = "agentmesh.test.Boundary"
Handler = Callable[[], Awaitable[bytes]]


def assert_redis_down(err: grpc.aio.AioRpcError) -> None:
    """UNAVAILABLE, ErrorInfo REDIS_DOWN in DOMAIN, RetryInfo of REDIS_RETRY_DELAY_S."""
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    mapped = from_rpc_error(err)
    assert mapped.error_reason == ErrorReason.ERROR_REASON_REDIS_DOWN
    info = mapped.detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.domain == DOMAIN
    retry = mapped.detail(error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == int(REDIS_RETRY_DELAY_S * 1e9)


# ---- in process -------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no WARNING written yet (the limiter is per process)."""
    monkeypatch.setattr(
        interceptors, "_redis_down_log", RedisDownLog(interceptors.log, "redis unavailable")
    )


class Boundary:
    """A server whose methods run `unary(client)` / `stream(client)` on a Redis client."""

    def __init__(self) -> None:
        self.server = RuntimeServer(None)
        self.client: aioredis.Redis | None = None
        self.unary: Callable[[aioredis.Redis], Awaitable[bytes]] | None = None
        self.port = 0

        async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            assert self.client is not None and self.unary is not None
            return await self.unary(self.client)

        async def stream(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            assert self.client is not None
            yield b"first"
            await self.client.get("am:test:boundary")
            yield b"second"

        self.server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler(SERVICE, {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
            })
        ])

    async def call(self, ch: grpc.aio.Channel) -> bytes:
        return await ch.unary_unary(f"/{SERVICE}/Unary")(b"", timeout=30)  # type: ignore[no-any-return]


@pytest.fixture
async def boundary() -> AsyncIterator[Boundary]:
    b = Boundary()
    b.port = b.server.add_insecure_port("127.0.0.1:0")
    await b.server.start()
    try:
        yield b
    finally:
        await b.server.stop(None)
        if b.client is not None:
            await b.client.aclose()


def rpc_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agentmesh.rpc"]


async def test_unreachable_redis_is_redis_down_for_unary_and_streams(
    boundary: Boundary, caplog: pytest.LogCaptureFixture
) -> None:
    boundary.client = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)

    async def read(client: aioredis.Redis) -> bytes:
        return await client.get("am:test:boundary") or b""

    boundary.unary = read
    caplog.set_level(logging.INFO, logger="agentmesh.rpc")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{boundary.port}") as ch:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await boundary.call(ch)
            assert_redis_down(unary.value)
        got: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for item in ch.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=30):
                got.append(item)
        assert got == [b"first"]  # what was sent before Redis failed still arrives
        assert_redis_down(streamed.value)
    # Four failed calls, one line: WARNING, no traceback, the error in a field.
    records = rpc_records(caplog)
    assert [(r.levelname, r.getMessage()) for r in records] == [("WARNING", "redis unavailable")]
    assert records[0].exc_info is None
    assert records[0].__dict__["reason"] == "REDIS_DOWN"
    assert records[0].__dict__["error"].startswith("ConnectionError")


async def test_paused_redis_times_out_to_redis_down(
    boundary: Boundary, private_redis: RedisServer
) -> None:
    boundary.client = create_redis(private_redis.url, timeout_s=0.2)
    assert await boundary.client.ping()

    async def read(client: aioredis.Redis) -> bytes:
        return await client.get("am:test:boundary") or b""

    boundary.unary = read
    pid = private_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # accepts connections, answers nothing: socket timeouts
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{boundary.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await boundary.call(ch)
        assert_redis_down(e.value)
        assert from_rpc_error(e.value).detail(error_details_pb2.ErrorInfo).metadata[  # type: ignore[union-attr]
            "error"
        ] == "TimeoutError"
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_write_to_a_read_only_replica_is_redis_down(
    boundary: Boundary, private_redis: RedisServer
) -> None:
    boundary.client = create_redis(private_redis.url, timeout_s=2.0)
    # A replica of a master that does not exist: reads work, writes get READONLY,
    # as during a failover before the client learns the new master.
    await boundary.client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

    async def write(client: aioredis.Redis) -> bytes:
        await client.set("am:test:boundary", b"x")
        return b"ok"

    boundary.unary = write
    async with grpc.aio.insecure_channel(f"127.0.0.1:{boundary.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await boundary.call(ch)
    assert_redis_down(e.value)
    assert from_rpc_error(e.value).detail(error_details_pb2.ErrorInfo).metadata[  # type: ignore[union-attr]
        "error"
    ] == "ReadOnlyError"


async def test_a_scripts_own_error_reply_is_a_bug_not_an_outage(
    boundary: Boundary, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    boundary.client = create_redis(redis_url)
    # The shape of the lease fence's refusal, escaping a caller that should
    # have turned it into LeaseLost: INTERNAL with the traceback logged.
    fence = boundary.client.register_script(
        "return redis.error_reply('FENCED ' .. KEYS[1])"
    )

    async def commit(client: aioredis.Redis) -> bytes:
        await fence(keys=["am:test:lease"])
        return b"ok"

    boundary.unary = commit
    caplog.set_level(logging.INFO, logger="agentmesh.rpc")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{boundary.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await boundary.call(ch)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "FENCED" not in (e.value.details() or "")
    records = rpc_records(caplog)
    assert [r.levelname for r in records] == ["ERROR"]
    assert records[0].exc_info is not None


# ---- daemons ----------------------------------------------------------------------
async def expect_redis_down(call: Awaitable[Any]) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        assert_redis_down(e)
        return
    raise AssertionError("the call succeeded with Redis stopped")


def rpc_log_lines(proc: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's JSON log lines from the RPC wrapper."""
    docs = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("logger") == "agentmesh.rpc":
                docs.append(doc)
    return docs


async def test_every_daemon_answers_redis_down_when_redis_stops(tmp_path: Path) -> None:
    redis = RedisServer(workdir=tmp_path / "redis").start()
    group = ProcessGroup()
    try:
        names = {"registry": 1, "router": 2, "saga": 3, "swarm": 4}
        started = await asyncio.gather(*(
            asyncio.to_thread(group.start, daemon(
                name, tmp_path, "--redis-url", redis.url_for_db(db), "--health-interval-s", "0.2"
            ))
            for name, db in names.items()
        ))
        procs = dict(zip(names, started, strict=True))
        for p in procs.values():
            await wait_health(p.target, health_pb2.HealthCheckResponse.SERVING, timeout_s=30)
        redis.stop()

        channels = {name: grpc.aio.insecure_channel(p.target) for name, p in procs.items()}
        try:
            reg = registry_pb2_grpc.RegistryServiceStub(channels["registry"])
            coord = coordination_pb2_grpc.CoordinationServiceStub(channels["registry"])
            router = router_pb2_grpc.RouterServiceStub(channels["router"])
            saga = saga_pb2_grpc.SagaServiceStub(channels["saga"])
            swarm = swarm_pb2_grpc.SwarmServiceStub(channels["swarm"])
            t = 30.0
            rule = router_pb2.RouteRule(
                name="big-orders", condition="true", target_ids=["agent-a"],
                strategy=router_pb2.STRATEGY_ROUND_ROBIN,
            )
            # Each daemon's calls run together so they fail within one log interval.
            await asyncio.gather(
                *(
                    expect_redis_down(reg.GetAgent(reg_pb.GetAgentRequest(agent_id=a), timeout=t))
                    for a in ("agent-x", "agent-y")
                ),
                expect_redis_down(reg.DiscoverAgents(reg_pb.DiscoverAgentsRequest(), timeout=t)),
                expect_redis_down(coord.AcquireLock(coordination_pb2.AcquireLockRequest(
                    resource="orders", owner="worker-1",
                    ttl=duration_pb2.Duration(seconds=10),
                ), timeout=t)),
                expect_redis_down(router.CreateRouteRule(
                    router_pb2.CreateRouteRuleRequest(rule=rule), timeout=t
                )),
                expect_redis_down(router.ListRouteRules(
                    router_pb2.ListRouteRulesRequest(), timeout=t
                )),
                expect_redis_down(saga.GetSaga(
                    saga_pb2.GetSagaRequest(saga_id=new_saga_id()), timeout=t
                )),
                expect_redis_down(saga.ListSagas(saga_pb2.ListSagasRequest(), timeout=t)),
                expect_redis_down(swarm.GetSwarm(
                    swarm_pb2.GetSwarmRequest(swarm_id="sw-1-abc"), timeout=t
                )),
                expect_redis_down(swarm.ListSwarms(swarm_pb2.ListSwarmsRequest(), timeout=t)),
            )
        finally:
            for ch in channels.values():
                await ch.close()

        for name, p in procs.items():
            lines = rpc_log_lines(p)
            assert [(d["level"], d["msg"]) for d in lines] == [("WARNING", "redis unavailable")], (
                name, lines
            )
            assert lines[0]["reason"] == "REDIS_DOWN"
            assert "exc" not in lines[0]  # no traceback for an outage
    finally:
        group.stop_all(timeout_s=10)
        redis.stop()

