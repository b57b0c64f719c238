"""Health, flap damping, expiry, replicas and restarts, with real processes."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2 as pb
from agentmesh.registry.v1 import registry_pb2_grpc
from agentmesh.server.registry.health import HealthPolicy, health_score
from agentmesh.server.registry.settings import RegistrySettings
from agentmesh.server.registry.store import RegistryStore
from tests.integration.registry.conftest import StartRegistry
from tests.integration.registry.helpers import agent
from tests.procs import ROOT
from tests.waiting import eventually

pytestmark = pytest.mark.integration

LONG = {"seconds": 60}  # a heartbeat interval the reaper never reaches in a test


async def test_lua_health_formula_matches_python(reg_redis_url: str) -> None:
    client = aioredis.Redis.from_url(reg_redis_url)
    store = RegistryStore(client, RegistrySettings(replica_id="t"))
    policy = HealthPolicy()
    try:
        grid = itertools.product(
            (0, 150, 250, 301),  # age in ms with a 100 ms interval: fresh, <2x, >2x, >3x
            (0.0, 0.25, 1.0),  # error rate
            (100.0, 2000.0, 2500.0),  # response time
            (10.0, 70.0, 95.0),  # cpu
        )
        for age, err, rt, cpu in grid:
            want = health_score(age_ms=age, interval_ms=100, error_rate=err,
                                response_time_ms=rt, cpu_percent=cpu, policy=policy)
            got = await store.health_probe(age_ms=age, interval_ms=100, error_rate=err,
                                           response_time_ms=rt, cpu_percent=cpu)
            assert got == pytest.approx(want, abs=1e-6), (age, err, rt, cpu)
    finally:
        await client.aclose()


async def test_flap_damping_needs_consecutive_results(start_registry: StartRegistry) -> None:
    d = start_registry("--flap-threshold", "3")
    bad = common_pb2.LoadMetrics(error_rate=0.9)  # score 0.1 → INACTIVE candidate
    mid = common_pb2.LoadMetrics(error_rate=0.5)  # score 0.5 → DEGRADED candidate
    good = common_pb2.LoadMetrics(error_rate=0.0)
    async with grpc.aio.insecure_channel(d.target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        await stub.RegisterAgent(pb.RegisterAgentRequest(
            agent=agent("agent-f", heartbeat_interval=LONG)))

        async def beat(load: common_pb2.LoadMetrics) -> int:
            r = await stub.Heartbeat(pb.HeartbeatRequest(agent_id="agent-f", load=load))
            return r.status

        # Alternating results never change the status.
        for load in (bad, good, bad, bad, good, mid, mid, good) * 2:
            assert await beat(load) == pb.AGENT_STATUS_ACTIVE
        # Three in a row do.
        assert [await beat(bad) for _ in range(3)] == [
            pb.AGENT_STATUS_ACTIVE, pb.AGENT_STATUS_ACTIVE, pb.AGENT_STATUS_INACTIVE]
        # A changing candidate restarts the count: INACTIVE → (bad streak broken by mid).
        assert [await beat(x) for x in (good, good, mid, mid, mid)] == [
            pb.AGENT_STATUS_INACTIVE, pb.AGENT_STATUS_INACTIVE, pb.AGENT_STATUS_INACTIVE,
            pb.AGENT_STATUS_INACTIVE, pb.AGENT_STATUS_DEGRADED]
        assert [await beat(good) for _ in range(3)] == [
            pb.AGENT_STATUS_DEGRADED, pb.AGENT_STATUS_DEGRADED, pb.AGENT_STATUS_ACTIVE]
        # Discovery hides INACTIVE agents unless asked.
        for _ in range(3):
            await beat(bad)
        assert (await stub.DiscoverAgents(pb.DiscoverAgentsRequest())).agents == []
        got = await stub.DiscoverAgents(pb.DiscoverAgentsRequest(include_inactive=True))
        assert [a.agent_id for a in got.agents] == ["agent-f"]


async def test_stopped_agent_goes_unhealthy_then_expires(start_registry: StartRegistry) -> None:
    d = start_registry()  # sweep 100 ms, deregistration 2.5 s
    # The agent beats every 500 ms (stale after 2x = 1 s, TTL 3x = 1.5 s): the
    # gap between beats is the sleep plus the RPC, and with a 200 ms interval
    # a loaded machine stretched it past 2x, halving the score mid-check.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.registry.hb_agent", d.target, "agent-stop",
        "500", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"registered"
        async with grpc.aio.insecure_channel(d.target) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            start_rev = (await stub.ListAgents(pb.ListAgentsRequest())).revision
            # While it heartbeats it stays healthy across several sweeps.
            for _ in range(5):
                a = (await stub.GetAgent(pb.GetAgentRequest(agent_id="agent-stop"))).agent
                assert a.status == pb.AGENT_STATUS_ACTIVE and a.health_score == 1.0
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGSTOP)

            async def unhealthy() -> pb.Agent | None:
                a = (await stub.GetAgent(pb.GetAgentRequest(agent_id="agent-stop"))).agent
                return a if a.status == pb.AGENT_STATUS_INACTIVE else None

            # Unhealthy while still registered: the TTL check zeroes health and
            # the damped status follows.
            sick = await eventually(unhealthy, timeout_s=30, every_s=0.05)
            assert sick.health_score == 0.0
            last_beat_ms = sick.last_heartbeat_time.ToMilliseconds()

            async def gone() -> bool:
                try:
                    await stub.GetAgent(pb.GetAgentRequest(agent_id="agent-stop"))
                except grpc.aio.AioRpcError as e:
                    return e.code() == grpc.StatusCode.NOT_FOUND
                return False

            await eventually(gone, timeout_s=30, every_s=0.05)
            watch = stub.WatchAgents(pb.WatchAgentsRequest(start_revision=start_rev + 1))
            events: list[pb.AgentEvent] = []
            while not events or events[-1].type != pb.AGENT_EVENT_TYPE_DEREGISTERED:
                events.append((await asyncio.wait_for(watch.read(), 10)).event)
            watch.cancel()
        health_events = [e for e in events if e.type == pb.AGENT_EVENT_TYPE_HEALTH_CHANGED]
        assert [e.agent.status for e in health_events][-1] == pb.AGENT_STATUS_INACTIVE
        expired = events[-1]
        assert expired.reason == "expired"
        assert expired.agent.status == pb.AGENT_STATUS_DECOMMISSIONED
        assert expired.previous_status == pb.AGENT_STATUS_INACTIVE
        # Removed no earlier than the deregistration timeout after the last heartbeat.
        assert expired.event_time.ToMilliseconds() - last_beat_ms >= 2500
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def test_two_replicas_agree(start_registry: StartRegistry, reg_redis_url: str) -> None:
    a = start_registry("--replica-id", "rep-a")
    b = start_registry("--replica-id", "rep-b")
    async with grpc.aio.insecure_channel(a.target) as ca, \
            grpc.aio.insecure_channel(b.target) as cb:
        sa = registry_pb2_grpc.RegistryServiceStub(ca)
        sb = registry_pb2_grpc.RegistryServiceStub(cb)
        for i in range(12):
            stub = sa if i % 2 else sb
            await stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent(
                f"agent-r{i:02d}", heartbeat_interval=LONG, version=f"1.{i}.0",
                location="eu" if i % 3 else "us")))
        req = pb.DiscoverAgentsRequest(selector=common_pb2.AgentSelector(
            preferred_location="us", version_constraint=">=1.2.0"))
        ra, rb = await sa.DiscoverAgents(req), await sb.DiscoverAgents(req)
        assert [x.agent_id for x in ra.agents] == [x.agent_id for x in rb.agents]
        assert len(ra.agents) == 10
        # A heartbeat through B reorders discovery on A as soon as A's event
        # tailer delivers it (and through B itself at once).
        await sb.Heartbeat(pb.HeartbeatRequest(
            agent_id="agent-r04", load=common_pb2.LoadMetrics(error_rate=0.3)))
        assert (await sb.DiscoverAgents(req)).agents[-1].agent_id == "agent-r04"

        async def reordered_on_a() -> pb.Agent | None:
            last = (await sa.DiscoverAgents(req)).agents[-1]
            return last if last.agent_id == "agent-r04" else None

        last = await eventually(reordered_on_a, timeout_s=10, every_s=0.05)
        assert last.health_score == pytest.approx(0.7)
        # A deregistration on A is seen by B.
        await sa.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-r06"))

        async def gone_on_b() -> bool:
            rb = await sb.DiscoverAgents(req)
            return "agent-r06" not in [x.agent_id for x in rb.agents]

        await eventually(gone_on_b, timeout_s=10, every_s=0.05)
        # Both reapers run, but a silent agent expires exactly once.
        await sa.RegisterAgent(pb.RegisterAgentRequest(agent=agent(
            "agent-silent", heartbeat_interval={"nanos": 200_000_000})))

        async def silent_gone() -> bool:
            page = await sb.ListAgents(pb.ListAgentsRequest(page_size=100))
            return "agent-silent" not in [x.agent_id for x in page.agents]

        await eventually(silent_gone, timeout_s=30, every_s=0.05)
    client = aioredis.Redis.from_url(reg_redis_url)
    try:
        entries: Any = await client.xrange("am:reg:{catalog}:events", "-", "+")
        expired = [f for _, f in entries
                   if f[b"t"] == b"DEREGISTERED" and f[b"id"] == b"agent-silent"]
        assert len(expired) == 1 and expired[0][b"reason"] == b"expired"
        raw_counts: Any = await client.hgetall("am:reg:{catalog}:counts")
        counts = {k.decode(): int(v) for k, v in raw_counts.items()}
        assert sum(counts.values()) == 11
    finally:
        await client.aclose()


async def test_restart_loses_nothing(start_registry: StartRegistry) -> None:
    d = start_registry()
    async with grpc.aio.insecure_channel(d.target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        for i in range(8):
            await stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent(
                f"agent-k{i}", heartbeat_interval=LONG, tags=[f"t{i % 2}"],
                metadata={"k": str(i)})))
            await stub.Heartbeat(pb.HeartbeatRequest(
                agent_id=f"agent-k{i}", load=common_pb2.LoadMetrics(error_rate=i / 100,
                                                                    queue_size=i)))
        before = await stub.ListAgents(pb.ListAgentsRequest())
        disc_before = await stub.DiscoverAgents(pb.DiscoverAgentsRequest(
            selector=common_pb2.AgentSelector(tags=["t1"])))
    assert d.stop() == 0
    d2 = start_registry()
    async with grpc.aio.insecure_channel(d2.target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        after = await stub.ListAgents(pb.ListAgentsRequest())
        assert after.revision == before.revision
        assert list(after.agents) == list(before.agents)
        disc = await stub.DiscoverAgents(pb.DiscoverAgentsRequest(
            selector=common_pb2.AgentSelector(tags=["t1"])))
        assert [a.agent_id for a in disc.agents] == [a.agent_id for a in disc_before.agents]
        assert [a.agent_id for a in disc.agents] == ["agent-k1", "agent-k3", "agent-k5",
                                                     "agent-k7"]
        # History survives too: a watcher resumes from revision 1.
        w = stub.WatchAgents(pb.WatchAgentsRequest(start_revision=1))
        first = (await w.read()).event
        assert first.revision == 1 and first.type == pb.AGENT_EVENT_TYPE_REGISTERED
        w.cancel()
