"""Server-side RPC wrapper: request and trace ids, bearer auth, deadline
capture, error mapping and gRPC metrics, applied to every method of a daemon.

Error mapping: an AgentMeshError becomes its rich status; a Redis-down error
(`agentmesh.runtime.redis_errors`, the mesh's one Redis error boundary)
becomes UNAVAILABLE with reason REDIS_DOWN and a RetryInfo, with one
rate-limited WARNING; anything else is INTERNAL, logged with its traceback.

It wraps each method handler rather than only intercepting the call, because
the contextvars it sets must live in the task that runs the handler. Daemons
wrap at registration (RuntimeServer), which costs nothing per call to find the
handler; RuntimeInterceptor does the same for a plain grpc.aio server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from agentmesh.runtime import metrics, tracing
from agentmesh.runtime.auth import PUBLIC_METHOD_PREFIXES, TokenAuthenticator
from agentmesh.runtime.context import (
    deadline_var,
    new_id,
    principal_var,
    request_id_var,
    trace_id_from_metadata,
    trace_id_var,
)
from agentmesh.runtime.errors import AgentMeshError, Unavailable
from agentmesh.runtime.logs import RateLimitedLog, clip
from agentmesh.runtime.redis_errors import RedisDownLog, is_redis_down, redis_unavailable
from agentmesh.runtime.request_checks import Rejected, UndecodableRequest, checked_deserializer

log = logging.getLogger("agentmesh.rpc")
# One per process: an outage fails every method at once, and one line per
# interval says so (the per-code counts are in grpc_server_handled_total).
_redis_down_log = RedisDownLog(log, "redis unavailable")
# Client errors: one line per method and code per second; every call is
# still counted in grpc_server_handled_total.
_client_log = RateLimitedLog(log, interval_s=1.0)


#: Methods that keep answering while the daemon drains: health tells the
#: truth (NOT_SERVING) and reflection is harmless.
_SERVED_WHILE_DRAINING = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class DrainState:
    """The drain flag of one server and the count of its calls in flight.

    Once `event` is set, the wrapper answers every new call (but health and
    reflection) with UNAVAILABLE at once, which clients retry on another
    replica. grpc's own shutdown cancels the calls it has received but not
    yet handed to the application, which clients see as CANCELLED and do
    not retry; so the daemon keeps serving, rejecting, until its calls in
    flight are done, and only then stops the grpc server (Daemon.stop).

    Args:
        event: set when the daemon drains.
    """

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """Count a call in."""
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        """Count a call out."""
        self.inflight -= 1
        if self.inflight <= 0:
            self._idle.set()

    async def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait until no call is in flight; False when `timeout_s` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


def _draining_error() -> Unavailable:
    return Unavailable(
        "the server is shutting down; retry on another replica", retry_after_s=0.0
    )


class _Method:
    """What the wrapper of one method computes once, at wrap time, rather than
    per call: the metric label values, the metric children (a `labels()`
    lookup takes a lock and builds a key tuple on every call) and whether
    the method needs a token at all."""

    __slots__ = (
        "authenticator", "handled", "handling", "method", "service", "short", "started", "traced",
    )

    def __init__(self, method: str, authenticator: TokenAuthenticator | None) -> None:
        self.method = method
        self.service, self.short = metrics.split_method(method)
        self.traced = tracing.traced_method(method)
        self.authenticator = (
            None if method.startswith(PUBLIC_METHOD_PREFIXES) else authenticator
        )
        # Children are made on first use, not here, so /metrics shows only
        # methods and codes that happened, exactly as per-call labels() did.
        self.started: Any = None
        self.handling: Any = None
        self.handled: dict[grpc.StatusCode, Any] = {}

    def count_started(self) -> None:
        child = self.started
        if child is None:
            child = self.started = metrics.GRPC_STARTED.labels(self.service, self.short)
        child.inc()

    def count_finished(self, code: grpc.StatusCode, elapsed_s: float) -> None:
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = metrics.GRPC_HANDLED.labels(
                self.service, self.short, code.name
            )
        child.inc()
        hist = self.handling
        if hist is None:
            hist = self.handling = metrics.GRPC_HANDLING.labels(self.service, self.short)
        hist.observe(elapsed_s)


class _Call:
    """Bookkeeping for one RPC: context setup, auth and the outcome."""

    __slots__ = ("m", "span", "start", "token")

    def __init__(self, m: _Method) -> None:
        self.m = m
        self.start = time.perf_counter()
        self.span: Any = None
        self.token: object = None

    @property
    def method(self) -> str:
        return self.m.method

    def enter(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        request_id_var.set(md.get("x-request-id") or new_id())
        m = self.m
        if tracing.enabled() and m.traced:
            # The SERVER span continues the caller's W3C context; the log
            # lines of the call carry its trace id (see logs.py).
            self.span, self.token = tracing.start_server_span(m.method, m.service, m.short, md)
            trace_id_var.set(format(self.span.get_span_context().trace_id, "032x"))
        else:
            trace_id_var.set(trace_id_from_metadata(md))
        remaining = context.time_remaining()
        deadline_var.set(None if remaining is None else time.monotonic() + remaining)
        m.count_started()
        if m.authenticator is not None:
            principal_var.set(m.authenticator.authenticate(md.get("authorization")))

    def finish(self, code: grpc.StatusCode, message: str = "") -> None:
        self.m.count_finished(code, time.perf_counter() - self.start)
        if self.span is not None:
            span, self.span = self.span, None
            tracing.end_server_span(span, self.token, code, message)


async def _fail(
    call: _Call, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException
) -> None:
    """Abort the RPC with the status for `exc`; re-raises what grpc raises."""
    if isinstance(exc, AgentMeshError):
        err = exc
        if err.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.error("rpc failed", extra={"method": call.method}, exc_info=exc)
        else:
            undecodable = isinstance(err, UndecodableRequest)
            _client_log.log(
                logging.WARNING if undecodable else logging.INFO,
                (call.method, err.code, undecodable),
                "undecodable request" if undecodable else "rpc rejected",
                method=call.method,
                code=err.code.name,
                reason=clip(err.message),
            )
    elif is_redis_down(exc):
        err = redis_unavailable(exc)
        _redis_down_log.warn(exc, method=call.method)
    elif isinstance(exc, NotImplementedError):
        err = AgentMeshError(f"{call.method} is not implemented yet")
        err.code = grpc.StatusCode.UNIMPLEMENTED  # type: ignore[misc]
    else:
        log.error("unhandled error in rpc", extra={"method": call.method}, exc_info=exc)
        err = AgentMeshError("internal error; see the daemon log for the request id")
        err.code = grpc.StatusCode.INTERNAL  # type: ignore[misc]
    call.finish(err.code, err.message)
    await context.abort(err.code, err.message, err.trailing_metadata())


#: How long a stream whose request side ended waits for grpc's cancel (seconds).
_CANCEL_SETTLE_S = 0.01

#: A cancel this close to the call's deadline (seconds) is counted DEADLINE_EXCEEDED.
_DEADLINE_SLACK_S = 0.25


def _ended_by_client(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code of a call the client ended: DEADLINE_EXCEEDED once its
    deadline has passed, CANCELLED otherwise (a cancel or a lost connection)."""
    remaining = context.time_remaining()
    # The client's own timer fires first and its cancel arrives a little
    # before the server's deadline: that cancel is the deadline's.
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _outcome(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code of a handler that returned: OK, unless the client went away
    first (a bidi handler's request stream just ends when it cancels, and
    one that returns after the deadline has not answered in time)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    try:
        cancelled = context.cancelled()
    except Exception:  # a context of another grpc flavour: no way to know
        cancelled = False
    return grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.OK


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio raises its own AbortError from context.abort(); let it through.
    return type(exc).__name__ == "AbortError"


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The messages of a request stream; a Rejected one (see request_checks)
    raises its InvalidArgument, which ends the call with that status."""
    async for item in requests:
        if type(item) is Rejected:
            raise item.error
        yield item


def _wrap_unary(
    fn: Callable[..., Any],
    method: str,
    auth: TokenAuthenticator | None,
    *,
    streaming_request: bool = False,
    state: DrainState | None = None,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    m = _Method(method, auth)
    gate = None if method.startswith(_SERVED_WHILE_DRAINING) else state
    # Decided once here instead of an inspect.isawaitable() per call; a plain
    # function that happens to return an awaitable still takes the slow path.
    is_coro = inspect.iscoroutinefunction(fn)

    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(m)
        if gate is not None:
            gate.enter()
        try:
            call.enter(context)
            if gate is not None and gate.event.is_set():
                raise _draining_error()
            if streaming_request:
                request = _checked_requests(request)
            elif type(request) is Rejected:
                raise request.error
            if is_coro:
                result = await fn(request, context)
            else:
                result = fn(request, context)
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            # grpc cancels the handler's task when the client cancels or its
            # deadline passes: the client's doing, counted as such.
            call.finish(_ended_by_client(context))
            raise
        except Exception as exc:
            if _is_abort(exc):
                call.finish(context.code() or grpc.StatusCode.UNKNOWN)
                raise
            await _fail(call, context, exc)
            return None
        finally:
            if gate is not None:
                gate.leave()
        call.finish(_outcome(context))
        return result

    return behavior


class StreamDrained(AgentMeshError):
    """UNAVAILABLE sent to server-streaming RPCs when the daemon drains; every
    such stream is resumable, so the client reconnects (to another replica)
    from the last item it saw."""

    code = grpc.StatusCode.UNAVAILABLE


class _DrainInterrupts:
    """The interrupts of every stream step pending on one drain event, fired
    by one waiter on that event (not one waiter task per stream: each was a
    task made and cancelled per call)."""

    def __init__(self, drain: asyncio.Event) -> None:
        self.steps: set[Callable[[], None]] = set()
        self.waiter = asyncio.ensure_future(drain.wait())
        self.waiter.add_done_callback(self._fire)

    def _fire(self, waiter: asyncio.Future[Any]) -> None:
        if waiter.cancelled():  # its loop is closing; a later stream makes a new one
            return
        for interrupt in list(self.steps):
            interrupt()


#: The interrupts per drain event (weakly: an event goes with its server).
_drain_interrupts: weakref.WeakKeyDictionary[asyncio.Event, _DrainInterrupts] = (
    weakref.WeakKeyDictionary()
)


def _interrupts_of(drain: asyncio.Event) -> _DrainInterrupts:
    got = _drain_interrupts.get(drain)
    if got is None or (got.waiter.done() and not drain.is_set()):
        got = _drain_interrupts[drain] = _DrainInterrupts(drain)
    return got


async def _until_drained(items: AsyncIterator[Any], drain: asyncio.Event) -> AsyncIterator[Any]:
    """Yield from `items` until `drain` is set, then raise StreamDrained.

    Server streams (watches) never end by themselves; without this a SIGTERM
    would wait out the whole grace period on them. The handler's generator
    runs in this task (no task per item: a stream of many small events paid
    for one task and one `asyncio.wait` each): one waiter on `drain`, shared
    by every stream of the server (_DrainInterrupts), interrupts a pending
    step through an `asyncio.timeout` that it reschedules to now, which
    cancels the step and raises TimeoutError here. A drain while an item is
    out (at the yield) is seen before the next step.
    """
    it = items.__aiter__()
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Timeout] = []  # the step in progress, if any

    def interrupt() -> None:
        if pending:
            pending[0].reschedule(loop.time())

    interrupts = _interrupts_of(drain)
    interrupts.steps.add(interrupt)
    try:
        while not drain.is_set():
            try:
                async with asyncio.timeout(None) as step:
                    pending.append(step)
                    try:
                        item = await it.__anext__()
                    finally:
                        pending.clear()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if step.expired() and drain.is_set():
                    break
                raise  # the handler's own timeout
            yield item
        raise StreamDrained("the server is draining; reconnect and resume the stream")
    finally:
        interrupts.steps.discard(interrupt)
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def _await_until_drained(work: Awaitable[Any], drain: asyncio.Event) -> None:
    """Await `work` unless `drain` is set first; then cancel it and raise StreamDrained."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(drain.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise StreamDrained("the server is draining; reconnect and resume the stream")
        task.result()
    finally:
        stop.cancel()
        # Drained, or the client cancelled us: the handler must not outlive the call.
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


def _wrap_stream(
    fn: Callable[..., Any],
    method: str,
    auth: TokenAuthenticator | None,
    drain: asyncio.Event | None = None,
    *,
    streaming_request: bool = False,
    state: DrainState | None = None,
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
    m = _Method(method, auth)
    gate = None if method.startswith(_SERVED_WHILE_DRAINING) else state

    async def behavior(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if gate is not None:
            gate.enter()
        call = _Call(m)
        try:
            call.enter(context)
            if gate is not None and gate.event.is_set():
                raise _draining_error()
            if streaming_request:
                request = _checked_requests(request)
            elif type(request) is Rejected:
                raise request.error
            result = fn(request, context)
            if hasattr(result, "__aiter__"):
                source = _until_drained(result, drain) if drain is not None else result
                async for item in source:
                    yield item
            elif inspect.isawaitable(result):
                # A handler that streams with context.write() is a coroutine.
                await (_await_until_drained(result, drain) if drain is not None else result)
            else:
                for item in result:
                    yield item
            if streaming_request:
                # A client's cancel also just ends the request stream, and
                # grpc, polling on its own thread, cancels this task about a
                # millisecond later: wait that long so such a call is counted
                # CANCELLED, not OK. Once per stream, after its last message.
                await asyncio.sleep(_CANCEL_SETTLE_S)
        except (asyncio.CancelledError, GeneratorExit):
            # The client cancelled or its deadline passed: grpc cancels the
            # task (at an await) or closes this generator (at a yield).
            call.finish(_ended_by_client(context))
            raise
        except Exception as exc:
            if _is_abort(exc):
                call.finish(context.code() or grpc.StatusCode.UNKNOWN)
                raise
            await _fail(call, context, exc)
            return
        finally:
            if gate is not None:
                gate.leave()
        call.finish(_outcome(context))

    return behavior


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Applies the wrapper above to every handler of the server.

    Args:
        authenticator: bearer-token authenticator; None turns auth off.
        drain: set when the daemon drains; server-streaming RPCs then end
            with UNAVAILABLE so clients resume elsewhere. Bidirectional
            streams keep the grace period, since they may carry acks.
    """

    def __init__(
        self, authenticator: TokenAuthenticator | None, drain: asyncio.Event | None = None
    ) -> None:
        self._auth = authenticator
        self._drain = drain
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Return the wrapped handler for the method, cached per method name."""
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = _wrap_handler(handler, method, self._auth, self._drain)
        self._cache[method] = wrapped
        return wrapped


def _wrap_handler(
    h: grpc.RpcMethodHandler,
    method: str,
    auth: TokenAuthenticator | None,
    drain: asyncio.Event | None = None,
    state: DrainState | None = None,
) -> grpc.RpcMethodHandler:
    kw: dict[str, Any] = {
        # Decoding errors and contract checks become INVALID_ARGUMENT inside
        # the wrapper instead of grpc's own UNKNOWN (see request_checks).
        "request_deserializer": checked_deserializer(h.request_deserializer),
        "response_serializer": h.response_serializer,
    }
    if h.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(h.unary_unary, method, auth, state=state), **kw
        )
    if h.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(h.stream_unary, method, auth, streaming_request=True, state=state), **kw
        )
    if h.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(h.unary_stream, method, auth, drain, state=state), **kw
        )
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream(h.stream_stream, method, auth, streaming_request=True, state=state), **kw
    )


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose handlers come out wrapped, cached per known
    method (as RuntimeInterceptor caches them)."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        auth: TokenAuthenticator | None,
        drain: asyncio.Event | None,
        state: DrainState | None = None,
    ) -> None:
        self._inner = inner
        self._auth = auth
        self._drain = drain
        self._state = state
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The wrapped handler for the method, or None when the inner one has none."""
        method = handler_call_details.method
        wrapped = self._cache.get(method)
        if wrapped is not None:
            return wrapped
        handler = self._inner.service(handler_call_details)
        if handler is None:
            # Not cached: method names come from callers, so caching misses
            # would let a client grow this dict without bound.
            return None
        wrapped = self._cache[method] = _wrap_handler(
            handler, method, self._auth, self._drain, self._state
        )
        return wrapped


class RuntimeServer(grpc.aio.Server):
    """A grpc.aio server that applies the runtime wrapper (see
    RuntimeInterceptor) to every handler when it is registered.

    Same behaviour as `grpc.aio.server(interceptors=[RuntimeInterceptor(...)])`,
    cheaper per RPC: with any server interceptor grpc.aio runs the
    interceptor chain (a coroutine, a partial and a HandlerCallDetails) to
    find the handler of every call; wrapped at registration, the lookup
    stays grpc's plain dict lookup.

    Args:
        authenticator: bearer-token authenticator; None turns auth off.
        drain: set when the daemon drains (see RuntimeInterceptor).
        options: channel arguments of the underlying grpc.aio server.
    """

    def __init__(
        self,
        authenticator: TokenAuthenticator | None,
        drain: asyncio.Event | None = None,
        *,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._auth = authenticator
        self._drain = drain
        #: Drain flag and calls in flight (see DrainState); None without `drain`.
        self.drain_state = DrainState(drain) if drain is not None else None
        self._server = grpc.aio.server(options=list(options))

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]
    ) -> None:
        """Register generic handlers; their method handlers are wrapped on first use."""
        self._server.add_generic_rpc_handlers(
            [
                _WrappedGeneric(h, self._auth, self._drain, self.drain_state)
                for h in generic_rpc_handlers
            ]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Register pre-registered method handlers, wrapped now."""
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: _wrap_handler(
                    h, f"/{service_name}/{name}", self._auth, self._drain, self.drain_state
                )
                for name, h in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        """See grpc.aio.Server.add_insecure_port."""
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        """See grpc.aio.Server.add_secure_port."""
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        """See grpc.aio.Server.start."""
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        """See grpc.aio.Server.stop."""
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """See grpc.aio.Server.wait_for_termination."""
        return await self._server.wait_for_termination(timeout)
