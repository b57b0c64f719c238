"""Defect 2 of issue 20: streams the client cancels, or whose deadline
expires, are counted CANCELLED or DEADLINE_EXCEEDED and log nothing at
ERROR: a server stream after its first event (WatchAgents) and bidi
streams (HeartbeatStream, RouteStream, PublishStream, Subscribe) of real
daemons."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.router.v1 import router_pb2, router_pb2_grpc
from tests.hardening import errors_in_log, handled_counts, log_size
from tests.integration.hardening.conftest import StartDaemon
from tests.integration.registry.helpers import agent
from tests.procs import DaemonProcess, scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def _counted(proc: DaemonProcess, method: str, want: dict[str, float]) -> None:
    """Wait until `method` is counted with exactly the codes in `want`."""
    got: dict[str, float] = {}

    async def check() -> bool:
        nonlocal got
        body = await asyncio.to_thread(scrape_metrics, proc.metrics_port)
        got = handled_counts(body, method)
        return got == want

    try:
        await eventually(check, timeout_s=5, every_s=0.2, what=f"{method} counted {want}")
    except AssertionError:
        pytest.fail(f"{method}: handled {got}, want {want}")


async def test_watch_agents_cancelled_after_first_event(start_daemon: StartDaemon) -> None:
    reg = start_daemon("registry")
    offset = log_size(reg)
    async with grpc.aio.insecure_channel(reg.target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        # Cancelled by the client after the first event.
        watch = stub.WatchAgents(registry_pb2.WatchAgentsRequest())
        await asyncio.sleep(0.3)
        await stub.RegisterAgent(registry_pb2.RegisterAgentRequest(agent=agent("agent-cancel-1")))
        first = await watch.read()
        assert first.event.agent.agent_id == "agent-cancel-1"
        watch.cancel()
        # Deadline expiring after the first event.
        timed = stub.WatchAgents(registry_pb2.WatchAgentsRequest(), timeout=1.0)
        await asyncio.sleep(0.3)
        await stub.RegisterAgent(registry_pb2.RegisterAgentRequest(agent=agent("agent-cancel-2")))
        assert (await timed.read()).event.agent.agent_id == "agent-cancel-2"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await timed.read()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _counted(reg, "WatchAgents", {"CANCELLED": 1, "DEADLINE_EXCEEDED": 1})
    assert errors_in_log(reg, offset=offset) == []


async def _cancel_bidi(call: grpc.aio.StreamStreamCall, first: object) -> None:
    await call.write(first)
    await asyncio.sleep(0.3)
    call.cancel()


async def test_bidi_streams_cancelled_by_the_client(start_daemon: StartDaemon) -> None:
    reg = start_daemon("registry")
    router = start_daemon("router")
    bus = start_daemon("bus", "--backend", "memory")
    offsets = {p: log_size(p) for p in (reg, router, bus)}
    async with (
        grpc.aio.insecure_channel(reg.target) as rch,
        grpc.aio.insecure_channel(router.target) as roch,
        grpc.aio.insecure_channel(bus.target) as bch,
    ):
        reg_stub = registry_pb2_grpc.RegistryServiceStub(rch)
        await reg_stub.RegisterAgent(registry_pb2.RegisterAgentRequest(agent=agent("agent-hb")))
        await _cancel_bidi(
            reg_stub.HeartbeatStream(),
            registry_pb2.HeartbeatStreamRequest(
                heartbeats=[registry_pb2.HeartbeatRequest(agent_id="agent-hb")]
            ),
        )
        await _cancel_bidi(
            router_pb2_grpc.RouterServiceStub(roch).RouteStream(),
            router_pb2.RouteStreamRequest(request_id="r1", request=router_pb2.RouteRequest()),
        )
        bus_stub = bus_pb2_grpc.BusServiceStub(bch)
        await _cancel_bidi(
            bus_stub.PublishStream(),
            bus_pb2.PublishStreamRequest(
                messages=[bus_pb2.Envelope(topic="t.cancel")]
            ),
        )
        await _cancel_bidi(
            bus_stub.Subscribe(),
            bus_pb2.SubscribeRequest(
                open=bus_pb2.SubscriptionOpen(topic_patterns=["t.cancel"], consumer_group="g1")
            ),
        )
        # Deadline expiring on an idle subscription.
        sub = bus_stub.Subscribe(timeout=1.0)
        await sub.write(
            bus_pb2.SubscribeRequest(
                open=bus_pb2.SubscriptionOpen(topic_patterns=["t.cancel"], consumer_group="g2")
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in sub:
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _counted(reg, "HeartbeatStream", {"CANCELLED": 1})
    await _counted(router, "RouteStream", {"CANCELLED": 1})
    await _counted(bus, "PublishStream", {"CANCELLED": 1})
    await _counted(bus, "Subscribe", {"CANCELLED": 1, "DEADLINE_EXCEEDED": 1})
    for p, offset in offsets.items():
        assert errors_in_log(p, offset=offset) == [], p.args
