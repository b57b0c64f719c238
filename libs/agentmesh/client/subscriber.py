"""The one client side of `BusService.Subscribe`, used by `agentmesh.Client.subscribe`
and by the agent SDK's `@agent.on_message`: open the stream, hand out
deliveries, batch acks, send nacks, and resume after a disconnect.

    async with Subscriber(stub, ["carbon.requests.*"], group="calc") as sub:
        async for msg in sub:            # auto_ack: acked when the next one is asked for
            print(msg.payload, msg.delivery_attempt)

Delivery is at least once (the Subscribe comment in bus.proto). After a
disconnect (the gateway restarted or was killed, the network broke) the
subscriber opens a new stream with the same consumer group; it starts at the
group's committed offsets, so every message not acked before the break comes
again. Deliveries of the broken stream still in the local queue are dropped,
and late acks for them are not sent (the new gateway does not know their ack
ids): those messages are the ones redelivered.

Whether to reopen is the mesh's one retry rule (`agentmesh.runtime.retry.is_retryable`)
with the reopen counted as IDEMPOTENT: by the contract, a new Subscribe of the
same group only redelivers what was not acked. A CANCELLED stream that this
side did not cancel (the gateway shutting down) is reopened too. Anything a
retry cannot fix (INVALID_ARGUMENT for a bad pattern, PERMISSION_DENIED, ...)
ends the iteration with that AgentMeshError. Backoff between attempts is
tenacity's jittered exponential, reset once a stream has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from agentmesh.bus.v1 import bus_pb2
from agentmesh.client.bus_messages import Message
from agentmesh.runtime.errors import AgentMeshError, Unavailable, from_rpc_error
from agentmesh.runtime.retry import IdempotencyLevel, is_retryable_error

if TYPE_CHECKING:
    from agentmesh.bus.v1 import bus_pb2_grpc

log = logging.getLogger("agentmesh.client.subscriber")

#: Channel options for channels that carry Subscribe streams: gRPC's default
#: reconnect backoff grows to 120 s, too slow to come back after a gateway restart.
RECONNECT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_START_POSITIONS = {
    "earliest": bus_pb2.START_POSITION_EARLIEST,
    "latest": bus_pb2.START_POSITION_LATEST,
}
_END = object()


class _StreamEnded(Exception):
    """The gateway ended a stream before it started (reopened like UNAVAILABLE)."""


class Subscriber:
    """A resuming Subscribe stream.

    Args:
        stub: a BusServiceStub (its channel should use `RECONNECT_CHANNEL_OPTIONS`).
        patterns: topic patterns (`*` one level, `#` any levels).
        group: consumer group: subscribers of one group share the messages.
        auto_ack: when iterating with `async for`, ack the previous message
            (if the caller has not settled it) when the next one is asked for.
        max_unacked: flow control: most delivered, unsettled messages.
        ack_deadline_ms: an unsettled message is redelivered after this long.
        max_deliveries: deliveries after which a message goes to `<topic>.dlq`.
        start_position: "earliest" or "latest", for a group without offsets.
        metadata: gRPC metadata of each stream (e.g. a bearer token).
        reconnect_max_ms: longest pause between reopen attempts.

    Raises:
        ValueError: an unknown start_position, an empty pattern list or group.
    """

    def __init__(
        self,
        stub: bus_pb2_grpc.BusServiceStub,
        patterns: Sequence[str] | str,
        *,
        group: str,
        auto_ack: bool = True,
        max_unacked: int = 100,
        ack_deadline_ms: int = 30_000,
        max_deliveries: int = 5,
        start_position: str = "earliest",
        metadata: Sequence[tuple[str, str]] = (),
        reconnect_max_ms: int = 2_000,
    ) -> None:
        if start_position not in _START_POSITIONS:
            raise ValueError(f"start_position must be one of {sorted(_START_POSITIONS)}")
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        if not self.patterns or not group:
            raise ValueError("a subscription needs at least one pattern and a consumer group")
        self._stub = stub
        self.group = group
        self.auto_ack = auto_ack
        self._open = bus_pb2.SubscribeRequest(open=bus_pb2.SubscriptionOpen(
            topic_patterns=self.patterns, consumer_group=group, max_unacked=max_unacked,
            max_deliveries=max_deliveries,
            start_position=_START_POSITIONS[start_position]))
        self._open.open.ack_deadline.FromMilliseconds(ack_deadline_ms)
        self._metadata = tuple(metadata)
        self._reconnect_max_s = reconnect_max_ms / 1000
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._out: asyncio.Queue[bus_pb2.SubscribeRequest | None] | None = None
        self._acks: list[str] = []
        self._flush_scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._error: BaseException | None = None
        self._closing = False
        self._closed = asyncio.Event()
        #: Which stream is current; deliveries of older ones are dropped.
        self.generation = 0
        #: Topics the patterns matched when the current stream started.
        self.topics: list[str] = []
        #: Streams that started so far (1 + resumes).
        self.connections = 0

    # ---- lifecycle --------------------------------------------------------
    async def start(self, *, timeout_s: float = 30.0) -> None:
        """Open the stream and wait for the gateway's `started`.

        Raises:
            AgentMeshError: a status a reopen cannot fix (INVALID_ARGUMENT
                for a bad pattern, PERMISSION_DENIED, ...).
            Unavailable: no stream started within `timeout_s` (it keeps
                trying in the background until `close`).
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"subscriber-{self.group}")
        waiter = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({waiter, self._task}, timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._error is not None:
            raise self._error
        if not self._started.is_set():
            raise Unavailable(f"no Subscribe stream for {self.patterns} within {timeout_s}s")

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """Send pending acks, half-close the stream and wait (up to
        `timeout_s`) for the gateway to end it: it commits the acked offsets
        and leaves the group, so unsettled messages go to the group's other
        members at once. Safe to call twice."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            self._flush()
            if self._out is not None:
                self._out.put_nowait(None)
            if self._task is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        finally:
            self._inbox.put_nowait(_END)
            self._closed.set()

    @property
    def closed(self) -> bool:
        """True once `close` has finished."""
        return self._closed.is_set()

    async def __aenter__(self) -> Subscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- receiving --------------------------------------------------------
    async def get(self) -> Message | None:
        """The next delivery of the current stream; None once closed.

        Raises:
            AgentMeshError: the stream failed for good (see the module docstring).
        """
        while True:
            item = await self._inbox.get()
            if item is _END:
                self._inbox.put_nowait(_END)  # for other readers
                if self._error is not None:
                    raise self._error
                return None
            if item.generation == self.generation:
                return item

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        # An async generator: `break` (or an exception in the loop body) lets
        # the event loop close it, and its `finally` closes the stream.
        # The message in hand when the loop stops is not acked: at least once.
        try:
            if self._task is None:
                await self.start()
            prev: Message | None = None
            while True:
                if self.auto_ack and prev is not None and not prev.settled:
                    await prev.ack()
                msg = await self.get()
                if msg is None:
                    return
                prev = msg
                yield msg
        finally:
            await self.close()

    # ---- the stream -------------------------------------------------------
    async def _requests(
        self, out: asyncio.Queue[bus_pb2.SubscribeRequest | None]
    ) -> AsyncIterator[bus_pb2.SubscribeRequest]:
        while True:
            r = await out.get()
            if r is None:
                return
            yield r

    def _resumable(self, err: BaseException) -> bool:
        if self._closing:
            return False
        if isinstance(err, _StreamEnded):
            return True
        if isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.CANCELLED:
            return True  # not ours (we were not closing): the gateway went away
        return is_retryable_error(err, idempotency=IdempotencyLevel.IDEMPOTENT)

    async def _run(self) -> None:
        try:
            while not self._closing:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential_jitter(multiplier=0.05, max=self._reconnect_max_s),
                    retry=retry_if_exception(self._resumable),
                    reraise=True,
                ):
                    with attempt:
                        await self._stream_once()
        except grpc.aio.AioRpcError as e:
            if not self._closing:
                self._error = from_rpc_error(e)
        except (AgentMeshError, _StreamEnded) as e:
            if not self._closing:
                self._error = e
        finally:
            if self._error is not None:
                log.warning("subscription failed", extra={
                    "patterns": self.patterns, "group": self.group, "error": str(self._error)})
                self._inbox.put_nowait(_END)

    async def _stream_once(self) -> None:
        """One stream. Returns when it ran and ended (the caller reopens with
        a fresh backoff); raises when it failed before it started."""
        if self._closing:  # closed during a backoff pause: open nothing
            return
        out: asyncio.Queue[bus_pb2.SubscribeRequest | None] = asyncio.Queue()
        out.put_nowait(self._open)
        self.generation += 1
        gen = self.generation
        self._out = out
        self._acks.clear()
        started = False
        call = self._stub.Subscribe(self._requests(out), metadata=self._metadata or None)
        try:
            async for resp in call:
                if resp.WhichOneof("kind") == "started":
                    started = True
                    self.connections += 1
                    self.topics = list(resp.started.topics)
                    self._started.set()
                    continue
                put = self._inbox.put_nowait
                for m in resp.batch.messages:
                    put(Message(m, owner=self, generation=gen))
        except grpc.aio.AioRpcError as e:
            if not started or not self._resumable(e):
                raise
            log.info("subscribe stream broke; resuming", extra={
                "patterns": self.patterns, "group": self.group, "code": e.code().name})
            return
        finally:
            call.cancel()
        if not started and not self._closing:
            raise _StreamEnded("the gateway ended the stream before it started")

    # ---- settling ---------------------------------------------------------
    async def _settle(self, msg: Message, *, ack: bool, delay_ms: int, reason: str) -> None:
        if msg.generation != self.generation or self._out is None:
            return  # its stream is gone; the gateway redelivers it
        if ack:
            self._acks.append(msg.ack_id)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            return
        n = bus_pb2.Nack(ack_ids=[msg.ack_id], reason=reason[:1000])
        if delay_ms > 0:
            n.redeliver_delay.FromMilliseconds(delay_ms)
        self._out.put_nowait(bus_pb2.SubscribeRequest(nack=n))

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._acks and self._out is not None:
            self._out.put_nowait(bus_pb2.SubscribeRequest(ack=bus_pb2.Ack(ack_ids=self._acks)))
            self._acks = []


__all__ = ["RECONNECT_CHANNEL_OPTIONS", "Subscriber"]
