"""Agents on the bus: `@agent.on_message` handlers, the agent's inbox, replies
to requests, and publishing with the agent's id as `sender_id`.

    @agent.on_message("carbon.requests.*")           # group = the agent type
    async def on_request(payload: dict, ctx: MessageContext) -> dict:
        return {"kg_co2e": payload["spend_usd"] * 0.4}  # a REQUEST gets this as its RESPONSE

    @agent.on_message(inbox=True)                    # agents.<agent_id>
    async def direct(payload, ctx): ...

Per declaration the agent opens one Subscribe stream (the shared client
mechanism, `agentmesh.client.subscriber.Subscriber`, which resumes after a
gateway restart). Each delivery runs its handler; a return acks the message,
an exception nacks it with a delay that doubles per delivery attempt
(`retry_delay_ms`, `2 ** (attempt - 1)` times, at most 30 s), and after
`max_deliveries` the gateway writes it to `<topic>.dlq`.

Requests: when the message is a MESSAGE_TYPE_REQUEST with `reply_to`, the
handler's return value (see `to_payload`) is published to `reply_to` as a
MESSAGE_TYPE_RESPONSE with the request's `correlation_id` before the ack, so
`BusService.Request` and `ScatterGather` reach SDK agents. When the last
allowed delivery fails, a MESSAGE_TYPE_ERROR reply (`{"error", "type"}`) is
published instead, so the requester fails at once rather than at its timeout.

Once per group: before a handler runs, the delivery claims (group, message
id) in `agentmesh.agent.message_dedupe` (Redis when the agent has
`redis_url`, shared by all replicas; else this process). A message already
handled is acked without running the handler again; one still held by
another delivery (a rebalance handed it to two members) waits for it. This
is the dedupe by `Envelope.id` the Subscribe contract asks of consumers.

Flow control: handlers of all subscriptions together run at most
`max_concurrency` at a time (the agent setting; 0 = unbounded), and each
stream holds at most that many unacked deliveries (100 when unbounded).

Stop (SIGTERM): intake stops, in-flight handlers finish within the grace
period and are acked, then the streams are half-closed so the gateway
commits and hands the rest (delivered, never handled) to the group's other
members.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentmesh.agent.message_dedupe import MemoryMessageClaims, MessageClaims
from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.client.bus_messages import Message, make_envelope, publish, request
from agentmesh.client.subscriber import RECONNECT_CHANNEL_OPTIONS, Subscriber
from agentmesh.runtime.agent_ids import inbox_topic
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.tracing import consumer_span

if TYPE_CHECKING:
    import grpc

    from agentmesh.agent.sdk import Agent

log = logging.getLogger("agentmesh.agent.bus")

#: `async def handler(payload, ctx: MessageContext) -> Any` (a plain def runs in a thread).
MessageHandler = Callable[[Any, "MessageContext"], Awaitable[Any] | Any]
#: Longest redelivery delay after a handler failure.
MAX_RETRY_DELAY_MS = 30_000


@dataclass(frozen=True)
class MessageSubscription:
    """One `@agent.on_message` declaration.

    Attributes:
        patterns: topic patterns (with `inbox`, the inbox topic is added at start).
        group: consumer group ("" = the default, resolved at start).
        handler: the function.
        inbox: True for the agent's inbox.
        max_deliveries: deliveries before `<topic>.dlq`.
        ack_deadline_ms: an unsettled delivery is redelivered after this long.
        retry_delay_ms: first redelivery delay after a failure (doubles per attempt).
        start_position: "earliest" or "latest" for a group without offsets.
    """

    patterns: tuple[str, ...]
    group: str
    handler: MessageHandler
    inbox: bool = False
    max_deliveries: int = 5
    ack_deadline_ms: int = 30_000
    retry_delay_ms: int = 200
    start_position: str = "earliest"


class MessageContext:
    """What a message handler gets beside the payload.

    Attributes:
        agent_id: the agent handling it.
        message: the delivery (envelope, ids, headers, position).
        delivery_attempt: 1 on the first delivery, more on redeliveries: the
            gateway's count, or one more than the failed runs the claims
            recorded (which survive a gateway restart), whichever is higher.
        group: the consumer group it came through.
    """

    __slots__ = ("_link", "agent_id", "delivery_attempt", "group", "message")

    def __init__(self, link: BusLink, message: Message, group: str, attempt: int) -> None:
        self._link = link
        self.agent_id = link.agent_id
        self.message = message
        self.delivery_attempt = attempt
        self.group = group

    @property
    def topic(self) -> str:
        """The topic it was published to."""
        return self.message.topic

    @property
    def sender_id(self) -> str:
        """The sending agent, when set."""
        return self.message.sender_id

    async def publish(self, payload: Any = None, **kw: Any) -> bus_pb2.PublishResponse:
        """`BusLink.publish` with this agent as `sender_id`."""
        return await self._link.publish(payload, **kw)

    async def request(self, payload: Any = None, **kw: Any) -> Message:
        """`BusLink.request` with this agent as `sender_id`."""
        return await self._link.request(payload, **kw)


class BusLink:
    """An agent's connection to the bus gateway: its subscriptions and publishing.

    Args:
        agent: the agent (its id, max_concurrency, load tracker).
        target: the gateway's `host:port`.
        token / tls_ca_file: how to reach it (the agent's settings).
    """

    def __init__(self, agent: Agent, target: str, *, token: str = "", tls_ca_file: str = "",
                 claims: MessageClaims | None = None) -> None:
        self.agent = agent
        self.claims: MessageClaims = claims or MemoryMessageClaims()
        # Claim owners: unique per delivery handled by this process.
        self._owner_prefix = f"{agent.agent_id}:{uuid.uuid4().hex[:12]}:"
        self._deliveries = itertools.count()
        self._is_async: dict[int, bool] = {}
        self._done_ttl_ms = max(1, int(agent.settings.idempotency_ttl_s * 1000))
        self.agent_id = agent.agent_id
        self.channel: grpc.aio.Channel = create_channel(
            target, token=token, tls_ca_file=tls_ca_file, options=RECONNECT_CHANNEL_OPTIONS)
        self.stub = bus_pb2_grpc.BusServiceStub(self.channel)
        limit = agent.settings.max_concurrency
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self._window = limit if limit > 0 else 100
        self._subs: list[tuple[Subscriber, MessageSubscription]] = []
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        #: Handled deliveries (acked), failed ones (nacked) and duplicates
        #: (acked without running the handler), for logs and tests.
        self.handled = 0
        self.failed = 0
        self.duplicates = 0

    async def start(self, subscriptions: Sequence[MessageSubscription]) -> None:
        """Open one stream per subscription and start handling.

        Raises:
            AgentMeshError: the gateway refused a subscription (bad pattern, ...).
            Unavailable: no stream started within 30 s.
        """
        for spec in subscriptions:
            sub = Subscriber(
                self.stub, list(spec.patterns), group=spec.group, auto_ack=False,
                max_unacked=self._window, ack_deadline_ms=spec.ack_deadline_ms,
                max_deliveries=spec.max_deliveries, start_position=spec.start_position)
            self._subs.append((sub, spec))
            await sub.start()
            self._loops.append(asyncio.create_task(self._consume(sub, spec),
                                                   name=f"bus-{spec.group}"))
        if subscriptions:
            log.info("subscribed", extra={"agent_id": self.agent_id,
                                          "patterns": [list(s.patterns) for s in subscriptions]})

    async def stop(self, *, timeout_s: float) -> None:
        """Stop intake, let in-flight handlers finish (and ack) within
        `timeout_s`, close the streams, close the channel."""
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(BaseException):
                await t
        self._loops.clear()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout_s or None)
        for t in list(self._inflight):  # past the grace period: left unacked
            t.cancel()
        await asyncio.gather(*(sub.close() for sub, _ in self._subs), return_exceptions=True)
        self._subs.clear()
        await self.channel.close()

    async def _consume(self, sub: Subscriber, spec: MessageSubscription) -> None:
        try:
            while True:
                msg = await sub.get()
                if msg is None:
                    return
                if self._slots is not None:
                    await self._slots.acquire()
                task = asyncio.create_task(self._handle(msg, spec))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("subscription ended", extra={"agent_id": self.agent_id,
                                                       "patterns": list(spec.patterns)})

    async def _handle(self, msg: Message, spec: MessageSubscription) -> None:
        load = self.agent.load
        t0 = load.started()
        p0 = time.perf_counter()
        ok = False
        owner = f"{self._owner_prefix}{next(self._deliveries)}"
        try:
            attempt = max(1, msg.delivery_attempt)
            try:
                claimed = await self._claim(msg, spec, owner)
                if claimed is None:
                    ok = True
                    return
                attempt = claimed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the claim store is down: try again later
                await self._failed(msg, spec, exc, owner=None, attempt=attempt)
                return
            ctx = MessageContext(self, msg, spec.group, attempt)
            try:
                with consumer_span(topic=msg.topic, headers=msg.headers, message_id=msg.id,
                                   key=msg.key, partition=msg.position.partition,
                                   offset=msg.position.offset, group=spec.group):
                    is_async = self._is_async.get(id(spec.handler))
                    if is_async is None:
                        is_async = inspect.iscoroutinefunction(spec.handler)
                        self._is_async[id(spec.handler)] = is_async
                    if is_async:
                        result = await spec.handler(msg.payload, ctx)
                    else:
                        result = await asyncio.to_thread(spec.handler, msg.payload, ctx)
                        if inspect.isawaitable(result):
                            result = await result
                if msg.message_type == bus_pb2.MESSAGE_TYPE_REQUEST and msg.reply_to:
                    await self._reply(msg, result, bus_pb2.MESSAGE_TYPE_RESPONSE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(msg, spec, exc, owner=owner, attempt=attempt)
                return
            try:
                await self.claims.done(spec.group, msg.id, ttl_ms=self._done_ttl_ms)
            except Exception as exc:  # still acked: the handler's work is done
                log.warning("could not mark a message handled", extra={
                    "agent_id": self.agent_id, "message_id": msg.id, "error": repr(exc)})
            await msg.ack()
            self.handled += 1
            ok = True
        finally:
            load.finished(t0, processing_ms=(time.perf_counter() - p0) * 1000, ok=ok)
            if self._slots is not None:
                self._slots.release()

    async def _claim(self, msg: Message, spec: MessageSubscription, owner: str) -> int | None:
        """The delivery attempt when this delivery runs the handler (the
        gateway's count, or one more than the failures the claims recorded,
        whichever is higher); None when the message was already handled
        (acked here). While another delivery holds it (a rebalance handed it
        to two members), wait for that one to settle."""
        wait_s, give_up = 0.05, time.monotonic() + spec.ack_deadline_ms / 1000
        while True:
            state, failures = await self.claims.claim(spec.group, msg.id, owner,
                                                      lease_ms=spec.ack_deadline_ms)
            if state == "run":
                return max(1, msg.delivery_attempt, failures + 1)
            if state == "done" or time.monotonic() > give_up:
                self.duplicates += 1
                await msg.ack()
                return None
            await asyncio.sleep(wait_s)
            wait_s = min(1.0, wait_s * 2)

    async def _failed(self, msg: Message, spec: MessageSubscription, exc: Exception, *,
                      owner: str | None, attempt: int) -> None:
        self.failed += 1
        if owner is not None:
            with contextlib.suppress(Exception):
                await self.claims.release(spec.group, msg.id, owner, failures=attempt,
                                          ttl_ms=self._done_ttl_ms)
        # The gateway dead-letters by its own count: that decides the last delivery.
        last = msg.delivery_attempt >= spec.max_deliveries
        log.warning("message handler failed", extra={
            "agent_id": self.agent_id, "topic": msg.topic, "message_id": msg.id,
            "delivery_attempt": attempt, "last": last, "error": repr(exc)})
        if last and msg.message_type == bus_pb2.MESSAGE_TYPE_REQUEST and msg.reply_to:
            with contextlib.suppress(Exception):
                await self._reply(msg, {"error": str(exc), "type": type(exc).__name__},
                                  bus_pb2.MESSAGE_TYPE_ERROR)
        delay_ms = min(MAX_RETRY_DELAY_MS, spec.retry_delay_ms * 2 ** (attempt - 1))
        await msg.nack(delay_ms=0 if last else delay_ms,
                       reason=f"{type(exc).__name__}: {exc}")

    async def _reply(self, msg: Message, value: Any, message_type: int) -> None:
        # The reply's id derives from the request's, so a redelivered request
        # whose first reply was written produces a duplicate consumers drop.
        await publish(self.stub, make_envelope(
            value, topic=msg.reply_to, sender_id=self.agent_id, message_type=message_type,
            correlation_id=msg.correlation_id,
            message_id=f"{msg.id}.{bus_pb2.MessageType.Name(message_type).lower()}"))  # type: ignore[arg-type]

    # ---- sending ----------------------------------------------------------
    async def publish(
        self,
        payload: Any = None,
        *,
        topic: str = "",
        recipient_id: str = "",
        message_type: int | str = "event",
        key: str = "",
        headers: Mapping[str, str] | None = None,
        priority: int = 0,
        correlation_id: str = "",
        message_id: str = "",
        timeout_s: float = 10.0,
    ) -> bus_pb2.PublishResponse:
        """Publish with this agent as `sender_id` (to `topic`, or to the inbox of
        `recipient_id` when `topic` is empty), retried as Publish's contract allows.

        Raises:
            AgentMeshError: INVALID_ARGUMENT with field violations, UNAVAILABLE, ...
        """
        return await publish(self.stub, make_envelope(
            payload, topic=topic, recipient_id=recipient_id, sender_id=self.agent_id,
            message_type=message_type, key=key, headers=headers, priority=priority,
            correlation_id=correlation_id, message_id=message_id), timeout_s=timeout_s)

    async def request(
        self,
        payload: Any = None,
        *,
        topic: str = "",
        recipient_id: str = "",
        key: str = "",
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> Message:
        """BusService.Request with this agent as `sender_id`: the reply as a Message.

        Raises:
            RemoteError: the replier answered with MESSAGE_TYPE_ERROR.
            AgentMeshError: DEADLINE_EXCEEDED without a reply, INVALID_ARGUMENT, ...
        """
        return await request(self.stub, make_envelope(
            payload, topic=topic or (inbox_topic(recipient_id) if recipient_id else ""),
            recipient_id=recipient_id, sender_id=self.agent_id, message_type="request",
            key=key, headers=headers), timeout_s=timeout_s)


__all__ = ["BusLink", "MessageContext", "MessageHandler", "MessageSubscription"]
