"""Agents built with the SDK on the bus (issue 15), on the memory backend and
on a real Kafka broker: replicas of one agent type share a pattern's
messages, a raising handler ends in `<topic>.dlq`, `recipient_id` reaches
exactly that agent, `BusService.Request` and `ScatterGather` reach handlers
and return their values, and `Client.subscribe` with manual acks and nacks."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentmesh.agent import Agent
from agentmesh.agent.bus import MessageContext
from agentmesh.agent.message_dedupe import RedisMessageClaims
from agentmesh.bus.v1 import bus_pb2
from agentmesh.client import Client
from agentmesh.client.bus_messages import from_payload, make_envelope
from agentmesh.runtime.errors import InvalidArgument
from tests.integration.bus.conftest import Gateway, unique
from tests.integration.bus.helpers import Sub, seconds
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def agent_id() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


class Seen:
    """What the handlers of several agents saw: (agent id, message id, attempt)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int]] = []

    def ids(self) -> Counter[str]:
        return Counter(m for _, m, _ in self.rows)

    def by_agent(self) -> Counter[str]:
        return Counter(a for a, _, _ in self.rows)


@contextlib.asynccontextmanager
async def started(*agents: Agent) -> AsyncIterator[list[Agent]]:
    for a in agents:
        await a.start()
    try:
        yield list(agents)
    finally:
        await asyncio.gather(*(a.stop() for a in agents))


def make_agent(gw_target: str, *, agent_type: str, **kw: Any) -> Agent:
    return Agent(agent_id(), agent_type=agent_type, bus_target=gw_target, grace_period_s=5.0,
                 **kw)


async def publish(gw: Gateway, topic: str, n: int, *, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        r = await gw.stub.Publish(bus_pb2.PublishRequest(message=make_envelope(
            {"i": i}, topic=topic)))
        ids.append(r.id)
    return ids


async def test_two_replicas_of_one_type_share_a_pattern(gw: Gateway, redis_url: str):
    kind, base = f"share-{uuid.uuid4().hex[:6]}", unique("share")
    seen = Seen()
    # Redis holds the replicas' shared claims (dedupe by message id): a
    # rebalance may hand a message acked but not yet committed to the other one.
    replicas = [make_agent(gw.target, agent_type=kind, redis_url=redis_url) for _ in range(2)]
    for a in replicas:
        def bind(a: Agent) -> None:
            @a.on_message(f"{base}.*")
            async def handle(payload: dict[str, Any], ctx: MessageContext) -> None:
                seen.rows.append((ctx.agent_id, ctx.message.id, ctx.delivery_attempt))
        bind(a)
    async with started(*replicas):
        sent: list[str] = []
        # Publish in rounds until the group has spread the partitions over
        # both replicas: a Kafka rebalance takes seconds on a loaded machine
        # (the second member's join waits for the first to rejoin), so at
        # most 200 rounds and 90 s, a quarter second apart.
        deadline = asyncio.get_running_loop().time() + 90.0
        for r in range(200):
            for t in ("a", "b"):
                sent += await publish(gw, f"{base}.{t}", 5, start=r * 5)
            n = len(sent)
            await eventually(lambda n=n: len(seen.ids()) >= n, timeout_s=30,
                             what="every message handled")
            if len(seen.by_agent()) == 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.25)
        assert len(seen.by_agent()) == 2, seen.by_agent()
        assert set(seen.ids()) == set(sent)
        assert max(seen.ids().values()) == 1  # no double handling
        # The second replica's join is one rebalance: a message handed to the
        # first replica and not yet acked there is handed out once more, and
        # counted (max_deliveries is exact across a rebalance), so a handler
        # may see attempt 2, never more.
        assert {att for _, _, att in seen.rows} <= {1, 2}


async def test_a_raising_handler_ends_in_the_dead_letter_topic(gw: Gateway):
    topic = unique("poison")
    attempts: list[int] = []
    a = make_agent(gw.target, agent_type=f"poison-{uuid.uuid4().hex[:6]}")

    @a.on_message(topic, max_deliveries=3, retry_delay_ms=20)
    async def handle(payload: dict[str, Any], ctx: MessageContext) -> None:
        attempts.append(ctx.delivery_attempt)
        raise RuntimeError("cannot handle this")

    async with started(a):
        (mid,) = await publish(gw, topic, 1)
        async with Sub(gw.stub, [f"{topic}.dlq"], unique("dlq")) as dlq:
            (dead,) = await dlq.take(1, timeout_s=30)
    assert attempts == [1, 2, 3]
    assert dead.envelope.id == mid
    letters = await gw.stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
    (letter,) = letters.dead_letters
    assert letter.delivery_count == 3 and "cannot handle this" in letter.reason


