"""agentmesh.catalog.find_agents against a real Redis (logical DB 7): every
AgentSelector filter, the status filter, the discovery order, records the
registry is halfway through removing, and agreement with the registry
daemon's own DiscoverAgents over records the daemon wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh import catalog
from agentmesh.catalog import AgentInfo, ConstraintError, find_agents, match_index
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.procs import daemon
from tests.registry_records import write_agent_record

pytestmark = pytest.mark.integration

#: This suite's own logical DB.
CATALOG_DB = 7

# id: (capabilities, service types, tags, version, location, health, status)
FLEET: dict[str, tuple[list[str], list[str], list[str], str, str, float, str]] = {
    "a-us": (["calc", "scope3"], ["compute"], ["prod"], "2.1.0", "us", 1.0, "ACTIVE"),
    "a-eu": (["calc", "scope3"], ["compute"], ["prod"], "2.4.1", "eu", 0.9, "ACTIVE"),
    "a-store": (["calc"], ["storage"], ["prod", "gpu"], "1.9.0", "us", 1.0, "ACTIVE"),
    "a-dev": (["calc", "scope3"], ["analytics"], ["dev"], "3.0.0", "eu", 1.0, "ACTIVE"),
    "a-old": (["calc", "scope3"], ["compute"], ["prod"], "2.0.5", "eu", 0.8, "ACTIVE"),
    "a-slow": (["calc"], ["compute"], ["prod"], "2.2.0", "us", 0.5, "DEGRADED"),
    "a-down": (["calc"], ["compute"], ["prod"], "2.2.0", "us", 0.2, "INACTIVE"),
    "a-gone": (["calc"], ["compute"], ["prod"], "2.2.0", "us", 0.0, "DECOMMISSIONED"),
}


def sel(**kw: Any) -> common_pb2.AgentSelector:
    return common_pb2.AgentSelector(**kw)


@pytest.fixture
async def rdb(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    """A client on DB 7, flushed, with FLEET written into the registry schema."""
    r = aioredis.Redis.from_url(redis_server.url_for_db(CATALOG_DB))
    await r.flushdb()
    for aid, (caps, stypes, tags, version, loc, health, status) in FLEET.items():
        await write_agent_record(
            r, aid, endpoint=f"10.0.0.{len(aid)}:7000", capabilities=caps,
            service_types=stypes, tags=tags, version=version, location=loc, health=health,
            status=status,
        )
    yield r
    await r.aclose()


async def ids(r: aioredis.Redis, **kw: Any) -> list[str]:
    return [a.agent_id for a in await find_agents(r, sel(**kw))]


async def test_capabilities_are_anded_and_ordered_by_health_then_id(rdb: aioredis.Redis) -> None:
    assert await ids(rdb, capabilities=["calc", "scope3"]) == ["a-dev", "a-us", "a-eu", "a-old"]
    assert await ids(rdb, capabilities=["calc", "nope"]) == []
    got = await find_agents(rdb, sel(capabilities=["scope3"], tags=["dev"]))
    assert got == [AgentInfo("a-dev", "10.0.0.5:7000", "ACTIVE", 1.0, "eu", "3.0.0")]


async def test_service_types_are_ored(rdb: aioredis.Redis) -> None:
    assert await ids(rdb, service_types=["storage", "analytics"]) == ["a-dev", "a-store"]
    assert await ids(rdb, service_types=["storage", "nope"]) == ["a-store"]
    # with capabilities: both must hold
    assert await ids(rdb, capabilities=["scope3"], service_types=["storage", "analytics"]) == [
        "a-dev"
    ]


async def test_tags_are_anded(rdb: aioredis.Redis) -> None:
    assert await ids(rdb, tags=["prod", "gpu"]) == ["a-store"]
    assert await ids(rdb, tags=["prod"]) == ["a-store", "a-us", "a-eu", "a-old", "a-slow"]
    assert await ids(rdb, tags=["nope"]) == []


async def test_version_constraints(rdb: aioredis.Redis) -> None:
    calc = ["calc", "scope3"]
    assert await ids(rdb, capabilities=calc, version_constraint=">=2.1.0") == [
        "a-dev", "a-us", "a-eu"
    ]
    assert await ids(rdb, capabilities=calc, version_constraint="^2.1") == ["a-us", "a-eu"]
    assert await ids(rdb, capabilities=calc, version_constraint="~2.0.1") == ["a-old"]
    assert await ids(rdb, capabilities=calc, version_constraint="=2.4") == ["a-eu"]
    assert await ids(rdb, capabilities=calc, version_constraint=">=2.0.0 <2.2.0") == [
        "a-us", "a-old"
    ]
    with pytest.raises(ConstraintError):
        await find_agents(rdb, sel(capabilities=calc, version_constraint="latest"))


async def test_min_health(rdb: aioredis.Redis) -> None:
    assert await ids(rdb, capabilities=["calc"], min_health_score=0.9) == [
        "a-dev", "a-store", "a-us", "a-eu"
    ]
    assert await ids(rdb, capabilities=["calc"], min_health_score=0.5) == [
        "a-dev", "a-store", "a-us", "a-eu", "a-old", "a-slow"
    ]


async def test_preferred_location_first_then_health_then_id(rdb: aioredis.Redis) -> None:
    assert await ids(rdb, capabilities=["calc"], preferred_location="eu") == [
        "a-dev", "a-eu", "a-old", "a-store", "a-us", "a-slow"
    ]
    assert await ids(rdb, capabilities=["calc"], preferred_location="us") == [
        "a-store", "a-us", "a-slow", "a-dev", "a-eu", "a-old"
    ]
    # a location nobody is in changes nothing
    assert await ids(rdb, capabilities=["calc"], preferred_location="ap") == await ids(
        rdb, capabilities=["calc"]
    )


async def test_status_filter(rdb: aioredis.Redis) -> None:
    s = sel(capabilities=["calc"], version_constraint="=2.2.0")
    assert [a.agent_id for a in await find_agents(rdb, s)] == ["a-slow"]
    every = await find_agents(rdb, s, usable_statuses=None)
    assert [(a.agent_id, a.status) for a in every] == [
        ("a-slow", "DEGRADED"), ("a-down", "INACTIVE"), ("a-gone", "DECOMMISSIONED")
    ]
    only = await find_agents(rdb, s, usable_statuses=("INACTIVE",))
    assert [a.agent_id for a in only] == ["a-down"]


async def test_empty_selector_matches_every_registered_agent(rdb: aioredis.Redis) -> None:
    assert await ids(rdb) == ["a-dev", "a-store", "a-us", "a-eu", "a-old", "a-slow"]
    assert await match_index(rdb, sel()) == sorted(FLEET)


async def test_half_removed_records_are_skipped(rdb: aioredis.Redis) -> None:
    # indexed but its hash is gone (a reader raced a deregistration)
    await rdb.delete(catalog.agent_key("a-us"))
    assert "a-us" in await match_index(rdb, sel(capabilities=["scope3"]))
    assert await ids(rdb, capabilities=["scope3"]) == ["a-dev", "a-eu", "a-old"]
    # a hash without index entries is not found by the index
    await write_agent_record(rdb, "a-lone", endpoint="10.0.0.9:7000")
    assert "a-lone" not in await ids(rdb, capabilities=["calc"])


async def test_decoded_replies_work_too(redis_server: Any, rdb: aioredis.Redis) -> None:
    r = aioredis.Redis.from_url(redis_server.url_for_db(CATALOG_DB), decode_responses=True)
    try:
        s = sel(capabilities=["calc"], tags=["prod"], preferred_location="eu")
        assert await find_agents(r, s) == await find_agents(rdb, s)
    finally:
        await r.aclose()


async def test_agrees_with_the_registry_daemon(redis_server: Any, tmp_path: Path) -> None:
    """Records written by the real registry read back in DiscoverAgents' order."""
    url = redis_server.url_for_db(CATALOG_DB)
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    specs = {
        "agent-c1": (["calc", "scope3"], ["compute"], ["prod"], "2.1.0", "us", 0.0),
        "agent-c2": (["calc", "scope3"], ["compute"], ["prod"], "2.4.1", "eu", 0.1),
        "agent-c3": (["calc"], ["storage"], ["prod", "gpu"], "1.9.0", "us", 0.0),
        "agent-c4": (["calc", "scope3"], ["analytics"], ["dev"], "3.0.0", "eu", 0.0),
        "agent-c5": (["calc", "scope3"], ["compute"], ["prod"], "2.0.5", "eu", 0.2),
        "agent-c6": (["calc"], ["compute"], ["prod"], "2.2.0", "us", 0.5),  # DEGRADED
        "agent-c7": (["calc"], ["compute"], ["prod"], "2.2.0", "us", 0.8),  # INACTIVE
    }
    reg = daemon("registry", tmp_path, "--redis-url", url, "--flap-threshold", "1")
    with reg.start():
        async with grpc.aio.insecure_channel(reg.target) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            for aid, (caps, stypes, tags, version, loc, err) in specs.items():
                await stub.RegisterAgent(registry_pb2.RegisterAgentRequest(agent=registry_pb2.Agent(
                    agent_id=aid, agent_type="T", version=version, endpoint="127.0.0.1:7000",
                    capabilities=caps, service_types=stypes, tags=tags, location=loc,
                )))
                await stub.Heartbeat(registry_pb2.HeartbeatRequest(
                    agent_id=aid, load=common_pb2.LoadMetrics(error_rate=err)))
            selectors = [
                sel(),
                sel(capabilities=["calc", "scope3"]),
                sel(service_types=["storage", "analytics"]),
                sel(tags=["prod", "gpu"]),
                sel(capabilities=["calc"], version_constraint="^2"),
                sel(capabilities=["calc"], min_health_score=0.85),
                sel(capabilities=["calc"], preferred_location="eu"),
                sel(capabilities=["calc"], tags=["prod"], preferred_location="us",
                    version_constraint=">=2.0.0 <2.3.0", min_health_score=0.3),
            ]
            for s in selectors:
                for inactive in (False, True):
                    resp = await stub.DiscoverAgents(
                        registry_pb2.DiscoverAgentsRequest(selector=s, include_inactive=inactive)
                    )
                    statuses = None if inactive else catalog.USABLE_STATUSES
                    ours = await find_agents(r, s, usable_statuses=statuses)
                    assert [a.agent_id for a in ours] == [a.agent_id for a in resp.agents], s
                    assert [a.health for a in ours] == pytest.approx(
                        [a.health_score for a in resp.agents]
                    )
            # the fleet really spans the statuses the filter has to drop
            every = await find_agents(r, sel(), usable_statuses=None)
            assert {a.status for a in every} == {"ACTIVE", "DEGRADED", "INACTIVE"}
            assert all(a.endpoint == "127.0.0.1:7000" for a in every)
    await r.aclose()
