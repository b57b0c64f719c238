"""RegistryService RPCs against a real registry process and a real Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2 as pb
from agentmesh.registry.v1 import registry_pb2_grpc
from agentmesh.runtime.errors import error_reason
from tests.integration.registry.conftest import Clients, StartRegistry
from tests.integration.registry.helpers import agent, field_violations
from tests.procs import scrape_metrics
from tests.registry_records import write_agent_record
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_register_get_update_deregister(registry: Clients) -> None:
    r = await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-a1")))
    assert r.created and r.agent.status == pb.AGENT_STATUS_ACTIVE
    assert r.agent.health_score == 1.0
    assert r.agent.heartbeat_interval.ToMilliseconds() == 200  # the daemon's default

    upd = agent("agent-a1", version="1.1.0", tags=["gpu"], location="eu")
    r2 = await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=upd))
    assert not r2.created
    assert r2.agent.revision > r.agent.revision

    got = (await registry.reg.GetAgent(pb.GetAgentRequest(agent_id="agent-a1"))).agent
    assert (got.version, list(got.tags), got.location) == ("1.1.0", ["gpu"], "eu")
    assert got.register_time == r.agent.register_time  # an update keeps the registration time

    # The old index entries moved: discovery by the new tag finds it, only once.
    d = await registry.reg.DiscoverAgents(
        pb.DiscoverAgentsRequest(selector=common_pb2.AgentSelector(tags=["gpu"]))
    )
    assert [a.agent_id for a in d.agents] == ["agent-a1"]

    gone = await registry.reg.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-a1"))
    assert gone.agent.status == pb.AGENT_STATUS_DECOMMISSIONED
    for call in (
        registry.reg.GetAgent(pb.GetAgentRequest(agent_id="agent-a1")),
        registry.reg.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-a1")),
        registry.reg.Heartbeat(pb.HeartbeatRequest(agent_id="agent-a1")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_agents_paginates(registry: Clients) -> None:
    ids = [f"agent-p{i:02d}" for i in range(23)]
    for i in ids:
        await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(i)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await registry.reg.ListAgents(pb.ListAgentsRequest(page_size=10, page_token=token))
        assert page.total_size == 23
        seen += [a.agent_id for a in page.agents]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 3
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.ListAgents(pb.ListAgentsRequest(page_token="%%%"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_agents_pages_past_ids_older_than_the_id_rule(
    registry: Clients, reg_redis_url: str
) -> None:
    """A catalog id that today's registration rule refuses (written by an older
    version, or straight into Redis) is still a valid cursor: paging over it
    must not answer INVALID_ARGUMENT for the token the registry itself handed out."""
    for i in ("agent-q1", "agent-q3"):
        await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(i)))
    rdb = aioredis.Redis.from_url(reg_redis_url)
    try:
        await write_agent_record(rdb, "agent-q2_Legacy", endpoint="127.0.0.1:1")
    finally:
        await rdb.aclose()
    tokens: list[str] = []
    seen: list[str] = []
    token = ""
    while True:
        page = await registry.reg.ListAgents(pb.ListAgentsRequest(page_size=1, page_token=token))
        seen += [a.agent_id for a in page.agents]
        token = page.next_page_token
        if not token:
            break
        tokens.append(token)
    # The second page ends on the legacy id, so the third request carries it as
    # its cursor; a partial record may be left out of a page, never the rest.
    assert len(tokens) == 2 and seen[0] == "agent-q1" and seen[-1] == "agent-q3"


@pytest.mark.parametrize(
    ("desc", "field"),
    [
        ({"agent_id": "Agent_1"}, "agent.agent_id"),
        ({"agent_id": "bot-1"}, "agent.agent_id"),
        ({"version": "1.0"}, "agent.version"),
        ({"version": "latest"}, "agent.version"),
        ({"endpoint": "localhost"}, "agent.endpoint"),
        ({"endpoint": "host:99999"}, "agent.endpoint"),
        ({"endpoint": "bad host:80"}, "agent.endpoint"),
        ({"capabilities": ["has space"]}, "agent.capabilities[0]"),
    ],
)
async def test_malformed_descriptor_is_invalid_argument(
    registry: Clients, desc: dict[str, object], field: str
) -> None:
    a = agent(str(desc.pop("agent_id", "agent-ok")), **desc)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=a))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(e.value)
    # Nothing was written.
    page = await registry.reg.ListAgents(pb.ListAgentsRequest())
    assert page.total_size == 0


async def test_bad_constraint_and_ids_are_invalid_argument(registry: Clients) -> None:
    for constraint in (">=x.y", "^^1", ">=1.0.0-", "1.2.3.4"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await registry.reg.DiscoverAgents(pb.DiscoverAgentsRequest(
                selector=common_pb2.AgentSelector(version_constraint=constraint)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "selector.version_constraint" in field_violations(e.value)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.Heartbeat(pb.HeartbeatRequest(agent_id="nope"))
    assert field_violations(e.value).keys() == {"agent_id"}
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-l")))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.Heartbeat(pb.HeartbeatRequest(
            agent_id="agent-l", load=common_pb2.LoadMetrics(error_rate=1.5)))
    assert "load.error_rate" in field_violations(e.value)


async def test_heartbeat_updates_health_and_load_keys(
    registry: Clients, reg_redis_url: str
) -> None:
    import redis.asyncio as aioredis

    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(
        agent=agent("agent-h", heartbeat_interval={"seconds": 60})))
    load = common_pb2.LoadMetrics(cpu_percent=85, error_rate=0.2, response_time_ms=2500,
                                  queue_size=4, capacity=8)
    r = await registry.reg.Heartbeat(pb.HeartbeatRequest(agent_id="agent-h", load=load))
    assert r.health_score == pytest.approx(0.8 * 0.8 * 0.9)
    assert r.heartbeat_interval.ToSeconds() == 60
    # The keys the router reads.
    client = aioredis.Redis.from_url(reg_redis_url, decode_responses=True)
    try:
        h = await client.hgetall("am:reg:{catalog}:agent:agent-h")
        assert float(h["health"]) == pytest.approx(0.576)
        assert h["endpoint"] == "127.0.0.1:7000" and h["version"] == "1.0.0"
        assert h["status"] in ("ACTIVE", "DEGRADED")
        lo = await client.hgetall("am:reg:{catalog}:load:agent-h")
        assert float(lo["cpu_percent"]) == 85 and int(lo["queue_size"]) == 4
        assert await client.zscore("am:reg:{catalog}:health", "agent-h") == pytest.approx(0.576)
        assert await client.sismember("am:reg:{catalog}:idx:cap:calc", "agent-h")
        raw = aioredis.Redis.from_url(reg_redis_url)
        pbb: Any = await raw.get("am:reg:{catalog}:pb:agent-h")
        await raw.aclose()
        assert pbb is not None and pb.Agent.FromString(pbb).agent_id == "agent-h"
    finally:
        await client.aclose()
    got = (await registry.reg.GetAgent(pb.GetAgentRequest(agent_id="agent-h"))).agent
    assert got.load.capacity == 8 and got.load.cpu_percent == 85


async def test_heartbeat_stream_batches_many_agents(registry: Clients) -> None:
    for i in range(5):
        await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(f"agent-s{i}")))
    call = registry.reg.HeartbeatStream()
    batch = [pb.HeartbeatRequest(agent_id=f"agent-s{i}",
                                 load=common_pb2.LoadMetrics(error_rate=0.1)) for i in range(5)]
    batch += [pb.HeartbeatRequest(agent_id="agent-unknown"), pb.HeartbeatRequest(agent_id="X")]
    await call.write(pb.HeartbeatStreamRequest(heartbeats=batch))
    resp = await call.read()
    codes = [(r.agent_id, r.code) for r in resp.results]
    assert codes == [*[(f"agent-s{i}", 0) for i in range(5)], ("agent-unknown", 5), ("X", 3)]
    assert resp.results[0].health_score == pytest.approx(0.9)
    # The stream survives per-item errors.
    await call.write(pb.HeartbeatStreamRequest(heartbeats=[batch[0]]))
    assert (await call.read()).results[0].code == 0
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_discovery_filters_and_ordering(registry: Clients) -> None:
    specs = [
        ("agent-d1", dict(capabilities=["calc", "scope3"], service_types=["computation"],
                          tags=["prod"], version="2.1.0", location="us-east-1")),
        ("agent-d2", dict(capabilities=["calc", "scope3"], service_types=["computation"],
                          tags=["prod"], version="2.4.1", location="eu-west-1")),
        ("agent-d3", dict(capabilities=["calc"], service_types=["storage"],
                          tags=["prod", "gpu"], version="1.9.0", location="us-east-1")),
        ("agent-d4", dict(capabilities=["calc", "scope3"], service_types=["analytics"],
                          tags=["dev"], version="3.0.0", location="eu-west-1")),
        ("agent-d5", dict(capabilities=["calc", "scope3"], service_types=["computation"],
                          tags=["prod"], version="2.0.5", location="eu-west-1")),
    ]
    for aid, kw in specs:
        await registry.reg.RegisterAgent(pb.RegisterAgentRequest(
            agent=agent(aid, heartbeat_interval={"seconds": 60}, **kw)))
    # Distinct health: d2 0.9, d5 0.8 (error rates), d1 1.0, d4 1.0, d3 1.0.
    await registry.reg.Heartbeat(pb.HeartbeatRequest(
        agent_id="agent-d2", load=common_pb2.LoadMetrics(error_rate=0.1)))
    await registry.reg.Heartbeat(pb.HeartbeatRequest(
        agent_id="agent-d5", load=common_pb2.LoadMetrics(error_rate=0.2)))

    async def ids(**sel: object) -> list[str]:
        max_results = int(sel.pop("max_results", 0))  # type: ignore[call-overload]
        r = await registry.reg.DiscoverAgents(pb.DiscoverAgentsRequest(
            selector=common_pb2.AgentSelector(**sel), max_results=max_results))  # type: ignore[arg-type]
        return [a.agent_id for a in r.agents]

    # capabilities AND; ordering by health desc then id.
    assert await ids(capabilities=["calc", "scope3"]) == ["agent-d1", "agent-d4", "agent-d2",
                                                          "agent-d5"]
    # service types OR
    assert await ids(service_types=["storage", "analytics"]) == ["agent-d3", "agent-d4"]
    # tags AND
    assert await ids(tags=["prod", "gpu"]) == ["agent-d3"]
    assert await ids(tags=["nope"]) == []
    # version constraints
    assert await ids(version_constraint=">=2.1.0") == ["agent-d1", "agent-d4", "agent-d2"]
    assert await ids(version_constraint=">2.1.0") == ["agent-d4", "agent-d2"]
    assert await ids(version_constraint="=2.1.0") == ["agent-d1"]
    assert await ids(version_constraint="<2.0.5") == ["agent-d3"]
    assert await ids(version_constraint="<=2.0.5") == ["agent-d3", "agent-d5"]
    assert await ids(version_constraint="^2.1") == ["agent-d1", "agent-d2"]
    assert await ids(version_constraint="~2.0.1") == ["agent-d5"]
    # minimum health
    assert await ids(min_health_score=0.85) == ["agent-d1", "agent-d3", "agent-d4", "agent-d2"]
    # local first, then health
    assert await ids(capabilities=["scope3"], preferred_location="eu-west-1") == [
        "agent-d4", "agent-d2", "agent-d5", "agent-d1"]
    # max_results keeps the order
    assert await ids(capabilities=["scope3"], preferred_location="eu-west-1",
                     max_results=2) == ["agent-d4", "agent-d2"]
    # Stable: the same query gives the same order (also from the cache).
    first = await registry.reg.DiscoverAgents(pb.DiscoverAgentsRequest())
    again = await registry.reg.DiscoverAgents(pb.DiscoverAgentsRequest())
    assert [a.agent_id for a in first.agents] == [a.agent_id for a in again.agents]
    assert again.cached and again.total_matches == 5


async def test_discovery_cache_is_invalidated_on_change(registry: Clients) -> None:
    sel = pb.DiscoverAgentsRequest(selector=common_pb2.AgentSelector(capabilities=["x"]))
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-c1",
                                                                         capabilities=["x"])))
    assert [a.agent_id for a in (await registry.reg.DiscoverAgents(sel)).agents] == ["agent-c1"]
    assert (await registry.reg.DiscoverAgents(sel)).cached
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-c2",
                                                                         capabilities=["x"])))
    r = await registry.reg.DiscoverAgents(sel)
    assert not r.cached and [a.agent_id for a in r.agents] == ["agent-c1", "agent-c2"]
    await registry.reg.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-c1"))
    assert [a.agent_id for a in (await registry.reg.DiscoverAgents(sel)).agents] == ["agent-c2"]


async def test_watch_events_and_resume(registry: Clients) -> None:
    start = (await registry.reg.ListAgents(pb.ListAgentsRequest())).revision
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(
        "agent-w", heartbeat_interval={"seconds": 60})))
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(
        "agent-w", heartbeat_interval={"seconds": 60}, version="1.0.1")))
    await registry.reg.Heartbeat(pb.HeartbeatRequest(
        agent_id="agent-w", load=common_pb2.LoadMetrics(error_rate=0.5)))
    await registry.reg.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-w",
                                                                 reason="shutdown"))
    stream = registry.reg.WatchAgents(pb.WatchAgentsRequest(start_revision=start + 1))
    events = [(await stream.read()).event for _ in range(4)]
    assert [e.type for e in events] == [
        pb.AGENT_EVENT_TYPE_REGISTERED, pb.AGENT_EVENT_TYPE_UPDATED,
        pb.AGENT_EVENT_TYPE_HEALTH_CHANGED, pb.AGENT_EVENT_TYPE_DEREGISTERED]
    assert [e.revision for e in events] == list(range(start + 1, start + 5))
    assert events[2].agent.health_score == pytest.approx(0.5)
    assert events[3].reason == "shutdown"
    # Live events arrive on the open stream.
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-w2")))
    live = (await asyncio.wait_for(stream.read(), 10)).event
    assert live.agent.agent_id == "agent-w2" and live.revision == start + 5
    stream.cancel()
    # Resume from the middle.
    resumed = registry.reg.WatchAgents(pb.WatchAgentsRequest(start_revision=start + 3))
    assert (await resumed.read()).event.revision == start + 3
    resumed.cancel()
    # A filtered watch skips non-matching agents.
    filt = registry.reg.WatchAgents(pb.WatchAgentsRequest(
        start_revision=start + 1, selector=common_pb2.AgentSelector(capabilities=["zzz"])))
    await registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(
        "agent-w3", capabilities=["zzz"])))
    assert (await asyncio.wait_for(filt.read(), 10)).event.agent.agent_id == "agent-w3"
    filt.cancel()
    # A revision in the future is OUT_OF_RANGE.
    bad = registry.reg.WatchAgents(pb.WatchAgentsRequest(start_revision=start + 1000))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await bad.read()
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_agents_act_only_on_themselves(
    start_registry: StartRegistry, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({
        "tok-a": "agent-a", "tok-b": "agent-b",
        "tok-admin": {"identity": "ops", "roles": ["admin"]},
    }))
    d = start_registry("--auth-tokens-file", str(tokens))

    def md(tok: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {tok}"),)

    async with grpc.aio.insecure_channel(d.target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        await stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-a")),
                                 metadata=md("tok-a"))
        await stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-b")),
                                 metadata=md("tok-b"))
        for call in (
            stub.Heartbeat(pb.HeartbeatRequest(agent_id="agent-b"), metadata=md("tok-a")),
            stub.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-b"),
                                 metadata=md("tok-a")),
            stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-b")),
                               metadata=md("tok-a")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        s = stub.HeartbeatStream(metadata=md("tok-a"))
        await s.write(pb.HeartbeatStreamRequest(heartbeats=[
            pb.HeartbeatRequest(agent_id="agent-a"), pb.HeartbeatRequest(agent_id="agent-b")]))
        assert [r.code for r in (await s.read()).results] == [0, 7]
        s.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetAgent(pb.GetAgentRequest(agent_id="agent-a"))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await stub.Heartbeat(pb.HeartbeatRequest(agent_id="agent-a"), metadata=md("tok-a"))
        await stub.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-b"),
                                   metadata=md("tok-admin"))


async def test_metrics_exposed(start_registry: StartRegistry) -> None:
    d = start_registry()
    async with grpc.aio.insecure_channel(d.target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        await stub.RegisterAgent(pb.RegisterAgentRequest(
            agent=agent("agent-m", heartbeat_interval={"seconds": 60})))
        await stub.Heartbeat(pb.HeartbeatRequest(agent_id="agent-m"))
        await stub.DiscoverAgents(pb.DiscoverAgentsRequest())

    # A reaper tick refreshes both gauges (status counts, then health bands):
    # wait for it rather than sleep one tick's worth, which a loaded machine
    # can overrun.
    gauges = ('registry_agents_total{status="ACTIVE"} 1.0',
              'registry_agent_health{band="0.9-1.0"} 1.0')

    async def gauges_refreshed() -> str | None:
        text = await asyncio.to_thread(scrape_metrics, d.metrics_port)
        return text if all(g in text for g in gauges) else None

    text = await eventually(gauges_refreshed, timeout_s=15, every_s=0.1, what="gauges refreshed")
    assert 'registry_agents_total{status="ACTIVE"} 1.0' in text
    assert 'registry_queries_total{type="discover"} 1.0' in text
    assert "registry_discovery_latency_ms_bucket" in text
    assert 'registry_heartbeats_total{result="ok"} 1.0' in text
    assert 'registry_agent_health{band="0.9-1.0"} 1.0' in text
    assert "agent-m" not in text  # no per-agent series


async def test_redis_down_is_unavailable(tmp_path: Path) -> None:
    from tests.infra import free_port
    from tests.procs import daemon

    d = daemon("registry", tmp_path, "--redis-url", f"redis://127.0.0.1:{free_port()}/1")
    with d:
        async with grpc.aio.insecure_channel(d.target) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            for call in (stub.GetAgent(pb.GetAgentRequest(agent_id="agent-x")),
                         stub.DiscoverAgents(pb.DiscoverAgentsRequest()),
                         stub.RegisterAgent(pb.RegisterAgentRequest(agent=agent("agent-x")))):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(e.value) == common_pb2.ERROR_REASON_REDIS_DOWN


async def test_burst_beyond_the_redis_pool_queues_instead_of_failing(registry: Clients) -> None:
    # 200 concurrent writes against a 64-connection pool: all must succeed.
    await asyncio.gather(*(
        registry.reg.RegisterAgent(pb.RegisterAgentRequest(agent=agent(f"agent-burst-{i}")))
        for i in range(200)
    ))
    assert (await registry.reg.ListAgents(pb.ListAgentsRequest())).total_size == 200


async def test_registry_stats_summarise_the_catalog(registry: Clients) -> None:
    """GetRegistryStats (the seeds' registry.get_metrics()) against what
    ListAgents and GetAgent report for the same catalog."""
    empty = await registry.reg.GetRegistryStats(pb.GetRegistryStatsRequest())
    assert (empty.total_agents, empty.unique_capabilities, empty.average_health_score) == (0, 0, 0)
    specs = {
        "agent-st1": ["calc", "gpu"], "agent-st2": ["calc"], "agent-st3": ["calc", "ocr"],
        "agent-st4": ["tmp"],
    }
    for aid, caps in specs.items():
        req = pb.RegisterAgentRequest(agent=agent(aid, capabilities=caps))
        await registry.reg.RegisterAgent(req)
    # A failing agent's health drops; a deregistered one leaves the summary.
    await registry.reg.Heartbeat(
        pb.HeartbeatRequest(agent_id="agent-st2", load=common_pb2.LoadMetrics(error_rate=0.9))
    )
    gone = await registry.reg.DeregisterAgent(pb.DeregisterAgentRequest(agent_id="agent-st4"))
    stats = await registry.reg.GetRegistryStats(pb.GetRegistryStatsRequest())
    assert stats.revision >= gone.agent.revision
    listed = (await registry.reg.ListAgents(pb.ListAgentsRequest(page_size=100))).agents
    assert stats.total_agents == len(listed) == 3
    by_status: dict[str, int] = {}
    for a in listed:
        name = pb.AgentStatus.Name(a.status)
        by_status[name] = by_status.get(name, 0) + 1
    assert dict(stats.agents_by_status) == by_status
    assert dict(stats.agents_by_capability) == {"calc": 3, "gpu": 1, "ocr": 1}
    assert stats.unique_capabilities == 3
    assert stats.average_health_score == pytest.approx(
        sum(a.health_score for a in listed) / 3, abs=0.05
    )
    assert stats.average_health_score < 1.0  # agent-st2's error rate counts
