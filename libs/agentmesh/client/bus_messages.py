"""Bus messages as users see them, shared by `agentmesh.Client` and the agent SDK.

`Message` is one delivery (or one reply); `to_payload` / `from_payload`
convert between Python values and `agentmesh.common.v1.Payload`;
`make_envelope` builds an Envelope; `publish` and `request` are
`BusService.Publish` / `Request` with the mesh's retry rule (a Publish with a
message id is IDEMPOTENT by contract, so every publish here gets one and is
retried as `agentmesh.runtime.retry.is_retryable` allows).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from agentmesh.agent.structs import dict_to_struct, struct_to_dict
from agentmesh.bus.v1 import bus_pb2
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.runtime.retry import idempotency_of, is_retryable_error

if TYPE_CHECKING:
    from agentmesh.bus.v1 import bus_pb2_grpc

_PUBLISH = "/agentmesh.bus.v1.BusService/Publish"
#: Message types by their short names, for `message_type="request"` arguments.
MESSAGE_TYPES: dict[str, int] = {
    name.removeprefix("MESSAGE_TYPE_").lower(): value
    for name, value in bus_pb2.MessageType.items()
    if value
}


class _Settler(Protocol):
    async def _settle(self, msg: Message, *, ack: bool, delay_ms: int, reason: str) -> None: ...


class RemoteError(Exception):
    """A REQUEST was answered with a MESSAGE_TYPE_ERROR reply.

    Attributes:
        reply: the ERROR message; an SDK agent's holds `{"error": str, "type": str}`.
    """

    def __init__(self, reply: Message) -> None:
        body = reply.payload
        text = str(body.get("error", "")) if isinstance(body, dict) else ""
        super().__init__(text or f"the replier {reply.sender_id or '?'} answered with an error")
        self.reply = reply


def message_type_of(value: int | str) -> int:
    """A MessageType number from a number, an enum name or a short name ("request").

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(value, int):
        return value
    if value in MESSAGE_TYPES:
        return MESSAGE_TYPES[value]
    try:
        return int(bus_pb2.MessageType.Value(value))
    except ValueError:
        raise ValueError(
            f"unknown message type {value!r}; one of {sorted(MESSAGE_TYPES)}"
        ) from None


def to_payload(value: Any, *, content_type: str = "") -> common_pb2.Payload:
    """A bus payload for `value`.

    A Mapping (or None, as `{}`) becomes `struct_value`; bytes become
    `bytes_value` (`content_type`, default application/octet-stream); a str
    becomes UTF-8 bytes (text/plain); any other JSON value (a list, a number)
    becomes JSON bytes (application/json); a Payload passes through.

    Raises:
        TypeError: the value is not JSON-serializable.
    """
    if isinstance(value, common_pb2.Payload):
        return value
    if value is None or isinstance(value, Mapping):
        return common_pb2.Payload(struct_value=dict_to_struct(dict(value or {})))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return common_pb2.Payload(bytes_value=bytes(value),
                                  content_type=content_type or "application/octet-stream")
    if isinstance(value, str):
        return common_pb2.Payload(bytes_value=value.encode(),
                                  content_type=content_type or "text/plain; charset=utf-8")
    return common_pb2.Payload(bytes_value=json.dumps(value).encode(),
                              content_type=content_type or "application/json")


def from_payload(p: common_pb2.Payload) -> dict[str, Any] | bytes:
    """A payload as a dict (`struct_value`) or bytes (`bytes_value`; b"" when empty)."""
    if p.WhichOneof("kind") == "struct_value":
        return struct_to_dict(p.struct_value)
    return p.bytes_value


def make_envelope(
    payload: Any = None,
    *,
    topic: str = "",
    recipient_id: str = "",
    sender_id: str = "",
    message_type: int | str = 0,
    key: str = "",
    headers: Mapping[str, str] | None = None,
    priority: int = common_pb2.PRIORITY_UNSPECIFIED,
    correlation_id: str = "",
    reply_to: str = "",
    message_id: str = "",
    content_type: str = "",
) -> bus_pb2.Envelope:
    """An Envelope holding `to_payload(payload)`.

    An empty `topic` with a `recipient_id` addresses the recipient's inbox
    (`agents.<recipient_id>`); `message_id` defaults to a random UUID, so a
    retried publish is deduplicated by consumers.

    Raises:
        ValueError: an unknown `message_type` name.
        TypeError: a payload that is not JSON-serializable.
    """
    return bus_pb2.Envelope(
        id=message_id or uuid.uuid4().hex, topic=topic, recipient_id=recipient_id,
        sender_id=sender_id,
        message_type=message_type_of(message_type),  # type: ignore[arg-type]
        key=key, headers=dict(headers or {}),
        priority=priority,  # type: ignore[arg-type]
        correlation_id=correlation_id, reply_to=reply_to,
        payload=to_payload(payload, content_type=content_type),
    )


