"""Redis Sentinel against real processes: a password-protected master, a
replica and one sentinel (`redis-server --sentinel`), all on free loopback
ports, started and stopped here by PID.

Checks that `create_redis` and a real daemon reach the master through the
sentinel (the URL's own host points at nothing), and that the client follows
a failover to the promoted replica.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.runtime.deps import create_redis
from tests.health import wait_health
from tests.infra import free_ports
from tests.integration.registry.helpers import agent
from tests.procs import daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration

MASTER_SET = "agentmesh"
PASSWORD = "master-pw"
SENTINEL_PASSWORD = "sentinel-pw"
DEAD_URL = "redis://127.0.0.1:9/3"  # port 9 (discard) is closed: only Sentinel can help


@dataclass
class SentinelSetup:
    master_port: int
    replica_port: int
    sentinel_port: int

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.sentinel_port)]


def _wait(check: object, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.ConnectionError, ResponseError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout_s}s (last error: {last})")


def wait_replica_promotable(port: int) -> None:
    """Wait until the sentinel has found the replica (through the master's INFO,
    every 10 s) and checked it recently: only then does it promote it."""
    sentinel = redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=2)

    def replica_usable() -> bool:
        replicas = sentinel.sentinel_slaves(MASTER_SET)
        return (
            len(replicas) == 1
            and not replicas[0]["is_disconnected"]
            and int(replicas[0].get("info-refresh", 10**9)) < 5000
        )

    try:
        _wait(replica_usable, "sentinel knows the replica", timeout_s=30)
    finally:
        sentinel.close()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed (bash .ci/install.sh)")
    master_port, replica_port, sentinel_port = free_ports(3)
    common = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        PASSWORD,
        "--masterauth",
        PASSWORD,
        # full syncs start at once instead of after the default 5 s batching delay
        "--repl-diskless-sync-delay",
        "0",
    ]
    conf = tmp_path / "sentinel.conf"  # sentinel rewrites its config: it must be writable
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"requirepass {SENTINEL_PASSWORD}\n"
        f"sentinel monitor {MASTER_SET} 127.0.0.1 {master_port} 1\n"
        f"sentinel auth-pass {MASTER_SET} {PASSWORD}\n"
        f"sentinel down-after-milliseconds {MASTER_SET} 2000\n"
        f"sentinel failover-timeout {MASTER_SET} 10000\n"
    )
    cmds = [
        [server, "--port", str(master_port), "--dir", str(tmp_path), *common],
        [
            server,
            "--port",
            str(replica_port),
            "--dir",
            str(tmp_path),
            *common,
            "--replicaof",
            "127.0.0.1",
            str(master_port),
        ],
        [server, str(conf), "--sentinel"],
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, cmd in enumerate(cmds):
            with (tmp_path / f"redis-{i}.log").open("wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        replica = redis.Redis(port=replica_port, password=PASSWORD, socket_timeout=2)
        sentinel = redis.Redis(port=sentinel_port, password=SENTINEL_PASSWORD, socket_timeout=2)
        _wait(lambda: replica.info("replication")["master_link_status"] == "up", "replica link")

        _wait(lambda: sentinel.sentinel_get_master_addr_by_name(MASTER_SET), "sentinel up")
        replica.close()
        sentinel.close()
        yield SentinelSetup(master_port, replica_port, sentinel_port)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


async def test_create_redis_reaches_the_master_through_the_sentinel(
    sentinel_setup: SentinelSetup,
) -> None:
    client = create_redis(
        DEAD_URL,
        password=PASSWORD,
        sentinels=sentinel_setup.sentinels,
        sentinel_master=MASTER_SET,
        sentinel_password=SENTINEL_PASSWORD,
    )
    direct = aioredis.Redis(port=sentinel_setup.master_port, password=PASSWORD, db=3)
    try:
        await client.set("am:sentinel:k", b"v1")
        # it landed on the master, in the URL's db 3
        assert await direct.get("am:sentinel:k") == b"v1"
    finally:
        await client.aclose()
        await direct.aclose()


async def test_wrong_sentinel_password_is_refused(sentinel_setup: SentinelSetup) -> None:
    client = create_redis(
        DEAD_URL,
        password=PASSWORD,
        sentinels=sentinel_setup.sentinels,
        sentinel_master=MASTER_SET,
        sentinel_password="wrong",
    )
    try:
        with pytest.raises((AuthenticationError, ResponseError, redis.ConnectionError)):
            await client.ping()
    finally:
        await client.aclose()


async def test_client_follows_a_failover_to_the_promoted_replica(
    sentinel_setup: SentinelSetup,
) -> None:
    client = create_redis(
        DEAD_URL,
        password=PASSWORD,
        sentinels=sentinel_setup.sentinels,
        sentinel_master=MASTER_SET,
        sentinel_password=SENTINEL_PASSWORD,
    )
    sentinel = aioredis.Redis(port=sentinel_setup.sentinel_port, password=SENTINEL_PASSWORD)
    promoted_node = aioredis.Redis(port=sentinel_setup.replica_port, password=PASSWORD, db=3)
    try:
        await asyncio.to_thread(wait_replica_promotable, sentinel_setup.sentinel_port)
        await client.set("am:sentinel:before", b"1")
        assert await client.wait(1, 5000) == 1  # the replica has it before we fail over

        async def failover_started() -> bool:
            try:
                await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_SET)
            except ResponseError as exc:  # NOGOODSLAVE until its replica checks are fresh
                if "NOGOODSLAVE" not in str(exc):
                    raise
                return False
            return True

        await eventually(failover_started, timeout_s=30, every_s=0.5, what="failover accepted")

        async def promoted() -> bool:
            _host, port = await sentinel.sentinel_get_master_addr_by_name(MASTER_SET)
            return int(port) == sentinel_setup.replica_port

        await eventually(promoted, timeout_s=30, what="replica promoted")
        attempt = 0

        async def write_lands_on_new_master() -> bool:
            # A write may still reach the old master until the sentinel demotes
            # it (Redis replication is asynchronous), and is then lost; what
            # must hold is that the client moves over, so check where it lands.
            nonlocal attempt
            attempt += 1
            try:
                await client.set("am:sentinel:after", str(attempt))
            except (redis.ConnectionError, ResponseError):  # READONLY while it moves
                return False
            return await promoted_node.get("am:sentinel:after") == str(attempt).encode()

        await eventually(
            write_lands_on_new_master, timeout_s=30, every_s=0.2, what="write on new master"
        )
        assert await promoted_node.get("am:sentinel:before") == b"1"
        assert (await promoted_node.info("replication"))["role"] == "master"
    finally:
        await client.aclose()
        await sentinel.aclose()
        await promoted_node.aclose()


async def test_registry_daemon_serves_with_redis_behind_sentinel(
    sentinel_setup: SentinelSetup, tmp_path: Path
) -> None:
    env = {
        "AGENTMESH_REDIS_URL": DEAD_URL,
        "AGENTMESH_REDIS_PASSWORD": PASSWORD,
        "AGENTMESH_REDIS_SENTINELS": f"127.0.0.1:{sentinel_setup.sentinel_port}",
        "AGENTMESH_REDIS_SENTINEL_MASTER": MASTER_SET,
        "AGENTMESH_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
    }
    direct = aioredis.Redis(port=sentinel_setup.master_port, password=PASSWORD, db=3)
    with daemon("registry", tmp_path, env=env).start() as proc:
        # SERVING needs the Redis probe to pass: through the sentinel, since the URL is dead
        await wait_health(proc.target, 1, timeout_s=20)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            await registry_pb2_grpc.RegistryServiceStub(ch).RegisterAgent(
                registry_pb2.RegisterAgentRequest(agent=agent("agent-behind-sentinel")),
                timeout=10,
            )
    try:
        # the catalog entry is on the master the sentinel named, in the URL's db
        keys = [k async for k in direct.scan_iter(match="*agent-behind-sentinel*")]
        assert keys, "the registry wrote nothing to the master"
    finally:
        await direct.aclose()


async def test_sdk_agent_keeps_its_dedupe_store_behind_sentinel(
    sentinel_setup: SentinelSetup, tmp_path: Path
) -> None:
    from agentmesh.agent import dict_to_struct
    from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
    from tests.procs import testing_agent

    flags = (
        "--redis-url", DEAD_URL, "--redis-password", PASSWORD,
        "--redis-sentinels", f"127.0.0.1:{sentinel_setup.sentinel_port}",
        "--redis-sentinel-master", MASTER_SET,
        "--redis-sentinel-password", SENTINEL_PASSWORD,
    )
    direct = aioredis.Redis(port=sentinel_setup.master_port, password=PASSWORD, db=3)
    with testing_agent("noop", tmp_path, *flags).start() as proc:
        async with grpc.aio.insecure_channel(proc.target) as ch:
            await agent_pb2_grpc.AgentServiceStub(ch).Execute(
                agent_pb2.ExecuteRequest(
                    action="step", input=dict_to_struct({"n": 1}),
                    idempotency_key="saga-s/one", attempt=1,
                ),
                timeout=10,
            )
    try:
        # the completed result sits on the master the sentinel named, in the URL's db
        keys = [k async for k in direct.scan_iter(match=f"am:agent:{proc.agent_id}:idem:*")]
        assert keys, "the agent's idempotency store wrote nothing to the master"
    finally:
        await direct.aclose()
