"""Dead-letter topics are hash-chained: each dead letter is the next link of
its "<topic>.dlq" partition's chain (VerifyChain checks it), while
ListDeadLetters still shows the envelope with its original provenance."""

from __future__ import annotations

import pytest

from agentmesh.bus.v1 import bus_pb2
from tests.integration.bus.conftest import Gateway, unique
from tests.integration.bus.helpers import Sub, env
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def test_dead_letters_are_chained_and_keep_their_original_provenance(gw: Gateway):
    topic = unique("dlqchain")
    # One key: both messages, and so both dead letters, share a partition.
    written = [(await gw.stub.Publish(bus_pb2.PublishRequest(
        message=env(topic, f"poison {i}".encode(), key="k")))) for i in range(2)]
    async with Sub(gw.stub, [topic], unique("g"), max_deliveries=1,
                   start_position=bus_pb2.START_POSITION_EARLIEST) as sub:
        for _ in written:
            sub.nack(await sub.next(), reason="bad")

        async def listed() -> list[bus_pb2.DeadLetter] | None:
            resp = await gw.stub.ListDeadLetters(bus_pb2.ListDeadLettersRequest(topic=topic))
            return list(resp.dead_letters) if len(resp.dead_letters) == 2 else None

        dead = await eventually(listed, timeout_s=30, every_s=0.1, what="two dead letters")
    # The envelope is the message as delivered: its original link.
    for d, r in zip(sorted(dead, key=lambda d: d.source.offset), written, strict=True):
        assert d.envelope.id == r.id
        assert d.envelope.provenance.chain_id == r.provenance.chain_id
        assert d.envelope.provenance.sequence == r.provenance.sequence
        assert d.envelope.provenance.hash == r.provenance.hash
        assert "am-dlq-source-provenance" not in d.envelope.headers
    # The dead-letter partition holds its own chain, which verifies.
    (partition,) = {d.position.partition for d in dead}
    v = await gw.stub.VerifyChain(bus_pb2.VerifyChainRequest(
        topic=topic + ".dlq", partition=partition))
    assert v.valid, v
    assert v.records_checked == 2 and v.unchained_records == 0
    assert len(v.chain_ids) == 1 and v.chain_ids[0].startswith(f"{topic}.dlq/{partition}/")
    # Redrive still republishes the original message.
    red = await gw.stub.RedriveDeadLetters(bus_pb2.RedriveDeadLettersRequest(topic=topic))
    assert red.redriven_count == 2
