"""BusService: the gRPC surface of the bus gateway.

Each method validates its input (INVALID_ARGUMENT with field violations before
anything is written), then delegates to the Publisher (writes), Subscription
(Subscribe streams), ReplyRouter (Request, ScatterGather) or the backend.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.runtime import tracing
from agentmesh.runtime.context import remaining_s
from agentmesh.runtime.errors import (
    AgentMeshError,
    AlreadyExists,
    DeadlineExceeded,
    ErrorReason,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from agentmesh.runtime.redis_errors import is_redis_down, redis_unavailable
from agentmesh.runtime.request_checks import Rejected, checked_deserializer
from agentmesh.server.bus import chain, metrics, wire
from agentmesh.server.bus.backend import Backend, BackendUnavailable, TopicExists, TopicRejected
from agentmesh.server.bus.hot_path import load as load_hot_path
from agentmesh.server.bus.publisher import Publisher
from agentmesh.server.bus.replies import DEFAULT_REPLY_TOPIC, ReplyRouter
from agentmesh.server.bus.settings import BusSettings
from agentmesh.server.bus.state import MemoryState, State
from agentmesh.server.bus.subscription import Subscription, SubscriptionOptions
from agentmesh.server.bus.topics import (
    TopicMatcher,
    TopicSpec,
    dlq_topic,
    pattern_error,
    topic_error,
)
from agentmesh.server.bus.tracing import end_producer_spans, producer_spans

#: Consumer group whose committed offsets on "<topic>.dlq" mark what was redriven.
REDRIVE_GROUP = "_agentmesh.redrive"
MAX_VERIFY_RECORDS = 100_000
#: CleanupPolicy -> Kafka cleanup.policy value, and back.
_CLEANUP_POLICY = {
    bus_pb2.CLEANUP_POLICY_DELETE: "delete",
    bus_pb2.CLEANUP_POLICY_COMPACT: "compact",
    bus_pb2.CLEANUP_POLICY_COMPACT_DELETE: "compact,delete",
}
_CLEANUP_ENUM = {v: k for k, v in _CLEANUP_POLICY.items()}
_GROUP_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

log = logging.getLogger("agentmesh.bus.servicer")


def _page_size(n: int, field: str) -> int:
    if n < 0 or n > 1000:
        raise InvalidArgument(f"{field} must be in 0..1000", field_violations={field: "0..1000"})
    return n or 100


def _duration_s(d: Any, default_s: float) -> float:
    return d.ToNanoseconds() / 1e9 if d.ByteSize() else default_s


def _as_request(env: bus_pb2.Envelope) -> None:
    """Request and ScatterGather send MESSAGE_TYPE_REQUEST messages (filled when unset)."""
    if env.message_type == bus_pb2.MESSAGE_TYPE_UNSPECIFIED:
        env.message_type = bus_pb2.MESSAGE_TYPE_REQUEST
    elif env.message_type != bus_pb2.MESSAGE_TYPE_REQUEST:
        raise InvalidArgument(
            "a request must be a MESSAGE_TYPE_REQUEST",
            field_violations={"message.message_type": "must be MESSAGE_TYPE_REQUEST or unset"},
        )


class BusServicer(bus_pb2_grpc.BusServiceServicer):
    """The bus gateway's RPCs.

    Args:
        backend: storage (memory or Kafka).
        settings: gateway settings.
        state: delivery counts and chain heads (services/bus/state.py);
            in this process when None.
    """

    def __init__(
        self, backend: Backend, settings: BusSettings, *, state: State | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.state: State = state if state is not None else MemoryState()
        self.publisher = Publisher(backend, settings, state=self.state)
        self.replies = ReplyRouter(backend)
        self._delivery_s = settings.delivery_timeout_ms / 1000
        #: the per-record loops of Subscribe and PublishStream (raises HotPathUnavailable
        #: for an unbuilt `compiled`)
        self.hot_path = load_hot_path(settings.hot_path)
        metrics.HOT_PATH.labels(self.hot_path.name).set(1)
        log.info("hot path", extra={"hot_path": self.hot_path.name,
                                    "reason": self.hot_path.reason})

    async def close(self) -> None:
        """Stop reply tails."""
        await self.replies.close()

    def _write_timeout_s(self) -> float:
        # Answer UNKNOWN_OUTCOME a little before the caller's deadline so it
        # gets the real status instead of a bare DEADLINE_EXCEEDED.
        left = remaining_s(self._delivery_s + 1.0)
        assert left is not None
        return max(0.01, left - 0.05) if left < self._delivery_s + 1.0 else left

    # ---- publish ----------------------------------------------------------
    async def Publish(
        self, request: bus_pb2.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.PublishResponse:
        """See bus.proto."""
        env = bus_pb2.Envelope()
        env.CopyFrom(request.message)
        w = await self.publisher.publish(env, timeout_s=self._write_timeout_s())
        return bus_pb2.PublishResponse(id=w.id, position=w.position, provenance=w.provenance)

    async def PublishStream(  # type: ignore[override]  # requests and responses are bytes
        self,
        request_iterator: AsyncIterator[bytes | bus_pb2.PublishStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        """See bus.proto. Requests arrive as their bytes (add_to_server): the
        compiled write path (hot_path's publish_run) takes them as they are;
        otherwise they are decoded and checked as the runtime would have."""
        inflight: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        done = object()
        run = self.hot_path.publish_run

        async def reader() -> None:
            # Submitting batches one by one keeps their write order; their
            # delivery reports are awaited by the writer below, overlapping.
            try:
                async for req in request_iterator:
                    if isinstance(req, bytes):
                        if run is not None and not tracing.enabled():
                            pending = self.publisher.submit_encoded(req, run)
                            if pending is not None:
                                await inflight.put((pending, []))
                                continue
                        decoded = decode_publish_request(req)
                    else:
                        decoded = req
                    msgs = list(decoded.messages)
                    spans = producer_spans(msgs)  # [] while off or unsampled
                    try:
                        pending = await self.publisher.submit(msgs)
                    except BaseException as exc:
                        end_producer_spans(spans, [exc] * len(spans))
                        raise
                    await inflight.put((pending, spans))
            finally:
                await inflight.put(done)

        metrics.CONNECTIONS.labels("publish_stream").inc()
        task = asyncio.create_task(reader())
        try:
            while True:
                item = await inflight.get()
                if item is done:
                    break
                pending, spans = item
                await pending.settle(self._delivery_s + 1.0)
                if spans:
                    end_producer_spans(spans, pending.written())
                yield pending.response(self.hot_path.encode_reports)
            await task  # surfaces a reader error
        finally:
            task.cancel()
            metrics.CONNECTIONS.labels("publish_stream").dec()

    # ---- subscribe --------------------------------------------------------
    def _options(self, o: bus_pb2.SubscriptionOpen) -> SubscriptionOptions:
        bad: list[tuple[str, str]] = []
        if not o.topic_patterns:
            bad.append(("open.topic_patterns", "at least one pattern is required"))
        for i, p in enumerate(o.topic_patterns):
            err = pattern_error(p)
            if err:
                bad.append((f"open.topic_patterns[{i}]", err))
        if not o.consumer_group or len(o.consumer_group) > 200 or not set(
            o.consumer_group
        ) <= _GROUP_OK:
            bad.append(("open.consumer_group", "1-200 characters of [A-Za-z0-9._-]"))
        if o.start_position not in bus_pb2.StartPosition.values():
            bad.append(("open.start_position", f"unknown start position {o.start_position}"))
        if o.max_unacked > 100_000:
            bad.append(("open.max_unacked", "at most 100000"))
        ack_s = _duration_s(o.ack_deadline, 30.0)
        if ack_s <= 0 or ack_s > 3600:
            bad.append(("open.ack_deadline", "must be in (0, 1h]"))
        if bad:
            raise InvalidArgument("invalid subscription", field_violations=bad)
        return SubscriptionOptions(
            patterns=tuple(o.topic_patterns),
            group=o.consumer_group,
            max_unacked=o.max_unacked or 100,
            ack_deadline_s=ack_s,
            max_deliveries=o.max_deliveries or 5,
            earliest=o.start_position != bus_pb2.START_POSITION_LATEST,
        )

    async def Subscribe(  # type: ignore[override]  # yields serialized batches too
        self,
        request_iterator: AsyncIterator[bus_pb2.SubscribeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bus_pb2.SubscribeResponse | bytes]:
        """See bus.proto. Batches come serialized (Subscription._deliver) and
        pass through Subscribe's serializer as they are (add_to_server)."""
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "open":
            raise InvalidArgument(
                "the first Subscribe message must be `open`",
                field_violations={"open": "required in the first message"},
            )
        sub = Subscription(
            self.backend,
            self._options(first.open),
            dead_letter=self.publisher.dead_letter,
            state=self.state,
            read_ahead=self.settings.read_ahead,
            topic_refresh_s=self.settings.topic_refresh_ms / 1000,
            hot_path=self.hot_path,
        )
        metrics.CONNECTIONS.labels("subscribe").inc()
        reader: asyncio.Task[None] | None = None
        getter: asyncio.Future[Any] | None = None
        try:
            try:
                topics = await sub.start()
            except BackendUnavailable as exc:
                raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
            yield bus_pb2.SubscribeResponse(
                started=bus_pb2.SubscriptionStarted(subscription_id=sub.id, topics=topics)
            )
            reader = asyncio.create_task(self._read_acks(request_iterator, sub))
            while True:
                getter = asyncio.ensure_future(sub.outbox.get())
                await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    reader.result()  # raises the reader's error, else the client closed
                    return
                item = getter.result()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if getter is not None:
                getter.cancel()  # the client went away while we waited for messages
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            await sub.close()
            metrics.CONNECTIONS.labels("subscribe").dec()

    @staticmethod
    async def _read_acks(
        it: AsyncIterator[bus_pb2.SubscribeRequest], sub: Subscription
    ) -> None:
        async for req in it:
            kind = req.WhichOneof("kind")
            if kind == "ack":
                sub.ack(req.ack.ack_ids,
                        [((p.topic, p.partition), p.offset) for p in req.ack.up_to])
            elif kind == "nack":
                sub.nack(
                    list(req.nack.ack_ids),
                    reason=req.nack.reason,
                    delay_s=_duration_s(req.nack.redeliver_delay, 0.0),
                )
            else:
                raise InvalidArgument(
                    "only ack and nack may follow open",
                    field_violations=[(kind or "kind", "not allowed after the first message")],
                )

    # ---- request-reply ----------------------------------------------------
    async def _reply_topic(self, name: str, field: str) -> str:
        topic = name or DEFAULT_REPLY_TOPIC
        err = topic_error(topic)
        if err:
            raise InvalidArgument(f"bad {field}", field_violations={field: err})
        await self.publisher.partitions_for(topic)
        try:
            await self.replies.ensure(topic)
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
        return topic

    async def Request(
        self, request: bus_pb2.RequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.RequestResponse:
        """See bus.proto."""
        env = bus_pb2.Envelope()
        env.CopyFrom(request.message)
        _as_request(env)
        self.publisher.address([env])
        self.publisher.validate(env)
        wait_s = remaining_s(_duration_s(request.timeout, 30.0)) or 0.0
        reply_topic = await self._reply_topic(request.reply_topic, "reply_topic")
        corr = env.correlation_id or uuid.uuid4().hex
        env.correlation_id = corr
        env.reply_to = reply_topic
        q = self.replies.register(corr)
        try:
            start = time.perf_counter()
            await self.publisher.publish(env, timeout_s=self._write_timeout_s())
            metrics.SENT.labels(metrics.topic_label(env.topic), "request").inc()
            left = wait_s - (time.perf_counter() - start)
            try:
                reply = await asyncio.wait_for(q.get(), max(0.0, left))
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no reply on {reply_topic} for correlation id {corr} within {wait_s:.3f}s"
                ) from None
            resp = bus_pb2.RequestResponse(reply=reply, correlation_id=corr)
            resp.round_trip.FromNanoseconds(int((time.perf_counter() - start) * 1e9))
            return resp
        finally:
            self.replies.unregister(corr)

    async def ScatterGather(
        self, request: bus_pb2.ScatterGatherRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.ScatterGatherResponse:
        """See bus.proto."""
        if not request.topics:
            raise InvalidArgument("at least one recipient topic is required",
                                  field_violations={"topics": "must not be empty"})
        envs = []
        for i, t in enumerate(request.topics):
            err = topic_error(t)
            if err:
                raise InvalidArgument("bad recipient topic",
                                      field_violations={f"topics[{i}]": err})
            env = bus_pb2.Envelope()
            env.CopyFrom(request.message)
            env.topic = t
            _as_request(env)
            self.publisher.validate(env)
            envs.append(env)
        expected = request.expected_responses or len(envs)
        wait_s = remaining_s(_duration_s(request.timeout, 30.0)) or 0.0
        reply_topic = await self._reply_topic(request.reply_topic, "reply_topic")
        corr = request.message.correlation_id or uuid.uuid4().hex
        for env in envs:
            env.correlation_id = corr
            env.reply_to = reply_topic
            env.id = ""  # one id per recipient copy
        q = self.replies.register(corr)
        replies: list[bus_pb2.Envelope] = []
        try:
            start = time.monotonic()
            for r in await self.publisher.publish_many(envs, timeout_s=self._write_timeout_s()):
                if isinstance(r, AgentMeshError):
                    raise r
            for env in envs:
                metrics.SENT.labels(metrics.topic_label(env.topic), "scatter").inc()
            deadline = start + wait_s
            while len(replies) < expected:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    replies.append(await asyncio.wait_for(q.get(), left))
                except TimeoutError:
                    break
        finally:
            self.replies.unregister(corr)
        return bus_pb2.ScatterGatherResponse(
            replies=replies, partial=len(replies) < expected, correlation_id=corr
        )

    # ---- dead letters -----------------------------------------------------
    def _source_topic(self, topic: str) -> str:
        err = topic_error(topic)
        if err:
            raise InvalidArgument("bad topic", field_violations={"topic": err})
        return topic

    async def _dlq_cursor(self, dlq: str, n: int) -> dict[int, int]:
        cursor = await self.backend.committed(REDRIVE_GROUP, dlq)
        for p in range(n):
            if p not in cursor:
                cursor[p] = (await self.backend.watermarks(dlq, p))[0]
        return cursor

    @staticmethod
    def _dead_letter(rec: wire.StoredRecord) -> bus_pb2.DeadLetter:
        try:
            env = wire.to_envelope(rec)
        except DecodeError:
            # Dead-lettered because its value is not an Envelope: list it
            # with the raw value as the payload instead of failing the page.
            env = bus_pb2.Envelope(id=f"{rec.topic}/{rec.partition}/{rec.offset}",
                                   topic=rec.header(wire.H_DLQ_TOPIC) or "")
            env.payload.bytes_value = rec.value or b""
            env.payload.content_type = "application/octet-stream"
        for k in list(env.headers):
            if k.startswith("am-dlq-") or k == wire.H_DELIVERY_COUNT:
                del env.headers[k]
        # A chained dead letter: the envelope as it was delivered carries the
        # original provenance, not its link in the dead-letter chain.
        prov = rec.header(wire.H_DLQ_PROVENANCE)
        if prov is not None:
            env.provenance.ParseFromString(bytes.fromhex(prov))
            env.provenance.hash = rec.header(wire.H_DLQ_HASH) or ""
        dl = bus_pb2.DeadLetter(
            envelope=env,
            reason=rec.header(wire.H_DLQ_REASON) or "",
            delivery_count=int(rec.header(wire.H_DELIVERY_COUNT) or 0),
            source=bus_pb2.RecordPosition(
                topic=rec.header(wire.H_DLQ_TOPIC) or "",
                partition=int(rec.header(wire.H_DLQ_PARTITION) or 0),
                offset=int(rec.header(wire.H_DLQ_OFFSET) or 0),
            ),
            position=bus_pb2.RecordPosition(
                topic=rec.topic, partition=rec.partition, offset=rec.offset
            ),
        )
        dl.dead_letter_time.FromMilliseconds(rec.timestamp_ms)
        return dl

    async def ListDeadLetters(
        self, request: bus_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.ListDeadLettersResponse:
        """See bus.proto."""
        topic = self._source_topic(request.topic)
        size = _page_size(request.page_size, "page_size")
        dlq = dlq_topic(topic)
        try:
            n = await self.backend.partitions(dlq)
            if not n:
                return bus_pb2.ListDeadLettersResponse()
            if request.page_token:
                try:
                    pos = {int(k): int(v) for k, v in json.loads(
                        base64.urlsafe_b64decode(request.page_token.encode())).items()}
                except (ValueError, AttributeError) as exc:
                    raise InvalidArgument("bad page token",
                                          field_violations={"page_token": str(exc)}) from exc
            else:
                pos = await self._dlq_cursor(dlq, n)
            out: list[bus_pb2.DeadLetter] = []
            more = False
            for p in range(n):
                high = (await self.backend.watermarks(dlq, p))[1]
                start = pos.get(p, 0)
                if start >= high:
                    continue
                if len(out) >= size:
                    more = True
                    break
                recs = await self.backend.read(dlq, p, start, high, max_records=size - len(out))
                out.extend(self._dead_letter(r) for r in recs)
                if recs:
                    pos[p] = recs[-1].offset + 1
                if pos[p] < high:
                    more = True
                    break
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
        token = base64.urlsafe_b64encode(json.dumps(pos).encode()).decode() if more else ""
        return bus_pb2.ListDeadLettersResponse(dead_letters=out, next_page_token=token)

    async def RedriveDeadLetters(
        self,
        request: bus_pb2.RedriveDeadLettersRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bus_pb2.RedriveDeadLettersResponse:
        """See bus.proto."""
        topic = self._source_topic(request.topic)
        if request.max_messages < 0:
            raise InvalidArgument("max_messages must be >= 0",
                                  field_violations={"max_messages": "must be >= 0"})
        limit = request.max_messages or 10_000
        dlq = dlq_topic(topic)
        resp = bus_pb2.RedriveDeadLettersResponse()
        try:
            n = await self.backend.partitions(dlq)
            if not n:
                return resp
            cursor = await self._dlq_cursor(dlq, n)
            for p in range(n):
                if resp.redriven_count >= limit:
                    break
                high = (await self.backend.watermarks(dlq, p))[1]
                recs = await self.backend.read(
                    dlq, p, cursor[p], high, max_records=limit - resp.redriven_count
                )
                if not recs:
                    continue
                envs = []
                for rec in recs:
                    env = wire.to_envelope(rec)
                    for k in list(env.headers):
                        if k.lower().startswith(wire.RESERVED_PREFIX):
                            del env.headers[k]
                    env.ClearField("provenance")
                    env.ClearField("publish_time")
                    env.topic = rec.header(wire.H_DLQ_TOPIC) or topic
                    envs.append(env)
                results = await self.publisher.publish_many(
                    envs, timeout_s=self._write_timeout_s()
                )
                done = 0
                for r in results:
                    if isinstance(r, AgentMeshError):
                        break
                    resp.positions.append(r.position)
                    done += 1
                resp.redriven_count += done
                if done:
                    await self.backend.commit_offsets(
                        REDRIVE_GROUP, dlq, {p: recs[done - 1].offset + 1}
                    )
                    metrics.SENT.labels(metrics.topic_label(topic), "redrive").inc(done)
                if done < len(results):
                    err = results[done]
                    assert isinstance(err, AgentMeshError)
                    raise err
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
        return resp

    # ---- topics -------------------------------------------------------------
    async def CreateTopic(
        self, request: bus_pb2.CreateTopicRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.CreateTopicResponse:
        """See bus.proto."""
        bad: list[tuple[str, str]] = []
        err = topic_error(request.topic.name)
        if err:
            bad.append(("topic.name", err))
        t = request.topic
        if not 0 <= t.partitions <= 1000:
            bad.append(("topic.partitions", "must be in 0..1000"))
        if not 0 <= t.replication_factor <= 32_767:
            bad.append(("topic.replication_factor", "must be in 0..32767 (0 = default)"))
        if not 0 <= t.min_insync_replicas <= 32_767:
            bad.append(("topic.min_insync_replicas", "must be in 0..32767 (0 = default)"))
        if t.HasField("retention") and t.retention.ToMilliseconds() <= 0:
            bad.append(("topic.retention", "must be at least 1 ms"))
        if bad:
            raise InvalidArgument("invalid topic", field_violations=bad)
        parts = t.partitions or self.settings.default_partitions
        try:
            # The spec as created: the backend fills in what was left open
            # (Kafka: replication 3 / min.insync.replicas 2 on a cluster).
            spec = await self.backend.create_topic(t.name, parts, self._topic_spec(t))
        except TopicExists:
            raise AlreadyExists(f"topic {t.name} already exists") from None
        except TopicRejected as exc:
            raise InvalidArgument(str(exc), field_violations={
                f"topic.{exc.field}": str(exc)}) from None
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
        out = bus_pb2.Topic(name=t.name, partitions=parts,
                            replication_factor=max(spec.replication_factor, 0),
                            min_insync_replicas=spec.min_insync_replicas,
                            cleanup_policy=_CLEANUP_ENUM.get(
                                spec.cleanup_policy, bus_pb2.CLEANUP_POLICY_UNSPECIFIED))
        if spec.retention_ms == -1:
            out.infinite_retention = True
        elif spec.retention_ms > 0:
            out.retention.FromMilliseconds(spec.retention_ms)
        return bus_pb2.CreateTopicResponse(topic=out)

    def _topic_spec(self, t: bus_pb2.Topic) -> TopicSpec:
        """The request's topic settings over the gateway's defaults."""
        d = self.settings.topic_defaults()
        retention_ms = d.retention_ms
        if t.infinite_retention:
            retention_ms = -1
        elif t.HasField("retention"):
            retention_ms = t.retention.ToMilliseconds()
        return TopicSpec(
            replication_factor=t.replication_factor or d.replication_factor,
            min_insync_replicas=t.min_insync_replicas or d.min_insync_replicas,
            retention_ms=retention_ms,
            cleanup_policy=_CLEANUP_POLICY.get(t.cleanup_policy) or d.cleanup_policy,
        )

    async def ListTopics(
        self, request: bus_pb2.ListTopicsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.ListTopicsResponse:
        """See bus.proto."""
        size = _page_size(request.page_size, "page_size")
        if request.pattern:
            err = pattern_error(request.pattern)
            if err:
                raise InvalidArgument("bad pattern", field_violations={"pattern": err})
        try:
            topics = await self.backend.list_topics()
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
        if request.pattern:
            names = TopicMatcher([request.pattern]).select(topics)
        else:
            names = sorted(
                t for t in topics if not any(lv.startswith("_") for lv in t.split("."))
            )
        after = ""
        if request.page_token:
            try:
                after = base64.urlsafe_b64decode(request.page_token.encode()).decode()
            except ValueError as exc:
                raise InvalidArgument("bad page token",
                                      field_violations={"page_token": str(exc)}) from exc
        names = [t for t in names if t > after]
        page = names[:size]
        token = (
            base64.urlsafe_b64encode(page[-1].encode()).decode() if len(names) > size else ""
        )
        return bus_pb2.ListTopicsResponse(
            topics=[bus_pb2.Topic(name=t, partitions=topics[t]) for t in page],
            next_page_token=token,
        )

    # ---- provenance -----------------------------------------------------------
    async def VerifyChain(
        self, request: bus_pb2.VerifyChainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bus_pb2.VerifyChainResponse:
        """See bus.proto."""
        bad: list[tuple[str, str]] = []
        err = topic_error(request.topic)
        if err:
            bad.append(("topic", err))
        if request.partition < 0:
            bad.append(("partition", "must be >= 0"))
        if request.start_offset < 0:
            bad.append(("start_offset", "must be >= 0"))
        if request.end_offset < 0 or (request.end_offset and
                                      request.end_offset <= request.start_offset):
            bad.append(("end_offset", "must be 0 (the end) or greater than start_offset"))
        if bad:
            raise InvalidArgument("invalid range", field_violations=bad)
        try:
            n = await self.backend.partitions(request.topic)
            if not n:
                raise NotFound(f"topic {request.topic} does not exist",
                               resource_type="topic", resource_name=request.topic)
            if request.partition >= n:
                raise NotFound(f"topic {request.topic} has {n} partitions",
                               resource_type="partition",
                               resource_name=f"{request.topic}/{request.partition}")
            low, high = await self.backend.watermarks(request.topic, request.partition)
            start = max(request.start_offset, low)
            end = min(request.end_offset or high, high)
            if end - start > MAX_VERIFY_RECORDS:
                raise InvalidArgument(
                    f"range holds {end - start} records; at most {MAX_VERIFY_RECORDS} per call",
                    field_violations={"end_offset": f"at most {MAX_VERIFY_RECORDS} records"},
                )
            recs = await self.backend.read(request.topic, request.partition, start, end,
                                           max_records=MAX_VERIFY_RECORDS)
        except BackendUnavailable as exc:
            raise Unavailable(str(exc), reason=ErrorReason.ERROR_REASON_KAFKA_DOWN) from exc
        try:
            heads = await self.state.heads((request.topic, request.partition))
        except Exception as exc:
            if is_redis_down(exc):
                raise redis_unavailable(exc, action="the chain heads cannot be read") from exc
            raise
        # Heads below the first retained offset went with retention; with no
        # end_offset, a head anywhere past `start` must be in the log.
        resp = chain.verify(recs, heads=heads, start=start, end=request.end_offset or None)
        resp.end_offset = recs[-1].offset + 1 if recs else start
        return resp


_DECODE_PUBLISH = checked_deserializer(bus_pb2.PublishStreamRequest.FromString)


def decode_publish_request(data: bytes) -> bus_pb2.PublishStreamRequest:
    """A PublishStreamRequest's bytes decoded and checked by the runtime's
    deserializer (request_checks), as every other request is.

    Raises:
        InvalidArgument: undecodable, or a contract rule broken (an unknown
            enum value); the call ends with it, as for any other RPC.
    """
    assert _DECODE_PUBLISH is not None
    req = _DECODE_PUBLISH(data)
    if type(req) is Rejected:
        raise req.error
    return req


def _pass_bytes(resp: Any) -> bytes:
    """The response serializer of Subscribe and PublishStream: their
    responses are built as bytes (Subscribe's batches checked by parsing
    them), so the bytes are sent as they are instead of being parsed into a
    message and serialized again; a message is serialized as usual."""
    if isinstance(resp, bytes):
        return resp
    return resp.SerializeToString()


class _BytesPassThrough:
    """The server as the generated registration function sees it: the
    BusService handlers reach the real server with Subscribe's and
    PublishStream's responses passed through as bytes (`_pass_bytes`) and
    PublishStream's requests handed over undecoded (no request deserializer;
    the servicer decodes what the compiled write path does not take)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # The generated code registers the same handlers twice (generic, then
        # by name); both are registered from the patched set in the second call.
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        patched = dict(handlers)
        patched["Subscribe"] = handlers["Subscribe"]._replace(response_serializer=_pass_bytes)
        patched["PublishStream"] = handlers["PublishStream"]._replace(
            request_deserializer=None, response_serializer=_pass_bytes
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, patched),)
        )
        self._server.add_registered_method_handlers(service, patched)


def add_to_server(servicer: BusServicer, server: grpc.aio.Server) -> None:
    """Register BusService on `server` (the generated function's job), with
    Subscribe's batches and PublishStream's reports sent as the bytes they
    were built as, and PublishStream's requests received as bytes."""
    bus_pb2_grpc.add_BusServiceServicer_to_server(servicer, _BytesPassThrough(server))
