"""The runtime's AgentClient against a real Redis and a real in-process agent:
outcomes reach the shared breaker state (successes coalesced, failures at
once and after the successes that preceded them), an opened breaker makes
the agent ineligible, and one hash ring places keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.agents import SUCCESS_FLUSH_S, AgentClient, call_message
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.errors import Unavailable
from agentmesh.runtime.routing.settings import RoutingSettings
from tests.registry_records import write_agent_record

pytestmark = pytest.mark.integration


class _Agent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self) -> None:
        self.fail = False
        self.calls = 0

    async def Execute(self, request: Any, context: Any) -> agent_pb2.ExecuteResponse:
        self.calls += 1
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        out = agent_pb2.ExecuteResponse(agent_id="")
        out.output.update({"key": request.idempotency_key, "attempt": request.attempt})
        return out


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def agent(rdb: aioredis.Redis) -> AsyncIterator[tuple[str, str, _Agent]]:
    impl = _Agent()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(impl, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    aid, cap = f"agent-ac-{uuid.uuid4().hex[:6]}", f"cap-{uuid.uuid4().hex[:6]}"
    await write_agent_record(rdb, aid, endpoint=f"127.0.0.1:{port}", capabilities=[cap])
    yield aid, cap, impl
    await server.stop(None)


@pytest.fixture
async def client(rdb: aioredis.Redis) -> AsyncIterator[AgentClient]:
    settings = RoutingSettings(
        breaker_failure_threshold=2, panic_threshold=0.0, outlier_min_requests=1000,
        state_ttl_ms=50,
    )
    c = AgentClient.create(
        rdb, settings, lambda ep: create_channel(ep, propagate=False), identity="test"
    )
    await c.start()
    yield c
    await c.close()


async def _state(rdb: aioredis.Redis, aid: str) -> dict[str, str]:
    raw = await rdb.hgetall(f"am:rt:target:{{{aid}}}")
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_successes_are_coalesced_and_failures_keep_their_order(
    client: AgentClient, agent: tuple[str, str, _Agent], rdb: aioredis.Redis
) -> None:
    aid, cap, impl = agent
    msg = call_message(action=cap, agent_id=aid)
    for i in range(5):
        _, out = await client.execute(msg, idempotency_key=f"k{i}", attempt=1, timeout_s=5)
        assert out.response is not None
    await asyncio.sleep(SUCCESS_FLUSH_S * 4)
    st = await _state(rdb, aid)
    assert st["ws"] == "5" and st["cf"] == "0" and st["state"] == "CLOSED"
    # three successes still pending, then a failure: the successes land first,
    # so the failure is counted after them and is not reset by a late flush
    for i in range(3):
        await client.execute(msg, idempotency_key=f"m{i}", attempt=1, timeout_s=5)
    impl.fail = True
    _, out = await client.execute(msg, idempotency_key="f", attempt=1, timeout_s=5)
    assert out.code == grpc.StatusCode.UNAVAILABLE and out.reached
    st = await _state(rdb, aid)
    assert st["ws"] == "8" and st["wf"] == "1" and st["cf"] == "1"
    await asyncio.sleep(SUCCESS_FLUSH_S * 4)
    assert (await _state(rdb, aid))["cf"] == "1"


async def test_open_breaker_makes_the_agent_ineligible(
    client: AgentClient, agent: tuple[str, str, _Agent], rdb: aioredis.Redis
) -> None:
    aid, cap, impl = agent
    impl.fail = True
    msg = call_message(action=cap, agent_id=aid)
    for i in range(2):
        _, out = await client.execute(msg, idempotency_key=f"f{i}", attempt=1, timeout_s=5)
        assert out.code == grpc.StatusCode.UNAVAILABLE
    assert (await _state(rdb, aid))["state"] == "OPEN"
    calls = impl.calls
    with pytest.raises(Unavailable) as e:
        await client.execute(msg, idempotency_key="after", attempt=1, timeout_s=5)
    assert e.value.reason == "NO_HEALTHY_TARGET"
    assert impl.calls == calls  # refused before anything was sent
    sel = call_message(action=cap, selector=common_pb2.AgentSelector(capabilities=[cap]))
    assert await client.eligible_ids(sel) == frozenset()


async def test_keyed_pick_is_the_ketama_ring_owner(
    client: AgentClient, rdb: aioredis.Redis
) -> None:
    from uhashring import HashRing

    cap = f"ring-{uuid.uuid4().hex[:6]}"
    ids = [f"r{i}-{cap}" for i in range(5)]
    for i, a in enumerate(ids):
        await write_agent_record(rdb, a, endpoint=f"127.0.0.1:{40000 + i}", capabilities=[cap])
    sel = common_pb2.AgentSelector(capabilities=[cap])
    # the ring every daemon and the router use: ketama, `vnodes` points per agent
    ring = HashRing(nodes=sorted(ids), vnodes=client.settings.vnodes)
    owners = set()
    for key in (f"saga-{n}/step" for n in range(40)):
        picked = await client.pick(call_message(action=cap, selector=sel, routing_key=key))
        assert picked.targets[0].agent_id == ring.get_node(key)
        owners.add(picked.targets[0].agent_id)
    assert len(owners) >= 3  # keys spread over the ring
