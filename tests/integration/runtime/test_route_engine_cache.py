"""The routing engine's verdict cache on a real Redis: a route-cache entry
rebuilt after its TTL takes the CEL verdict from the cache instead of
evaluating again, while every rule change (also one that brings the rule
counters back to values seen before, as after a Redis flush) evaluates anew.

Evaluations are counted through the engine's own counter of route rule
conditions that failed to evaluate: a rule that reads a field the messages
lack fails on every evaluation, so each evaluation adds exactly one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from google.protobuf import struct_pb2

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime.routing import metrics
from agentmesh.runtime.routing.engine import RouteEngine
from agentmesh.runtime.routing.settings import RoutingSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[RouteEngine]:
    """An engine whose route cache never answers (TTL 0): every call rebuilds its entry."""
    rdb = aioredis.Redis.from_url(redis_url)
    eng = RouteEngine(rdb, RoutingSettings(route_cache_ttl_ms=0))
    await eng.rules.poll()
    yield eng
    await rdb.aclose()


def _msg(t: float, sender: str = "s1") -> R.RouteMessage:
    payload = struct_pb2.Struct()
    payload.update({"t": t})
    m = R.RouteMessage(message_type="vc-op", sender_id=sender)
    m.payload.struct_value.CopyFrom(payload)
    return m


def _evaluations() -> float:
    return metrics.CEL_ERRORS._value.get()


async def _rules(eng: RouteEngine, safety: dict[str, str]) -> None:
    """The failing route rule plus WARNING safety rules {name: condition}."""
    await eng.rules.create_route_rule(
        R.RouteRule(
            name="vc-fails",
            condition="payload.missing > 1",
            target_ids=["nobody"],
        )
    )
    for name, cond in safety.items():
        await eng.rules.create_safety_rule(
            R.SafetyRule(
                name=name,
                condition=cond,
                level=R.SAFETY_LEVEL_WARNING,
            )
        )


def _names(eng: RouteEngine, msg: R.RouteMessage) -> list[str]:
    passing, blocking = eng.evaluate_safety(msg)
    assert blocking == []  # WARNING rules never block
    return [v.rule_name for v in passing]


async def test_rebuilt_entries_reuse_the_verdict_and_rule_changes_evaluate_again(
    engine: RouteEngine, redis_url: str
) -> None:
    await _rules(engine, {"vc-cap": "payload.t < 100"})
    hot, other = _msg(150), _msg(150, sender="s2")
    misses0, evals0 = metrics.CACHE_MISSES._value.get(), _evaluations()
    for _ in range(3):
        assert _names(engine, hot) == ["vc-cap"]
    assert _names(engine, other) == ["vc-cap"]
    assert metrics.CACHE_MISSES._value.get() - misses0 == 4  # no route-cache answer
    assert _evaluations() - evals0 == 2  # one CEL evaluation per distinct message

    # A new rule: the next call evaluates again and sees it.
    await engine.rules.create_safety_rule(
        R.SafetyRule(
            name="vc-low",
            condition="payload.t < 120",
            level=R.SAFETY_LEVEL_WARNING,
        )
    )
    evals0 = _evaluations()
    assert _names(engine, hot) == ["vc-cap", "vc-low"]
    assert _evaluations() - evals0 == 1

    # A flush and rules whose counters come back to those `other` was judged
    # under (route 1, safety 1), with another condition: judged anew.
    flush = aioredis.Redis.from_url(redis_url)
    await flush.flushdb()
    await flush.aclose()
    assert await engine.rules.poll()
    await _rules(engine, {"vc-cap": "payload.t < 200"})
    assert engine.rules.gen == (1, 1)
    evals0 = _evaluations()
    assert _names(engine, other) == []
    assert _evaluations() - evals0 == 1
