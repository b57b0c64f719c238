"""The router's Redis state on a single Redis and on Redis Cluster (`store_redis`).

Rules and guardrails (MULTI/EXEC with their change counter in the `{cfg}`
slot, polled by replicas), per-agent target states (one script per agent in
the agent's slot, the index SET added beside it), named breakers, token
buckets and affinity bindings run on both; on the cluster the test also checks
the documented slots.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.crc import key_slot

from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.deps import is_cluster
from agentmesh.runtime.routing import keys
from agentmesh.runtime.routing.affinity import AffinityStore
from agentmesh.runtime.routing.ratelimit import RateLimiter
from agentmesh.runtime.routing.rules import RuleStore
from agentmesh.runtime.routing.targets import NamedBreakerRecorder, OutcomePolicy, OutcomeRecorder

pytestmark = pytest.mark.integration


async def test_rules_targets_breakers_buckets_affinity(store_redis: Any) -> None:
    rules, replica = RuleStore(store_redis), RuleStore(store_redis)
    await replica.poll()
    await rules.create_route_rule(router_pb2.RouteRule(
        name="r1", condition='message.message_type == "calc"', priority=5,
        selector=common_pb2.AgentSelector(capabilities=["calc"]),
    ))
    await rules.create_safety_rule(router_pb2.SafetyRule(
        name="s1", condition="true", level=router_pb2.SAFETY_LEVEL_WARNING,
    ))
    assert await replica.poll()  # the other replica sees both through the counter
    assert [c.rule.name for c in replica.route_rules] == ["r1"]
    assert [c.rule.name for c in replica.safety_rules] == ["s1"]
    await rules.delete_route_rule("r1")
    assert await replica.poll() and replica.route_rules == []

    rec = OutcomeRecorder(store_redis, OutcomePolicy(failure_threshold=2))
    a, b = (f"agent-{n}-{uuid.uuid4().hex[:6]}" for n in "ab")
    await rec.record(a, ok=False)
    st = await rec.record(a, ok=False)
    assert st.breaker == "OPEN"
    states = await rec.record_successes({b: 3})
    assert states[0].breaker == "CLOSED"
    page, last = await rec.list_states(after="", limit=10)
    assert sorted(s.agent_id for s in page) == sorted([a, b]) and last == ""

    named = NamedBreakerRecorder(store_redis)
    for _ in range(2):
        br = await named.record(keys.named_breaker("payments"), "payments", ok=False,
                                failure_threshold=2, open_ms=60_000, half_open_successes=1)
    assert br.breaker == "OPEN"

    limiter = RateLimiter(store_redis, rate_per_s=0.001, burst=2)
    verdicts = [await limiter.take("caller") for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    aff = AffinityStore(store_redis, ttl_s=60)
    assert await aff.bind("pool", "user-1", proposed=a, eligible={a, b}) == a
    assert await aff.bind("pool", "user-1", proposed=b, eligible={a, b}) == a

    if is_cluster(store_redis):
        assert len({key_slot(k.encode()) for k in (keys.RULES, keys.SAFETY, keys.GEN)}) == 1
        assert key_slot(keys.target(a).encode()) == key_slot(a.encode())
