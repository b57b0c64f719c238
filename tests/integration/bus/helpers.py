"""Client helpers for the bus tests: a Subscribe stream driven by a queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KTP
from google.protobuf import duration_pb2
from grpc.aio import EOF

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.common.v1 import common_pb2
from tests.infra import free_port


def env(topic: str, body: bytes = b"x", *, key: str = "", priority: int = 0,
        **kw: Any) -> bus_pb2.Envelope:
    """An envelope with a bytes payload."""
    return bus_pb2.Envelope(
        topic=topic, key=key, priority=priority,  # type: ignore[arg-type]
        payload=common_pb2.Payload(bytes_value=body, content_type="text/plain"), **kw
    )


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> high watermark (records written) of `topic`, read from the broker."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(KTP(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def seconds(s: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(s * 1e9))
    return d


def redis_state_gateway_flags(bootstrap: str, redis_url: str) -> list[str]:
    """Flags of a gateway process on Kafka with the Redis state store, one
    partition per new topic and a 6 s session timeout (so a SIGKILLed
    gateway's partitions move soon), on a free port."""
    return [
        "--kafka-bootstrap", bootstrap, "--session-timeout-ms", "6000",
        "--port", str(free_port()), "--default-partitions", "1",
        "--state-store", "redis", "--redis-url", redis_url,
    ]


class Sub:
    """One Subscribe stream.

    Args:
        stub: the bus stub.
        patterns / group: what to subscribe to.
        open_kw: other SubscriptionOpen fields.
    """

    def __init__(self, stub: bus_pb2_grpc.BusServiceStub, patterns: list[str], group: str,
                 **open_kw: Any) -> None:
        self._out: asyncio.Queue[bus_pb2.SubscribeRequest | None] = asyncio.Queue()
        self._out.put_nowait(bus_pb2.SubscribeRequest(open=bus_pb2.SubscriptionOpen(
            topic_patterns=patterns, consumer_group=group, **open_kw)))
        self.call = stub.Subscribe(self._requests())
        self._buf: list[bus_pb2.ReceivedMessage] = []
        self._in: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.started: bus_pb2.SubscriptionStarted | None = None

    async def _read(self) -> None:
        # Reading in one task: a timed-out wait must not cancel the call itself.
        try:
            while True:
                resp = await self.call.read()
                await self._in.put(resp)
                if resp is EOF:
                    return
        except BaseException as exc:
            await self._in.put(exc)
            raise

    async def _requests(self) -> AsyncIterator[bus_pb2.SubscribeRequest]:
        while True:
            r = await self._out.get()
            if r is None:
                return
            yield r

    async def start(self) -> bus_pb2.SubscriptionStarted:
        self._reader = asyncio.create_task(self._read())
        resp = await self._get(30)
        assert resp.WhichOneof("kind") == "started", resp
        self.started = resp.started
        return resp.started

    async def _get(self, timeout_s: float) -> Any:
        resp = await asyncio.wait_for(self._in.get(), timeout_s)
        if isinstance(resp, BaseException):
            raise resp
        return resp

    async def next(self, timeout_s: float = 20.0) -> bus_pb2.ReceivedMessage:
        """The next delivery."""
        while not self._buf:
            resp = await self._get(timeout_s)
            assert resp is not EOF and resp.WhichOneof("kind") == "batch", resp
            self._buf.extend(resp.batch.messages)
        return self._buf.pop(0)

    async def take(self, n: int, timeout_s: float = 30.0, *, ack: bool = True
                   ) -> list[bus_pb2.ReceivedMessage]:
        """The next n deliveries, acked unless told otherwise."""
        out = []
        for _ in range(n):
            m = await self.next(timeout_s)
            out.append(m)
            if ack:
                self.ack(m)
        return out

    async def nothing_within(self, s: float) -> bool:
        """True when no delivery arrives within `s` seconds."""
        if self._buf:
            return False
        try:
            await self.next(s)
        except TimeoutError:
            return True
        return False

    async def next_batch(self, timeout_s: float = 20.0) -> bus_pb2.MessageBatch:
        """The next whole MessageBatch (nothing buffered by `next` may be pending)."""
        assert not self._buf, "next_batch after next() left messages buffered"
        resp = await self._get(timeout_s)
        assert resp is not EOF and resp.WhichOneof("kind") == "batch", resp
        return resp.batch

    def ack_up_to(self, *positions: bus_pb2.RecordPosition,
                  msgs: tuple[bus_pb2.ReceivedMessage, ...] = ()) -> None:
        """A cumulative Ack (Ack.up_to), with ack ids of `msgs` in the same Ack."""
        self._out.put_nowait(bus_pb2.SubscribeRequest(ack=bus_pb2.Ack(
            up_to=positions, ack_ids=[m.ack_id for m in msgs])))

    def ack(self, *msgs: bus_pb2.ReceivedMessage) -> None:
        self._out.put_nowait(bus_pb2.SubscribeRequest(
            ack=bus_pb2.Ack(ack_ids=[m.ack_id for m in msgs])))

    def nack(self, *msgs: bus_pb2.ReceivedMessage, reason: str = "", delay_s: float = 0) -> None:
        n = bus_pb2.Nack(ack_ids=[m.ack_id for m in msgs], reason=reason)
        if delay_s:
            n.redeliver_delay.CopyFrom(seconds(delay_s))
        self._out.put_nowait(bus_pb2.SubscribeRequest(nack=n))

    def received(self) -> list[bus_pb2.ReceivedMessage]:
        """Every delivery received and not yet taken (after `close`: all the
        server sent before it ended the stream)."""
        out, self._buf = self._buf, []
        while not self._in.empty():
            resp = self._in.get_nowait()
            if isinstance(resp, bus_pb2.SubscribeResponse) and resp.WhichOneof("kind") == "batch":
                out.extend(resp.batch.messages)
        return out

    async def close(self) -> None:
        """Half-close and wait for the server to end the stream."""
        self._out.put_nowait(None)
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 15)
            except BaseException:
                self.call.cancel()

    async def __aenter__(self) -> Sub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