async def test_recipient_id_reaches_exactly_that_agent(gw: Gateway):
    kind = f"inbox-{uuid.uuid4().hex[:6]}"
    got: dict[str, list[Any]] = {}
    agents = [make_agent(gw.target, agent_type=kind) for _ in range(3)]
    for a in agents:
        got[a.agent_id] = []

        def bind(a: Agent) -> None:
            @a.on_message(inbox=True)
            async def inbox(payload: dict[str, Any], ctx: MessageContext) -> None:
                got[ctx.agent_id].append((payload, ctx.sender_id, ctx.message.recipient_id))
        bind(a)
    async with started(*agents):
        sender, target = agents[0], agents[1]
        await sender.publish({"hello": "you"}, recipient_id=target.agent_id,
                             message_type="command")
        await eventually(lambda: got[target.agent_id], timeout_s=30, what="inbox delivery")
        # Give a wrongly addressed copy every chance to arrive before checking.
        await sender.publish({"hello": "me"}, recipient_id=sender.agent_id)
        await eventually(lambda: got[sender.agent_id], timeout_s=30, what="own inbox")
    assert got[target.agent_id] == [({"hello": "you"}, sender.agent_id, target.agent_id)]
    assert got[sender.agent_id] == [({"hello": "me"}, sender.agent_id, sender.agent_id)]
    assert got[agents[2].agent_id] == []


async def test_request_and_scatter_gather_reach_sdk_agents(gw: Gateway):
    base = unique("calc")
    agents = [make_agent(gw.target, agent_type=f"calc-{uuid.uuid4().hex[:6]}")
              for _ in range(3)]
    for n, a in enumerate(agents):
        def bind(a: Agent, n: int) -> None:
            @a.on_message(f"{base}.{n}")
            async def calc(payload: dict[str, Any], ctx: MessageContext) -> dict[str, Any]:
                return {"kg_co2e": payload["spend_usd"] * 0.5, "by": ctx.agent_id}
        bind(a, n)
    async with started(*agents):
        r = await gw.stub.Request(bus_pb2.RequestRequest(
            message=make_envelope({"spend_usd": 10.0}, topic=f"{base}.0"), timeout=seconds(20)))
        assert from_payload(r.reply.payload) == {"kg_co2e": 5.0, "by": agents[0].agent_id}
        assert r.reply.message_type == bus_pb2.MESSAGE_TYPE_RESPONSE
        assert r.reply.sender_id == agents[0].agent_id
        assert r.reply.correlation_id == r.correlation_id
        sg = await gw.stub.ScatterGather(bus_pb2.ScatterGatherRequest(
            message=make_envelope({"spend_usd": 2.0}),
            topics=[f"{base}.{n}" for n in range(3)], timeout=seconds(20)))
        assert not sg.partial
        assert sorted(from_payload(e.payload)["by"] for e in sg.replies) == sorted(  # type: ignore[index]
            a.agent_id for a in agents)
        # An agent asks another one with ctx-free agent.request: sender_id filled.
        reply = await agents[2].request({"spend_usd": 4.0}, topic=f"{base}.1")
        assert reply.payload == {"kg_co2e": 2.0, "by": agents[1].agent_id}


async def test_client_subscribe_acks_nacks_and_closes_on_break(gw: Gateway):
    topic, group = unique("cs"), unique("g")
    sent = await publish(gw, topic, 4)
    async with Client(bus=gw.target) as c:
        seen = []
        async for msg in c.subscribe(topic, group=group, auto_ack=False):
            seen.append((msg.id, msg.delivery_attempt))
            if msg.payload == {"i": 1} and msg.delivery_attempt == 1:
                await msg.nack(delay_ms=50)
            else:
                await msg.ack()
            if len({m for m, _ in seen}) == 4 and len(seen) == 5:
                break
        assert sorted({m for m, _ in seen}) == sorted(sent)
        assert (sent[1], 2) in seen
        # auto_ack: every message but the one in hand at `break` is acked.
        more = await publish(gw, topic, 3, start=10)
        got = []
        sub = c.subscribe(topic, group=group)
        async for msg in sub:
            got.append(msg.id)
            if len(got) == 3:
                break
        # `break` closes the stream (the loop's generator is finalized).
        await eventually(lambda: sub.closed, timeout_s=10, what="stream closed on break")
        assert sorted(got) == sorted(more)
        again = []
        async for msg in c.subscribe(topic, group=group):
            again.append(msg.id)
            await msg.ack()
            break
        assert again == [got[-1]]  # the one held at `break` is redelivered


