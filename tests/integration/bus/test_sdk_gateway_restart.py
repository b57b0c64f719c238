"""SDK agents and `Client.subscribe` across a bus gateway killed with SIGKILL
and restarted (issue 15), on a real Kafka broker: two replicas of one agent
type lose nothing and handle nothing twice, and a client's subscribe
iterator resumes by itself; and an SDK agent and a client iterator across a
gateway stopped with SIGTERM (its streams end) and restarted, on the memory
backend."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.agent import Agent
from agentmesh.agent.bus import MessageContext
from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.client import Client
from agentmesh.client.bus_messages import make_envelope
from tests.infra import free_port
from tests.integration.bus.conftest import unique
from tests.procs import DaemonProcess, daemon
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def publish(target: str, topic: str, n: int, start: int) -> list[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = bus_pb2_grpc.BusServiceStub(ch)
        return [(await stub.Publish(bus_pb2.PublishRequest(
            message=make_envelope({"i": i}, topic=topic)), timeout=20)).id
            for i in range(start, start + n)]


@pytest.mark.kafka
async def test_replicas_and_client_subscribe_survive_a_gateway_sigkill(
    kafka_broker: Any, redis_url: str, tmp_path: Path
):
    port = free_port()
    flags = ["--kafka-bootstrap", kafka_broker.bootstrap, "--session-timeout-ms", "6000",
             "--port", str(port), "--default-partitions", "4"]
    base, kind = unique("kill"), f"kill-{uuid.uuid4().hex[:6]}"
    topic = f"{base}.orders"
    handled: list[tuple[str, str, int]] = []  # (agent, message id, attempt)
    failed: list[tuple[str, int]] = []  # (message id, attempt)

    def replica() -> Agent:
        a = Agent(f"agent-{uuid.uuid4().hex[:8]}", agent_type=kind, redis_url=redis_url,
                  bus_target=f"127.0.0.1:{port}", grace_period_s=5.0, max_concurrency=4)

        # The nack's delay outlasts the gateway: the failed message comes
        # back from the restarted one, whose delivery count starts at 1 again.
        @a.on_message(f"{base}.*", ack_deadline_ms=20_000, retry_delay_ms=30_000)
        async def handle(payload: dict[str, Any], ctx: MessageContext) -> None:
            await asyncio.sleep(0.01)  # some handlers are in flight at the kill
            if payload["i"] == 3 and not failed:
                failed.append((ctx.message.id, ctx.delivery_attempt))
                raise RuntimeError("fails once")
            handled.append((ctx.agent_id, ctx.message.id, ctx.delivery_attempt))

        return a

    gw: DaemonProcess = daemon("bus", tmp_path, *flags).start()
    replicas = [replica(), replica()]
    client_seen: list[str] = []
    async with Client(bus=f"127.0.0.1:{port}") as c:
        sub = c.subscribe(f"{base}.*", group=unique("client"))

        async def follow() -> None:
            async for msg in sub:
                client_seen.append(msg.id)

        try:
            for a in replicas:
                await a.start()
            follower = asyncio.create_task(follow())
            sent = await publish(gw.target, topic, 40, 0)
            # Kill it while messages are being handled and acked.
            await eventually(lambda: len(handled) >= 10 and failed, timeout_s=30,
                             what="handling")
            gw.signal(signal.SIGKILL)
            gw.wait(10)
            gw = daemon("bus", tmp_path, *flags).start()
            sent += await publish(gw.target, topic, 40, 40)
            await eventually(lambda: {m for _, m, _ in handled} >= set(sent), timeout_s=60,
                             what="every message handled after the restart")
            await eventually(lambda: set(client_seen) >= set(sent), timeout_s=60,
                             what="the client's iterator resumed")
            follower.cancel()
            resumed = [s.connections for a in replicas if a.bus for s, _ in a.bus._subs]
        finally:
            await asyncio.gather(*(a.stop() for a in replicas), return_exceptions=True)
            gw.kill()
    counts = Counter(m for _, m, _ in handled)
    assert set(counts) == set(sent)  # no loss
    assert max(counts.values()) == 1, [m for m, n in counts.items() if n > 1]  # once each
    # The one that failed before the kill was handled after it, as a redelivery.
    ((fail_id, fail_attempt),) = failed
    assert fail_attempt == 1
    assert [att for _, m, att in handled if m == fail_id] == [2]
    assert resumed and min(resumed) >= 2, resumed  # each agent's stream was reopened
    assert sub.connections >= 2  # the client's stream was reopened
    assert set(client_seen) == set(sent)


async def test_streams_resume_after_a_gateway_sigterm_restart(tmp_path: Path):
    port = free_port()
    flags = ["--backend", "memory", "--port", str(port), "--grace-period-s", "0.5",
             "--topic-refresh-ms", "300"]
    topic = unique("term")
    got: list[str] = []
    a = Agent(f"agent-{uuid.uuid4().hex[:8]}", agent_type=f"term-{uuid.uuid4().hex[:6]}",
              bus_target=f"127.0.0.1:{port}")

    @a.on_message(topic)
    async def handle(payload: dict[str, Any], ctx: MessageContext) -> None:
        got.append(ctx.message.id)

    gw = daemon("bus", tmp_path, *flags).start()
    seen: list[str] = []
    async with Client(bus=f"127.0.0.1:{port}") as c:
        sub = c.subscribe(topic, group=unique("client"))
        await sub.start()

        async def follow() -> None:
            async for msg in sub:
                seen.append(msg.id)

        follower = asyncio.create_task(follow())
        try:
            await a.start()
            first = await publish(gw.target, topic, 1, 0)
            await eventually(lambda: set(seen) >= set(first) and set(got) >= set(first),
                             timeout_s=20, what="delivered before the restart")
            assert gw.stop() == 0  # SIGTERM: the gateway ends its streams
            gw = daemon("bus", tmp_path, *flags).start()
            # The memory backend starts empty: what is published now must arrive.
            await eventually(lambda: sub.connections >= 2, timeout_s=30, what="client reopened")
            second = await publish(gw.target, topic, 3, 1)
            await eventually(lambda: set(seen) >= set(second) and set(got) >= set(second),
                             timeout_s=30, what="delivered after the restart")
        finally:
            follower.cancel()
            await a.stop()
            gw.stop()
