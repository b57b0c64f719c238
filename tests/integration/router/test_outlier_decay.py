"""Outlier ejection on real Redis (the router's Lua script), with explicit
clock values: back-to-back ejections grow base x count, and every full window
a target spends un-ejected takes one off the count, as Envoy's ejection-time
multiplier does."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agentmesh.runtime.routing.targets import OutcomePolicy, OutcomeRecorder, TargetState

pytestmark = pytest.mark.integration

WINDOW_MS = 1_000
BASE_MS = 1_000


async def fail_twice(rec: OutcomeRecorder, agent_id: str, now_ms: int) -> TargetState:
    await rec.record(agent_id, ok=False, now_ms=now_ms)
    return await rec.record(agent_id, ok=False, now_ms=now_ms + 1)


async def test_ejection_count_decays_one_per_healthy_window(store_redis: Any) -> None:
    # Breaker out of the way (threshold 1000); ejection after 2 calls at >= 50 %.
    rec = OutcomeRecorder(
        store_redis,
        OutcomePolicy(
            failure_threshold=1000, window_ms=WINDOW_MS, min_requests=2,
            failure_rate=0.5, base_ejection_ms=BASE_MS,
        ),
    )
    agent = f"agent-decay-{uuid.uuid4().hex[:6]}"

    first = await fail_twice(rec, agent, 0)
    assert first.ejections == 1 and first.ejected_until_ms == 1 + BASE_MS

    # Fails again as soon as it is back: the second ejection lasts twice as long.
    second = await fail_twice(rec, agent, first.ejected_until_ms)
    assert second.ejections == 2
    assert second.ejected_until_ms - (first.ejected_until_ms + 1) == 2 * BASE_MS

    # One healthy window after it comes back: the count drops to 1 before the
    # next ejection, which therefore lasts 2 x base, not 3 x base.
    t = second.ejected_until_ms + WINDOW_MS
    third = await fail_twice(rec, agent, t)
    assert third.ejections == 2
    assert third.ejected_until_ms - (t + 1) == 2 * BASE_MS

    # Five healthy windows: the count is back to 0 and the next ejection is 1 x base.
    t = third.ejected_until_ms + 5 * WINDOW_MS
    fourth = await fail_twice(rec, agent, t)
    assert fourth.ejections == 1
    assert fourth.ejected_until_ms - (t + 1) == BASE_MS
