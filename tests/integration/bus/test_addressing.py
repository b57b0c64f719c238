"""Agents on the bus (issue 15, contract): sender_id, recipient_id and
message_type on the Envelope, carried in `am-*` Kafka headers; direct
addressing to the inbox topic `agents.<agent_id>`; bad input refused with
field violations; `sender_id` checked against the caller when auth is on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.runtime.errors import InvalidArgument, PermissionDenied
from tests.integration.bus.conftest import Gateway, start_gateway, unique
from tests.integration.bus.helpers import Sub, env
from tests.integration.bus.test_contract import expect

pytestmark = pytest.mark.integration
REQUEST = bus_pb2.MESSAGE_TYPE_REQUEST


def agent_id() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


async def test_recipient_id_goes_to_the_inbox_with_sender_and_type(gw: Gateway):
    to, sender = agent_id(), agent_id()
    r = await gw.stub.Publish(bus_pb2.PublishRequest(message=env(
        "", b"for you", sender_id=sender, recipient_id=to,
        message_type=bus_pb2.MESSAGE_TYPE_COMMAND)))
    assert r.position.topic == f"agents.{to}"
    # The topic spelled out is the same inbox.
    await gw.stub.Publish(bus_pb2.PublishRequest(message=env(f"agents.{to}", b"again",
                                                             recipient_id=to)))
    async with Sub(gw.stub, [f"agents.{to}"], unique("g")) as sub:
        second, first = sorted(await sub.take(2), key=lambda m: m.envelope.payload.bytes_value)
    e = first.envelope
    assert (e.sender_id, e.recipient_id, e.message_type, e.payload.bytes_value) == (
        sender, to, bus_pb2.MESSAGE_TYPE_COMMAND, b"for you")
    assert second.envelope.message_type == bus_pb2.MESSAGE_TYPE_UNSPECIFIED  # = EVENT


async def test_bad_addressing_is_invalid_argument_with_field_violations(gw: Gateway):
    to = agent_id()
    cases = {
        "message.message_type": env(unique(), message_type=99),  # type: ignore[arg-type]
        "message.recipient_id": env("", recipient_id="Bob"),
        "message.sender_id": env(unique(), sender_id="not an agent"),
        "message.reply_to": env(unique(), reply_to=unique()),  # an EVENT with reply_to
        "message.topic": env(unique(), recipient_id=to),  # not the recipient's inbox
    }
    for field, e in cases.items():
        err = await expect(InvalidArgument, gw.stub.Publish(bus_pb2.PublishRequest(message=e)))
        assert [f for f, _ in err.field_violations] == [field], (field, err.field_violations)
    # A REQUEST may carry reply_to; Request itself refuses another type.
    ok = env(unique(), reply_to=unique(), message_type=REQUEST)
    await gw.stub.Publish(bus_pb2.PublishRequest(message=ok))
    err = await expect(InvalidArgument, gw.stub.Request(bus_pb2.RequestRequest(
        message=env(unique(), message_type=bus_pb2.MESSAGE_TYPE_EVENT))))
    assert [f for f, _ in err.field_violations] == ["message.message_type"]
    # Nothing of the refused messages reached the inbox.
    assert not await gw.servicer.backend.partitions(f"agents.{to}")


@pytest.mark.kafka
async def test_plain_kafka_consumer_reads_sender_recipient_and_type_headers(kafka_broker):
    g = await start_gateway("kafka", kafka_broker.bootstrap)
    try:
        to, sender = agent_id(), agent_id()
        r = await g.stub.Publish(bus_pb2.PublishRequest(message=env(
            "", b"hi", sender_id=sender, recipient_id=to, message_type=REQUEST,
            reply_to="_agentmesh.replies", correlation_id="c-1")))
        c = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": unique("plain"),
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            c.subscribe([r.position.topic])
            msg = None
            for _ in range(60):
                msg = c.poll(0.5)
                if msg is not None and not msg.error():
                    break
            assert msg is not None and not msg.error()
            headers = {k: v.decode() for k, v in msg.headers() or []}
        finally:
            c.close()
        assert headers["am-sender-id"] == sender
        assert headers["am-recipient-id"] == to
        assert headers["am-message-type"] == "MESSAGE_TYPE_REQUEST"
        assert headers["am-reply-to"] == "_agentmesh.replies"
        assert msg.topic() == f"agents.{to}"
    finally:
        await g.daemon.stop()


async def test_sender_id_must_be_the_callers_identity_when_auth_is_on(tmp_path: Path):
    me, other = agent_id(), agent_id()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-me": me, "tok-ops": {"identity": "ops",
                                                            "roles": ["admin"]}}))
    g = await start_gateway("memory", "", "--auth-tokens-file", str(tokens))
    ch = grpc.aio.insecure_channel(g.target)
    try:
        stub = bus_pb2_grpc.BusServiceStub(ch)

        def as_(tok: str) -> tuple[tuple[str, str]]:
            return (("authorization", f"Bearer {tok}"),)

        await stub.Publish(bus_pb2.PublishRequest(message=env(unique(), sender_id=me)),
                           metadata=as_("tok-me"))
        err = await expect(PermissionDenied, stub.Publish(
            bus_pb2.PublishRequest(message=env("", sender_id=other, recipient_id=me)),
            metadata=as_("tok-me")))
        assert other in err.message
        await stub.Publish(bus_pb2.PublishRequest(message=env(unique(), sender_id=other)),
                           metadata=as_("tok-ops"))  # an admin may send for any agent
        assert not await g.servicer.backend.partitions(f"agents.{me}")
    finally:
        await ch.close()
        await g.daemon.stop()