async def test_stop_finishes_in_flight_handlers_and_hands_the_rest_over(gw: Gateway):
    topic, kind = unique("drain"), f"drain-{uuid.uuid4().hex[:6]}"
    running = asyncio.Event()
    finished: list[str] = []
    a = make_agent(gw.target, agent_type=kind, max_concurrency=1)

    @a.on_message(topic)
    async def slow(payload: dict[str, Any], ctx: MessageContext) -> None:
        running.set()
        await asyncio.sleep(0.5)
        finished.append(ctx.message.id)

    taken: list[str] = []
    b = make_agent(gw.target, agent_type=kind)

    @b.on_message(topic)
    async def fast(payload: dict[str, Any], ctx: MessageContext) -> None:
        taken.append(ctx.message.id)

    await a.start()
    sent = await publish(gw, topic, 6)
    await asyncio.wait_for(running.wait(), 30)
    await a.stop()  # what SIGTERM runs: the handler in flight finishes and is acked
    assert len(finished) == 1
    async with started(b):
        await eventually(lambda: set(finished) | set(taken) == set(sent), timeout_s=30,
                         what="the rest handled by the other replica")
    assert not set(finished) & set(taken)  # the finished one was acked, not redelivered
    assert b.bus is not None and b.bus.duplicates == 0


async def test_client_subscribe_raises_what_a_reopen_cannot_fix(gw: Gateway):
    async with Client(bus=gw.target) as c:
        with pytest.raises(InvalidArgument) as ei:
            async for _ in c.subscribe("bad..pattern", group=unique("g")):
                pass
    assert ei.value.field_violations


async def test_redis_claims_run_once_per_group(redis_url: str):
    client = aioredis.from_url(redis_url)
    claims = RedisMessageClaims(client)
    group, other, mid = unique("g"), unique("g"), uuid.uuid4().hex
    lease, ttl = 10_000, 60_000
    try:
        assert await claims.claim(group, mid, "a", lease_ms=lease) == ("run", 0)
        assert await claims.claim(group, mid, "b", lease_ms=lease) == ("busy", 0)
        assert await claims.claim(other, mid, "b", lease_ms=lease) == ("run", 0)  # per group
        await claims.release(group, mid, "b", failures=1, ttl_ms=ttl)  # not b's: kept
        assert await claims.claim(group, mid, "b", lease_ms=lease) == ("busy", 0)
        # a's handler failed: free again, and the next run learns one delivery failed.
        await claims.release(group, mid, "a", failures=1, ttl_ms=ttl)
        assert await claims.claim(group, mid, "b", lease_ms=lease) == ("run", 1)
        await claims.release(group, mid, "b", failures=2, ttl_ms=ttl)
        assert await claims.claim(group, mid, "c", lease_ms=lease) == ("run", 2)
        await claims.done(group, mid, ttl_ms=ttl)
        assert await claims.claim(group, mid, "d", lease_ms=lease) == ("done", 0)
        # A holder that died never releases: its claim lapses with the lease.
        assert await claims.claim(group, "m2", "dead", lease_ms=1000) == ("run", 0)
        assert await claims.claim(group, "m2", "c", lease_ms=lease) == ("busy", 0)

        async def taken() -> bool:
            return await claims.claim(group, "m2", "c", lease_ms=lease) == ("run", 0)

        await eventually(taken, timeout_s=10, every_s=0.05, what="lapsed claim taken")
    finally:
        await client.delete(*(RedisMessageClaims.redis_key(g, m) for g in (group, other)
                              for m in (mid, "m2")))
        await client.aclose()


async def test_max_concurrency_bounds_the_handlers_running_at_once(gw: Gateway):
    topic = unique("flow")
    running, peak, done = 0, 0, []
    a = make_agent(gw.target, agent_type=f"flow-{uuid.uuid4().hex[:6]}", max_concurrency=2)

    @a.on_message(topic)
    async def slow(payload: dict[str, Any], ctx: MessageContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        done.append(ctx.message.id)

    sent = await publish(gw, topic, 12)
    async with started(a):
        await eventually(lambda: len(done) == len(sent), timeout_s=30, what="all handled")
    assert peak == 2