class Message:
    """One delivery of a subscription, or a reply.

    Attributes:
        envelope: the message as published (agentmesh.bus.v1.Envelope).
        delivery_attempt: 1 on the first delivery, more on redeliveries.
        position: where it is stored (topic, partition, offset).
        ack_id: the gateway's id of this delivery ("" for a reply).
    """

    __slots__ = ("_owner", "_settled", "ack_id", "delivery_attempt", "envelope", "generation",
                 "position")

    def __init__(self, m: bus_pb2.ReceivedMessage, *, owner: _Settler | None = None,
                 generation: int = 0) -> None:
        self._owner = owner
        self._settled = owner is None
        #: Which stream of its subscriber delivered it (acks of older streams are dropped).
        self.generation = generation
        self.ack_id = m.ack_id
        self.envelope = m.envelope
        self.position = m.position
        self.delivery_attempt = m.delivery_attempt

    @property
    def payload(self) -> dict[str, Any] | bytes:
        """The body: a dict for a struct payload, else the bytes."""
        return from_payload(self.envelope.payload)

    @property
    def id(self) -> str:
        """Envelope.id: unique per message, the key to deduplicate by."""
        return self.envelope.id

    @property
    def topic(self) -> str:
        """The topic it was published to."""
        return self.envelope.topic

    @property
    def key(self) -> str:
        """The partition key."""
        return self.envelope.key

    @property
    def sender_id(self) -> str:
        """The sending agent, when the sender set it."""
        return self.envelope.sender_id

    @property
    def recipient_id(self) -> str:
        """The agent it is addressed to, when direct."""
        return self.envelope.recipient_id

    @property
    def message_type(self) -> int:
        """Its `MessageType` value; UNSPECIFIED reads as MESSAGE_TYPE_EVENT."""
        return self.envelope.message_type or bus_pb2.MESSAGE_TYPE_EVENT

    @property
    def correlation_id(self) -> str:
        """Ties a reply to its request."""
        return self.envelope.correlation_id

    @property
    def reply_to(self) -> str:
        """Where a REQUEST's answer goes."""
        return self.envelope.reply_to

    @property
    def headers(self) -> Mapping[str, str]:
        """Application headers."""
        return self.envelope.headers

    @property
    def settled(self) -> bool:
        """True once acked or nacked (by the caller or the auto-ack)."""
        return self._settled

    async def ack(self) -> None:
        """Acknowledge: the group's offset may move past it. Acks of one
        event-loop turn go out in one Ack; a second call does nothing."""
        if not self._settled:
            self._settled = True
            assert self._owner is not None
            await self._owner._settle(self, ack=True, delay_ms=0, reason="")

    async def nack(self, *, delay_ms: int = 0, reason: str = "") -> None:
        """Reject: redelivered after `delay_ms`, or dead-lettered to
        `<topic>.dlq` once it was delivered `max_deliveries` times (the
        reason is kept in its `am-dlq-reason` header)."""
        if not self._settled:
            self._settled = True
            assert self._owner is not None
            await self._owner._settle(self, ack=False, delay_ms=delay_ms, reason=reason)

    def __repr__(self) -> str:
        return (f"Message(id={self.id!r}, topic={self.topic!r}, "
                f"attempt={self.delivery_attempt})")


async def publish(
    stub: bus_pb2_grpc.BusServiceStub,
    env: bus_pb2.Envelope,
    *,
    timeout_s: float = 10.0,
    attempts: int = 4,
    metadata: Sequence[tuple[str, str]] = (),
) -> bus_pb2.PublishResponse:
    """BusService.Publish, retried within `timeout_s` as the contract allows
    (IDEMPOTENT with `env.id` set, which `make_envelope` always does).

    Raises:
        AgentMeshError: the gateway's status (INVALID_ARGUMENT with field
            violations, PERMISSION_DENIED, UNAVAILABLE, ...).
    """
    req = bus_pb2.PublishRequest(message=env)
    level = idempotency_of(_PUBLISH, request=req)
    deadline = time.monotonic() + timeout_s
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(max(1, attempts)) | stop_after_delay(timeout_s),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
            retry=retry_if_exception(lambda e: is_retryable_error(e, idempotency=level)),
            reraise=True,
        ):
            with attempt:
                resp: bus_pb2.PublishResponse = await stub.Publish(
                    req, timeout=max(0.001, deadline - time.monotonic()),
                    metadata=tuple(metadata) or None)
                return resp
    except grpc.aio.AioRpcError as e:
        raise from_rpc_error(e) from e
    raise AssertionError("unreachable: tenacity either returns or raises")


async def request(
    stub: bus_pb2_grpc.BusServiceStub,
    env: bus_pb2.Envelope,
    *,
    timeout_s: float = 30.0,
    reply_topic: str = "",
    metadata: Sequence[tuple[str, str]] = (),
) -> Message:
    """BusService.Request: publish `env` as a REQUEST and wait for its reply.

    Not retried (a retry would send the request again: IDEMPOTENCY_UNKNOWN).

    Returns:
        The reply, as a Message (already settled: ack and nack do nothing).

    Raises:
        RemoteError: the replier answered with MESSAGE_TYPE_ERROR.
        AgentMeshError: DEADLINE_EXCEEDED without a reply in time, the
            gateway's INVALID_ARGUMENT, UNAVAILABLE, ...
    """
    req = bus_pb2.RequestRequest(message=env, reply_topic=reply_topic)
    req.timeout.FromNanoseconds(int(timeout_s * 1e9))
    try:
        resp = await stub.Request(req, timeout=timeout_s + 2.0, metadata=tuple(metadata) or None)
    except grpc.aio.AioRpcError as e:
        raise from_rpc_error(e) from e
    reply = Message(bus_pb2.ReceivedMessage(envelope=resp.reply, delivery_attempt=1))
    if resp.reply.message_type == bus_pb2.MESSAGE_TYPE_ERROR:
        raise RemoteError(reply)
    return reply


__all__ = [
    "MESSAGE_TYPES",
    "Message",
    "RemoteError",
    "from_payload",
    "make_envelope",
    "message_type_of",
    "publish",
    "request",
    "to_payload",
]
