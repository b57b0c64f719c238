"""Stale load reports: an agent whose reports stopped reads as neutral load, and
ListTargetStates says so; real router processes over real agent processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentmesh import catalog
from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2 as R
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def _least_loaded_winners(stub: Any, cap: str, n: int = 40) -> Counter[str]:
    req = R.RouteRequest(message=R.RouteMessage(message_type=cap), strategy=R.STRATEGY_LEAST_LOADED)
    resp = await stub.RouteBatch(R.RouteBatchRequest(requests=[req] * n))
    return Counter(r.decision.targets[0].agent_id for r in resp.results)


async def _settle(stub: Any, cap: str, want: str, timeout_s: float = 15.0) -> Counter[str]:
    """Route until every decision picks `want` (pools refresh every state_ttl_ms)."""
    deadline = time.monotonic() + timeout_s
    while True:
        won = await _least_loaded_winners(stub, cap)
        if set(won) == {want}:
            return won
        assert time.monotonic() < deadline, f"decisions never settled on {want}: {won}"
        await asyncio.sleep(0.2)


async def test_a_stale_load_report_counts_as_neutral(
    procs: Any, rdb: aioredis.Redis, stub_for
) -> None:
    cap = f"stale-{uuid.uuid4().hex[:6]}"
    busy, fresh = f"agent-busy-{uuid.uuid4().hex[:6]}", f"agent-fresh-{uuid.uuid4().hex[:6]}"
    await procs.agents([(a, ("--capability", cap)) for a in (busy, fresh)])
    aging = stub_for(procs.router("--max-load-age-ms", "2000"))
    trusting = stub_for(procs.router("--max-load-age-ms", "0"))
    # `busy` reported a full queue a minute ago and then went quiet; `fresh`
    # reports a half-full queue now.
    for aid, q in ((busy, 10), (fresh, 5)):
        await aging.ReportLoad(
            R.ReportLoadRequest(
                agent_id=aid, load=common_pb2.LoadMetrics(queue_size=q, capacity=10)
            )
        )
    minute_ago = int(time.time() * 1000) - 60_000
    await rdb.hset(catalog.load_key(busy), "updated_ms", str(minute_ago))

    # With two candidates power-of-two-choices compares both every time: the
    # lower load always wins. Stale `busy` reads as idle and wins ...
    await _settle(aging, cap, busy)
    # ... while a router that trusts every report keeps avoiding it.
    await _settle(trusting, cap, fresh)

    # ListTargetStates shows the report time and the verdict (states exist once
    # a call's outcome was recorded).
    rr = R.InvokeRequest(
        message=R.RouteMessage(message_type=cap), action="work", strategy=R.STRATEGY_ROUND_ROBIN
    )
    called = {(await aging.Invoke(rr, timeout=10)).agent_id for _ in range(4)}
    assert called == {busy, fresh}

    async def both() -> dict[str, R.TargetState] | None:
        # Successes reach Redis in the recorder's next flush (every 200 ms).
        resp = await aging.ListTargetStates(R.ListTargetStatesRequest(page_size=1000))
        states = {s.agent_id: s for s in resp.states}
        return states if {busy, fresh} <= set(states) else None

    got = await eventually(both, timeout_s=15, every_s=0.1, what="target states of both agents")
    assert got[busy].load_stale and got[busy].load_report_time.ToMilliseconds() == minute_ago
    assert not got[fresh].load_stale and got[fresh].HasField("load_report_time")
