"""examples/bus_agent.py as a real process against a real gateway (memory
backend): it answers BusService.Request with its handler's value, takes a
command in its inbox, publishes its results with its id as sender, answers
a request its handler keeps failing with an ERROR reply (and the message is
dead-lettered), and exits cleanly on SIGTERM."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from agentmesh.bus.v1 import bus_pb2
from agentmesh.client import Client
from agentmesh.client.bus_messages import from_payload, make_envelope
from tests.integration.bus.conftest import unique
from tests.procs import ROOT, DaemonProcess, daemon

pytestmark = pytest.mark.integration


async def test_bus_agent_example(tmp_path: Path):
    # The gateway is a process too: DaemonProcess.start blocks this loop.
    gw = daemon("bus", tmp_path, "--backend", "memory").start()
    aid = f"agent-ex-{uuid.uuid4().hex[:8]}"
    ex = DaemonProcess([str(ROOT / "examples" / "bus_agent.py"), "--agent-id", aid,
                        "--port", "0", "--bus-target", gw.target], tmp_path / "bus_agent.log")
    c = Client(bus=gw.target)
    try:
        with ex:
            r = await c.bus_request(message=make_envelope(
                {"spend_usd": 100, "factor": 0.5}, topic="carbon.requests.spend"), timeout=15)
            assert from_payload(r.reply.payload) == {"kg_co2e": 50.0}
            assert r.reply.sender_id == aid
            cmd = await c.bus_request(message=make_envelope(
                {"factor_scale": 2}, recipient_id=aid, topic=f"agents.{aid}"), timeout=15)
            assert from_payload(cmd.reply.payload) == {"factor_scale": 2.0}
            r = await c.bus_request(message=make_envelope(
                {"spend_usd": 100, "factor": 0.5}, topic="carbon.requests.spend"), timeout=15)
            assert from_payload(r.reply.payload) == {"kg_co2e": 100.0}
            results = []
            async for msg in c.subscribe("carbon.results", group=unique("g")):
                results.append((msg.payload["kg_co2e"], msg.sender_id))  # type: ignore[index]
                if len(results) == 2:
                    break
            assert sorted(results) == [(50.0, aid), (100.0, aid)]  # keyless: any order
            # Five failing deliveries (0.2 + 0.4 + 0.8 + 1.6 s apart), then ERROR and DLQ.
            bad = await c.bus_request(message=make_envelope(
                {"spend_usd": -1, "factor": 1}, topic="carbon.requests.spend"), timeout=30)
            assert bad.reply.message_type == bus_pb2.MESSAGE_TYPE_ERROR
            assert from_payload(bad.reply.payload)["type"] == "ValueError"  # type: ignore[index]
            async for dead in c.subscribe("carbon.requests.spend.dlq", group=unique("dlq")):
                assert dead.payload == {"spend_usd": -1, "factor": 1}
                assert dead.correlation_id == bad.correlation_id
                break
            ex.signal(signal.SIGTERM)
            assert ex.wait(20) == 0, ex.tail()
    finally:
        await c.close()
        ex.kill()
        gw.stop()
