"""SagaService: the gRPC API over the store and the engine."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agentmesh.runtime.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.definition import CompiledDefinition, compile_definition
from agentmesh.server.saga.engine import Engine, FeedItem, Started
from agentmesh.server.saga.events import GENESIS, seal
from agentmesh.server.saga.state import FINAL_STATES, SagaRecord, ms_ts
from agentmesh.server.saga.store import SagaStore
from agentmesh.server.saga.tracing import saga_span

MAX_INPUT_BYTES = 1 << 20
MAX_IDEMPOTENCY_KEY = 200
#: Inline definitions kept compiled (by content); the cache is cleared when full.
INLINE_CACHE_SIZE = 1000
_FINAL_NAMES = {saga_pb2.SagaState.Name(s) for s in FINAL_STATES}


def new_saga_id() -> str:
    """`sg_` + 12 hex digits of Unix ms + 16 random hex digits: ids sort by creation time."""
    return f"sg_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


def _page_size(v: int, *, default: int, maximum: int) -> int:
    if v < 0:
        raise InvalidArgument(
            "page_size must not be negative", field_violations={"page_size": "must be >= 0"}
        )
    return min(v or default, maximum)


def _token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode() if value else ""


def _untoken(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(
            "bad page_token", field_violations={"page_token": "not a token this API returned"}
        ) from e


def _need_id(saga_id: str) -> None:
    if not saga_id:
        raise InvalidArgument("saga_id is required", field_violations={"saga_id": "required"})


class SagaServicer(saga_pb2_grpc.SagaServiceServicer):
    """The SagaService implementation.

    Args:
        store: persistence.
        engine: the local engine (kicked on StartSaga, told about cancels).
        watch_store: a store on a separate Redis pool for blocking reads.
        default_timeout_ms: saga timeout written into definitions that set none.
        compensation_timeout_ms: default_compensation_timeout written into
            definitions that set none; 0 leaves it unset (the step's timeout).
    """

    def __init__(
        self,
        store: SagaStore,
        engine: Engine,
        watch_store: SagaStore,
        *,
        default_timeout_ms: int = 300_000,
        compensation_timeout_ms: int = 0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.watch_store = watch_store
        self.default_timeout_ms = default_timeout_ms
        self.compensation_timeout_ms = compensation_timeout_ms
        self._inline: dict[bytes, tuple[saga_pb2.SagaDefinition, CompiledDefinition]] = {}

    def _write_defaults(self, defn: saga_pb2.SagaDefinition) -> None:
        """Write the coordinator's timeout defaults into `defn` where unset.

        The saga keeps its own copy of the definition, so a replica configured
        differently (or this one after a restart with other flags) drives it
        with the timeouts it started with. `defn` is the request's or a fresh
        load, never shared, so it is changed in place (no copy on the hot path).
        """
        if not defn.HasField("timeout"):
            defn.timeout.FromMilliseconds(self.default_timeout_ms)
        if self.compensation_timeout_ms > 0 and not defn.HasField("default_compensation_timeout"):
            defn.default_compensation_timeout.FromMilliseconds(self.compensation_timeout_ms)

    async def _load(self, saga_id: str) -> SagaRecord:
        _need_id(saga_id)
        rec = await self.store.load(saga_id)
        if rec is None:
            raise NotFound(
                f"saga {saga_id!r} not found", resource_type="saga", resource_name=saga_id
            )
        return rec

    def _inline_definition(
        self, defn: saga_pb2.SagaDefinition, *, prefix: str
    ) -> tuple[saga_pb2.SagaDefinition, CompiledDefinition]:
        """A StartSaga request's inline definition, validated, with the defaults
        written in, and compiled; cached by its content, so a client that starts
        the same definition again skips validation and compilation.

        Raises:
            InvalidArgument: a malformed definition (never cached).
        """
        key = defn.SerializeToString(deterministic=True)
        hit = self._inline.get(key)
        if hit is None:
            compile_definition(defn, field_prefix=f"{prefix}definition")
            d = saga_pb2.SagaDefinition()
            d.CopyFrom(defn)
            self._write_defaults(d)
            if len(self._inline) >= INLINE_CACHE_SIZE:
                self._inline.clear()
            hit = self._inline[key] = (d, self.engine.compile(d))
        return hit

    async def _start(
        self, request: saga_pb2.StartSagaRequest, *, prefix: str = "", follow: bool = False
    ) -> tuple[saga_pb2.StartSagaResponse, Started | None]:
        """StartSaga's work, shared with RunSaga.

        Args:
            request: the start request.
            prefix: field-violation path prefix ("start." in RunSaga).
            follow: subscribe to the new saga's events (`Started.feed`).

        Returns:
            The response, and the Started saga when this replica created it with
            its lease (None: an earlier saga of the idempotency key, or a saga
            left to the recovery loop because this replica is at max_active).
        """
        src = request.WhichOneof("definition_source")
        if src is None:
            raise InvalidArgument(
                "set definition or definition_name",
                field_violations={f"{prefix}definition": "required"},
            )
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(
                "idempotency_key too long",
                field_violations={
                    f"{prefix}idempotency_key": f"at most {MAX_IDEMPOTENCY_KEY} characters"
                },
            )
        if request.input.ByteSize() > MAX_INPUT_BYTES:
            raise ResourceExhausted(
                "input too large",
                quota_subject=f"{prefix}input",
                quota_description=f"at most {MAX_INPUT_BYTES} bytes",
            )
        if src == "definition":
            defn, comp = self._inline_definition(request.definition, prefix=prefix)
        else:
            found = await self.store.get_definition(
                request.definition_name, version=request.definition_version
            )
            if found is None:
                raise NotFound(
                    f"no saga definition {request.definition_name!r}"
                    + (
                        f" version {request.definition_version}"
                        if request.definition_version
                        else ""
                    ),
                    resource_type="saga_definition",
                    resource_name=request.definition_name,
                )
            defn = found
            self._write_defaults(defn)
            comp = self.engine.compile(defn)
        # The fingerprint is of the request as sent, before the defaults go in.
        fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        saga_id = new_saga_id()
        ev = saga_pb2.SagaEvent(
            saga_id=saga_id,
            sequence=1,
            type=saga_pb2.SAGA_EVENT_TYPE_SAGA_STARTED,
            create_time=ms_ts(int(time.time() * 1000)),
            input=request.input,
            definition=defn,
            idempotency_key=request.idempotency_key,
            state=saga_pb2.SAGA_STATE_PENDING,
            traceparent=saga_span(saga_id, defn.name),
        )
        seal(ev, GENESIS)
        started: Started | None = None
        existing: tuple[str, str] | None = None
        if self.engine.has_room():
            out = await self.engine.start_saga(
                ev,
                comp,
                idempotency_key=request.idempotency_key,
                fingerprint=fingerprint,
                feed=follow,
            )
            if isinstance(out, Started):
                started = out
            else:
                existing = out
        else:
            # at max_active: store it unleased; a replica with room takes it
            existing = await self.store.create(
                ev,
                name=defn.name,
                idempotency_key=request.idempotency_key,
                fingerprint=fingerprint,
            )
        if existing is not None:
            old_id, old_fp = existing
            if old_fp != fingerprint:
                raise Aborted(
                    f"idempotency_key {request.idempotency_key!r} already started saga "
                    f"{old_id} with a different request"
                )
            rec = await self._load(old_id)
            return saga_pb2.StartSagaResponse(saga=rec.to_proto(), already_started=True), None
        rec = SagaRecord.start(ev, [st.name for st in comp.steps])
        return saga_pb2.StartSagaResponse(saga=rec.to_proto()), started

    # ---- sagas ------------------------------------------------------------------
    async def StartSaga(
        self, request: saga_pb2.StartSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.StartSagaResponse:
        """See saga.proto."""
        resp, _ = await self._start(request)
        return resp

    async def RunSaga(
        self, request: saga_pb2.RunSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[saga_pb2.RunSagaResponse]:
        """See saga.proto. One message per durable batch: each message is one
        stream write (a sendmsg), so a five-step saga takes six, not fifteen."""
        if not request.HasField("start"):
            raise InvalidArgument("start is required", field_violations={"start": "required"})
        resp, started = await self._start(request.start, prefix="start.", follow=True)
        saga_id = resp.saga.saga_id
        if started is not None:
            # created here: its first events are in memory, the rest come on the feed
            yield saga_pb2.RunSagaResponse(started=resp, events=started.events)
            src = self._follow(saga_id, after=started.events[-1].sequence, feed=started.feed)
        else:
            yield saga_pb2.RunSagaResponse(started=resp)
            src = self._watch(saga_id, after=0)
        async for batch, rec in src:
            if batch[-1].state not in FINAL_STATES:
                yield saga_pb2.RunSagaResponse(events=batch)
                continue
            # the runner is done once its final batch is out: `rec` no longer changes
            final = rec if rec is not None else await self._load(saga_id)
            yield saga_pb2.RunSagaResponse(events=batch, saga=final.to_proto())
            return

    async def _follow(
        self, saga_id: str, *, after: int, feed: asyncio.Queue[FeedItem] | None
    ) -> AsyncIterator[tuple[list[saga_pb2.SagaEvent], SagaRecord | None]]:
        """The saga's events after `after` to its final one, in batches, each with
        the runner's record when it came from this replica's runner (the record
        may be ahead of the batch, except after the final one) or None when it
        was read from the log.

        With a `feed` (`Engine.subscribe`, taken before anything after `after`
        can have been appended, so nothing is missed) the events come from
        memory while this replica drives the saga, and from the log before that
        and after the runner stops; the feed is unsubscribed when this ends.

        Raises:
            NotFound: the saga is gone (its retention ran out while followed).
        """
        try:
            if feed is not None:
                while True:
                    item = await feed.get()
                    if item is None:
                        break  # the runner stopped: read the log from here on
                    rec, evs = item
                    if evs[-1].sequence <= after:
                        continue
                    if evs[0].sequence > after + 1:
                        break  # a batch this feed missed (it started late): the log has it
                    batch = [ev for ev in evs if ev.sequence > after]
                    after = batch[-1].sequence
                    yield batch, rec
                    if batch[-1].state in FINAL_STATES:
                        return
            async for x in self._from_log(saga_id, after=after):
                yield x
        finally:
            if feed is not None:
                self.engine.unsubscribe(saga_id, feed)

    async def _from_log(
        self, saga_id: str, *, after: int
    ) -> AsyncIterator[tuple[list[saga_pb2.SagaEvent], SagaRecord | None]]:
        """The saga's events after `after` to its final one, read from the log
        (blocking reads on the watch pool), in the batches the reads return.

        Raises:
            NotFound: the saga is gone.
        """
        evs = await self.store.events(saga_id, after_seq=after)
        while True:
            for i, ev in enumerate(evs):
                if ev.state in FINAL_STATES:
                    yield evs[: i + 1], None
                    return
            if evs:
                after = evs[-1].sequence
                yield evs, None
            evs = await self.watch_store.block_events(saga_id, after_seq=after, block_ms=1000)
            if not evs:
                rec_state = await self.store.r.hget(self.store.hkey(saga_id), "state")
                if rec_state is None:
                    # its retention ran out while we watched (after_sequence was the end)
                    raise NotFound(
                        f"saga {saga_id!r} not found", resource_type="saga", resource_name=saga_id
                    )
                if rec_state.decode() in _FINAL_NAMES:
                    # the final event was appended between our read and the block
                    evs = await self.store.events(saga_id, after_seq=after)
                    if not evs:
                        return

    async def GetSaga(
        self, request: saga_pb2.GetSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.GetSagaResponse:
        """See saga.proto."""
        rec = await self._load(request.saga_id)
        return saga_pb2.GetSagaResponse(saga=rec.to_proto())

    async def ListSagas(
        self, request: saga_pb2.ListSagasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.ListSagasResponse:
        """See saga.proto."""
        size = _page_size(request.page_size, default=50, maximum=500)
        cursor = _untoken(request.page_token)
        states = {saga_pb2.SagaState.Name(s) for s in request.states}
        if request.definition_name:
            index = f"idx:name:{request.definition_name}"
        elif len(states) == 1:
            index = f"idx:state:{next(iter(states))}"
        else:
            index = "idx:all"
        found: list[str] = []
        exhausted = False
        while len(found) < size:
            ids = await self.store.page_ids(index, before=cursor, count=max(size * 2, 50))
            if not ids:
                exhausted = True
                break
            meta = await self.store.states_of(ids)
            for saga_id, (state, _name) in zip(ids, meta, strict=True):
                cursor = saga_id
                if not state:
                    continue
                if states and state not in states:
                    continue
                found.append(saga_id)
                if len(found) == size:
                    break
        resp = saga_pb2.ListSagasResponse()
        for saga_id in found:
            rec = await self.store.load(saga_id)
            if rec is not None:
                resp.sagas.append(rec.to_proto(summary=True))
        if not exhausted and found:
            resp.next_page_token = _token(found[-1])
        return resp

    async def CancelSaga(
        self, request: saga_pb2.CancelSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.CancelSagaResponse:
        """See saga.proto."""
        rec = await self._load(request.saga_id)
        state_name = saga_pb2.SagaState.Name(rec.state)  # type: ignore[arg-type]
        if rec.final:
            raise FailedPrecondition(
                f"saga {rec.saga_id} has finished ({state_name}); nothing to cancel",
                violations=[("STATE", f"sagas/{rec.saga_id}", f"state is {state_name}")],
            )
        comp = self.engine.compile(rec.definition)
        if rec.pivot_passed(comp.pivot):
            raise FailedPrecondition(
                f"saga {rec.saga_id} has passed its pivot step {comp.pivot!r} "
                "and can only complete",
                violations=[("PIVOT", f"sagas/{rec.saga_id}", "the pivot step has completed")],
            )
        reason = request.reason or "cancelled by request"
        out = await self.store.request_cancel(rec.saga_id, reason=reason)
        if out == "missing":
            raise NotFound(f"saga {rec.saga_id!r} not found")
        if out in _FINAL_NAMES:
            raise FailedPrecondition(
                f"saga {rec.saga_id} has finished ({out}); nothing to cancel",
                violations=[("STATE", f"sagas/{rec.saga_id}", out)],
            )
        self.engine.notify_cancel(rec.saga_id, reason)
        return saga_pb2.CancelSagaResponse(saga=rec.to_proto())

    async def WatchSaga(
        self, request: saga_pb2.WatchSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[saga_pb2.WatchSagaResponse]:
        """See saga.proto."""
        _need_id(request.saga_id)
        async for batch, _ in self._watch(request.saga_id, after=request.after_sequence):
            for ev in batch:
                yield saga_pb2.WatchSagaResponse(event=ev)

    async def _watch(
        self, saga_id: str, *, after: int
    ) -> AsyncIterator[tuple[list[saga_pb2.SagaEvent], SagaRecord | None]]:
        """WatchSaga's stream in batches: the stored events after `after`, then
        the new ones (from memory while this replica drives the saga; see
        `_follow`).

        Raises:
            NotFound: no such saga.
        """
        # Subscribed before the first read: a batch appended after that read is
        # on the feed (a saga driven here), so nothing falls between the two.
        feed = self.engine.subscribe(saga_id)
        try:
            if not await self.store.exists(saga_id):
                raise NotFound(
                    f"saga {saga_id!r} not found", resource_type="saga", resource_name=saga_id
                )
            stored = await self.store.events(saga_id, after_seq=after)
            for i, ev in enumerate(stored):
                if ev.state in FINAL_STATES:
                    yield stored[: i + 1], None
                    return
            if stored:
                after = stored[-1].sequence
                yield stored, None
            async for x in self._follow(saga_id, after=after, feed=feed):
                yield x
        finally:
            if feed is not None:
                self.engine.unsubscribe(saga_id, feed)

    async def GetSagaEvents(
        self, request: saga_pb2.GetSagaEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.GetSagaEventsResponse:
        """See saga.proto."""
        _need_id(request.saga_id)
        size = _page_size(request.page_size, default=100, maximum=1000)
        raw = _untoken(request.page_token)
        if raw and not raw.isdigit():
            raise InvalidArgument(
                "bad page_token", field_violations={"page_token": "not a token this API returned"}
            )
        after = int(raw or 0)
        if not await self.store.exists(request.saga_id):
            raise NotFound(
                f"saga {request.saga_id!r} not found",
                resource_type="saga",
                resource_name=request.saga_id,
            )
        evs = await self.store.events(request.saga_id, after_seq=after, count=size)
        resp = saga_pb2.GetSagaEventsResponse(events=evs)
        last = evs[-1].sequence if evs else after
        if len(evs) == size:
            resp.next_page_token = _token(str(last))
        else:
            state = await self.store.r.hget(self.store.hkey(request.saga_id), "state")
            if state is None or state.decode() not in _FINAL_NAMES:
                resp.next_page_token = _token(str(last))  # still running: poll from here
        return resp

    # ---- definitions ---------------------------------------------------------------
    async def RegisterSagaDefinition(
        self,
        request: saga_pb2.RegisterSagaDefinitionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> saga_pb2.RegisterSagaDefinitionResponse:
        """See saga.proto."""
        compile_definition(request.definition, field_prefix="definition", require_name=True)
        stored, created = await self.store.register_definition(request.definition)
        return saga_pb2.RegisterSagaDefinitionResponse(definition=stored, created=created)

    async def GetSagaDefinition(
        self,
        request: saga_pb2.GetSagaDefinitionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> saga_pb2.GetSagaDefinitionResponse:
        """See saga.proto."""
        if not request.name:
            raise InvalidArgument("name is required", field_violations={"name": "required"})
        d = await self.store.get_definition(request.name, version=request.version)
        if d is None:
            raise NotFound(
                f"no saga definition {request.name!r}",
                resource_type="saga_definition",
                resource_name=request.name,
            )
        return saga_pb2.GetSagaDefinitionResponse(definition=d)

    async def ListSagaDefinitions(
        self,
        request: saga_pb2.ListSagaDefinitionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> saga_pb2.ListSagaDefinitionsResponse:
        """See saga.proto."""
        size = _page_size(request.page_size, default=50, maximum=500)
        after = _untoken(request.page_token)
        defs = await self.store.list_definitions(after=after, count=size + 1)
        resp = saga_pb2.ListSagaDefinitionsResponse(definitions=defs[:size])
        if len(defs) > size:
            resp.next_page_token = _token(defs[size - 1].name)
        return resp
