"""Distribution of every strategy, the panic threshold and no-target errors,
through a real router process over real agent processes and real Redis."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2

from agentmesh import catalog
from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime.errors import from_rpc_error
from tests.registry_records import write_agent_record
from tests.waiting import eventually

pytestmark = pytest.mark.integration

HEALTH = {"s1": 1.0, "s2": 0.9, "s3": 0.6, "s4": 0.4}


@pytest.fixture(scope="module")
def fleet(procs: Any) -> dict[str, Any]:
    """Four agents (health 1.0, 0.9, 0.6, 0.4) with capability `calc`, one router."""
    agents = {aid: procs.agent(aid, "--health", str(h)) for aid, h in HEALTH.items()}
    return {"agents": agents, "router": procs.router()}


async def group(rdb: aioredis.Redis, fleet: dict[str, Any], ids: list[str]) -> str:
    """A fresh capability naming `ids`, so tests do not share round-robin state."""
    cap = f"cap-{uuid.uuid4().hex[:8]}"
    for aid in ids:
        await rdb.sadd(catalog.capability_index_key(cap), aid)
    return cap


async def route_many(stub: Any, reqs: list[R.RouteRequest]) -> list[R.RouteResult]:
    resp = await stub.RouteBatch(R.RouteBatchRequest(requests=reqs))
    return list(resp.results)


def winners(results: list[R.RouteResult]) -> Counter[str]:
    assert all(r.WhichOneof("result") == "decision" for r in results), results[0]
    return Counter(r.decision.targets[0].agent_id for r in results)


async def test_round_robin_is_even_within_one(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))
    req = R.RouteRequest(message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_ROUND_ROBIN)
    counts = winners(await route_many(stub, [req] * 302))
    assert set(counts) == set(HEALTH)
    assert max(counts.values()) - min(counts.values()) <= 1
    # one unary Route reports the strategy and the cache
    one = await stub.Route(req)
    assert one.strategy == R.STRATEGY_ROUND_ROBIN and one.cache_hit


async def test_least_loaded_and_weighted_random_follow_reported_load(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))
    loads = {"s1": 0, "s2": 8, "s3": 8, "s4": 10}
    for aid, q in loads.items():
        await stub.ReportLoad(
            R.ReportLoadRequest(
                agent_id=aid, load=common_pb2.LoadMetrics(queue_size=q, capacity=10)
            )
        )
    try:
        msg = R.RouteMessage(message_type=cap)
        # The router refreshes load every state_ttl_ms; on a loaded machine a
        # fixed sleep can be too short, so wait until decisions show the load.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            probe = winners(
                await route_many(
                    stub, [R.RouteRequest(message=msg, strategy=R.STRATEGY_LEAST_LOADED)] * 40
                )
            )
            if probe["s4"] == 0 and probe["s1"] >= 10:
                break
            assert asyncio.get_running_loop().time() < deadline, f"load never seen: {probe}"
            await asyncio.sleep(0.2)
        n_ll = 2400
        ll = winners(
            await route_many(
                stub, [R.RouteRequest(message=msg, strategy=R.STRATEGY_LEAST_LOADED)] * n_ll
            )
        )
        # power of two choices: the most loaded never wins; the idle one wins
        # whenever it is drawn (3 of the 6 pairs), s2 and s3 a quarter each.
        # Margins (multinomial, unseeded router): s1/n has sd 0.5/sqrt(n) ~ 0.010,
        # so 0.4..0.6 is ~10 sd. s1 - 1.5*s2 has mean 0.125n = 300 and sd
        # sqrt(n * (0.25 + 2.25*0.1875 + 3*0.125)) ~ 50: 6 sd (at 600 draws it
        # was 3 sd, a ~0.3% flake per run, hence 2400 draws).
        assert ll["s4"] == 0
        assert 0.4 < ll["s1"] / n_ll < 0.6
        assert ll["s1"] > 1.5 * max(ll["s2"], ll["s3"])
        wr = winners(
            await route_many(
                stub, [R.RouteRequest(message=msg, strategy=R.STRATEGY_WEIGHTED_RANDOM)] * 600
            )
        )
        # weights 1/(0.05+load): s1 20, s2 and s3 ~2.2, s4 ~1.8 -> s1 ~77%.
        # Margins: s1/600 has sd sqrt(0.77*0.23/600) ~ 0.017, so 0.6..0.92 is
        # > 8 sd; s4 ~7% (~41 draws, sd ~6) against s1/4 ~ 115: > 10 sd.
        assert 0.6 < wr["s1"] / 600 < 0.92
        assert wr["s4"] < wr["s1"] / 4
    finally:
        for aid in loads:
            await stub.ReportLoad(R.ReportLoadRequest(agent_id=aid, load=common_pb2.LoadMetrics()))


async def test_content_based_rules(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))
    tag = uuid.uuid4().hex[:6]
    await stub.CreateRouteRule(
        R.CreateRouteRuleRequest(
            rule=R.RouteRule(
                name=f"big-{tag}",
                priority=10,
                condition=f'message.type == "{cap}" && payload.size > 100.0',
                target_ids=["s3", "s2"],
                strategy=R.STRATEGY_CONTENT_BASED,
            )
        )
    )
    await stub.CreateRouteRule(
        R.CreateRouteRuleRequest(
            rule=R.RouteRule(
                name=f"small-{tag}",
                priority=5,
                condition=f'message.type == "{cap}" && payload.size <= 100.0',
                target_ids=["s1"],
                strategy=R.STRATEGY_CONTENT_BASED,
            )
        )
    )
    try:
        reqs = []
        for size in (5, 500, 50, 5000) * 25:
            m = R.RouteMessage(message_type=cap)
            m.payload.struct_value.update({"size": size})
            reqs.append(R.RouteRequest(message=m))
        results = await route_many(stub, reqs)
        for size, res in zip((5, 500, 50, 5000) * 25, results, strict=True):
            want = ("s3", f"big-{tag}") if size > 100 else ("s1", f"small-{tag}")
            assert (res.decision.targets[0].agent_id, res.decision.rule_name) == want
            assert res.decision.strategy == R.STRATEGY_CONTENT_BASED
        # identical messages are served from the route cache after the first
        assert sum(r.decision.cache_hit for r in results) >= 96
        # no rule matches: CONTENT_BASED has nowhere to go
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Route(
                R.RouteRequest(
                    message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_CONTENT_BASED
                )
            )
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for name in (f"big-{tag}", f"small-{tag}"):
            await stub.DeleteRouteRule(R.DeleteRouteRuleRequest(name=name))


async def test_priority_sends_critical_to_the_healthiest(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))

    def req(p: int) -> R.RouteRequest:
        return R.RouteRequest(
            message=R.RouteMessage(message_type=cap, priority=p),  # type: ignore[arg-type]
            strategy=R.STRATEGY_PRIORITY,
        )

    crit = winners(await route_many(stub, [req(common_pb2.PRIORITY_CRITICAL)] * 100))
    high = winners(await route_many(stub, [req(common_pb2.PRIORITY_HIGH)] * 100))
    low = winners(await route_many(stub, [req(common_pb2.PRIORITY_LOW)] * 200))
    assert crit == Counter({"s1": 100}) and high == Counter({"s1": 100})
    assert len(low) >= 3  # the rest spread by load over everyone


async def test_affinity_is_sticky(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))
    keys = [f"user-{i}" for i in range(40)]
    reqs = [
        R.RouteRequest(
            message=R.RouteMessage(message_type=cap, affinity_key=k), strategy=R.STRATEGY_AFFINITY
        )
        for k in keys
    ]
    first = [r.decision.targets[0].agent_id for r in await route_many(stub, reqs)]
    for _ in range(3):
        again = [r.decision.targets[0].agent_id for r in await route_many(stub, reqs)]
        assert again == first
    assert len(set(first)) >= 3
    ttl = await rdb.pttl(next(iter(await rdb.keys(b"am:rt:aff:*"))))
    assert 0 < ttl <= 300_000


async def test_broadcast_and_failover(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))
    b = await stub.Route(
        R.RouteRequest(message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_BROADCAST)
    )
    assert sorted(t.agent_id for t in b.targets) == sorted(HEALTH)
    b2 = await stub.Route(
        R.RouteRequest(
            message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_BROADCAST, max_targets=2
        )
    )
    assert len(b2.targets) == 2
    # an INACTIVE agent first in the list is skipped; order is kept otherwise
    await write_agent_record(rdb, "down-1", endpoint="127.0.0.1:9", status="INACTIVE")
    f = await stub.Route(
        R.RouteRequest(
            message=R.RouteMessage(target_ids=["down-1", "s3", "s2"]), strategy=R.STRATEGY_FAILOVER
        )
    )
    assert [t.agent_id for t in f.targets] == ["s3"]
    # without an explicit order: healthiest first
    h = await stub.Route(
        R.RouteRequest(message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_FAILOVER)
    )
    assert h.targets[0].agent_id == "s1"


async def test_consistent_hash_moves_at_most_1_25_over_n(rdb, fleet, procs, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, list(HEALTH))
    keys = [f"order-{i}" for i in range(2000)]

    async def owners() -> list[str]:
        reqs = [
            R.RouteRequest(
                message=R.RouteMessage(message_type=cap, routing_key=k),
                strategy=R.STRATEGY_CONSISTENT_HASH,
            )
            for k in keys
        ]
        return [r.decision.targets[0].agent_id for r in await route_many(stub, reqs)]

    async def owners_with(agent_id: str) -> list[str] | None:
        got = await owners()
        return got if agent_id in got else None

    before = await owners()
    assert before == await owners()  # stable
    spread = Counter(before)
    assert all(c > 2000 * 0.1 for c in spread.values()), spread
    procs.agent("s5", "--capability", cap)  # a fifth real agent joins the pool
    # The router sees s5 after its next state refresh (state_ttl_ms): wait for
    # that instead of a fixed sleep, which a loaded machine can overrun.
    after = await eventually(
        lambda: owners_with("s5"), timeout_s=15, every_s=0.05, what="s5 in the ring"
    )
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    n = 5
    assert 0 < len(moved) <= 1.25 * len(keys) / n
    assert all(b == "s5" for _, b in moved)  # keys only move to the new target


async def test_panic_threshold_and_no_healthy_target(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    cap = await group(rdb, fleet, ["s1"])
    for i in range(3):
        await write_agent_record(
            rdb, f"gone-{cap}-{i}", endpoint="127.0.0.1:9", capabilities=[cap], status="INACTIVE"
        )
    # 1 healthy of 4 is below the 50% panic threshold: everyone is eligible
    res = await route_many(
        stub,
        [R.RouteRequest(message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_ROUND_ROBIN)]
        * 8,
    )
    assert all(r.decision.panic for r in res)
    assert len(winners(res)) == 4
    # only decommissioned candidates: UNAVAILABLE with the reasons in ErrorInfo
    dead = f"dead-{uuid.uuid4().hex[:6]}"
    await write_agent_record(
        rdb, f"{dead}-1", endpoint="127.0.0.1:9", capabilities=[dead], status="DECOMMISSIONED"
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Route(R.RouteRequest(message=R.RouteMessage(message_type=dead)))
    err = from_rpc_error(e.value)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    info = err.detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "NO_HEALTHY_TARGET"
    assert info.metadata["skipped_decommissioned"] == "1"


async def test_route_cache_is_invalidated_by_health_and_rule_changes(rdb, fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    flap = f"flap-{uuid.uuid4().hex[:6]}"
    endpoint = fleet["agents"]["s1"].target
    await write_agent_record(rdb, flap, endpoint=endpoint)
    msg = R.RouteMessage(target_ids=[flap, "s2"], metadata={"k": flap})
    req = R.RouteRequest(message=msg, strategy=R.STRATEGY_FAILOVER)
    assert (await stub.Route(req)).targets[0].agent_id == flap
    hit = await stub.Route(req)
    assert hit.cache_hit and hit.targets[0].agent_id == flap
    # the registry marks the agent INACTIVE: the next refresh drops the cache
    await rdb.hset(catalog.agent_key(flap), "status", "INACTIVE")
    # Until the router's next state refresh the cached decision stands; the
    # first decision that differs must be a fresh one (the cache was dropped).
    async def changed() -> R.RouteResponse | None:
        r = await stub.Route(req)
        return r if r.targets[0].agent_id != flap else None

    after = await eventually(changed, timeout_s=15, every_s=0.05, what="status change seen")
    assert not after.cache_hit and after.targets[0].agent_id == "s2"
    assert (await stub.Route(req)).cache_hit
    # a new rule invalidates every entry, and applies at once
    name = f"r-{flap}"
    await stub.CreateRouteRule(
        R.CreateRouteRuleRequest(
            rule=R.RouteRule(
                name=name, condition=f'message.metadata.k == "{flap}"', target_ids=["s3"]
            )
        )
    )
    try:
        ruled = await stub.Route(req)
        assert not ruled.cache_hit and ruled.rule_name == name
        assert ruled.targets[0].agent_id == "s3"
    finally:
        await stub.DeleteRouteRule(R.DeleteRouteRuleRequest(name=name))


async def test_metrics_are_exported_with_bounded_labels(fleet, stub_for) -> None:
    stub = stub_for(fleet["router"])
    await stub.Route(
        R.RouteRequest(message=R.RouteMessage(message_type="calc"), strategy=R.STRATEGY_BROADCAST)
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Route(R.RouteRequest(message=R.RouteMessage(message_type="calc"), strategy=99))  # type: ignore[arg-type]
    # an undefined enum value is refused by the runtime's request check, before routing
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError):  # a defined value routing refuses
        await stub.Route(
            R.RouteRequest(
                message=R.RouteMessage(message_type="calc"), strategy=R.STRATEGY_CONSISTENT_HASH
            )
        )
    port = fleet["router"].metrics_port
    text = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    )
    assert 'routing_messages_total{status="OK",strategy="BROADCAST"}' in text
    assert 'routing_messages_total{status="INVALID_ARGUMENT",strategy="CONSISTENT_HASH"}' in text
    assert "routing_latency_ms_bucket" in text and "routing_cache_hits_total" in text
    assert 'routing_breaker_targets{state="OPEN"}' in text
    # breaker state is a gauge per state, never a series per target
    assert "agent_id=" not in text
