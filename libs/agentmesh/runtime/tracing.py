"""OpenTelemetry tracing for the mesh: one home for the tracer provider, the
W3C context propagation through gRPC metadata and Kafka headers, and the
span helpers the runtime, the daemons and the agent SDK use.

Off by default. It turns on when an OTLP endpoint is configured
(`--otlp-endpoint` / `AGENTMESH_OTLP_ENDPOINT`, or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and
`OTEL_SDK_DISABLED` is not true. While off, `enabled()` is False and every
caller skips its span code behind that one check, so tracing off costs one
module attribute read per RPC (perf/tracing measures it).

What the spans follow (OpenTelemetry semantic conventions, gRPC and
messaging; https://opentelemetry.io/docs/specs/semconv/rpc/grpc/ and
.../messaging/kafka/):

* a SERVER span per RPC, named `<package.Service>/<Method>`, with
  `rpc.system=grpc`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`;
  status ERROR only for the server-side error codes of the convention
  (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
  DATA_LOSS); health and reflection calls get none;
* a CLIENT span per outgoing call, same names and attributes, status ERROR
  for every code but OK;
* the mesh's own attributes under `agentmesh.` (ATTR_* below).

Context travels as W3C `traceparent` / `tracestate` and `baggage` through
the globally configured propagators (`OTEL_PROPAGATORS`, default
tracecontext,baggage): gRPC metadata keys are lower-case already, as W3C
asks. The sampler is parent-based: a sampled caller's decision is kept, a
root is sampled at `trace_sample_ratio` (`OTEL_TRACES_SAMPLER` and
`OTEL_TRACES_SAMPLER_ARG` override it when set).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from random import getrandbits, random
from typing import Any

import grpc
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

log = logging.getLogger("agentmesh.tracing")

#: Instrumentation scope name of every span the mesh makes.
TRACER_NAME = "agentmesh"

# ---- attribute names ---------------------------------------------------------------
#: Semantic-convention attributes (rpc.*, messaging.*).
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
SERVER_ADDRESS = "server.address"
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_KAFKA_MESSAGE_KEY = "messaging.kafka.message.key"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_KAFKA_OFFSET = "messaging.kafka.offset"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
#: The mesh's own attributes.
ATTR_SAGA_ID = "agentmesh.saga.id"
ATTR_SAGA_NAME = "agentmesh.saga.name"
ATTR_STEP = "agentmesh.saga.step"
ATTR_ATTEMPT = "agentmesh.attempt"
ATTR_IDEMPOTENCY_KEY = "agentmesh.idempotency_key"
ATTR_STRATEGY = "agentmesh.routing.strategy"
ATTR_AGENT_ID = "agentmesh.agent.id"
ATTR_ACTION = "agentmesh.action"
ATTR_SWARM_ID = "agentmesh.swarm.id"
ATTR_PARTITION = "agentmesh.partition"
ATTR_TASK_ID = "agentmesh.task.id"
ATTR_TASK_TYPE = "agentmesh.task.type"
ATTR_ERROR_CODE = "agentmesh.error.code"

#: Codes a server span reports as an error (semantic conventions, gRPC).
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
#: Methods that get no span: probes and tooling, not the mesh's work.
_UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

#: The tracer while tracing is on; None while off (checked by `enabled`).
_tracer: trace.Tracer | None = None
_provider: Any = None
#: The root sample ratio when the mesh's own sampler is in use (None: an
#: OTEL_TRACES_SAMPLER from the environment decides every span).
_root_ratio: float | None = None

#: True while a caller's own CLIENT span is current (AgentClient.call), so
#: the channel under it injects that span instead of opening a second one.
_client_span_open: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "agentmesh_client_span_open", default=False
)


def enabled() -> bool:
    """True when spans are made and exported (see `configure_tracing`)."""
    return _tracer is not None


def tracer() -> trace.Tracer:
    """The mesh's tracer: the configured one, or the API's no-op tracer when off."""
    return _tracer if _tracer is not None else trace.get_tracer(TRACER_NAME)


def _env_endpoint(env: Mapping[str, str]) -> str:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )


def configure_tracing(
    *,
    service_name: str,
    otlp_endpoint: str = "",
    sample_ratio: float = 1.0,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Install the process's tracer provider with an OTLP/gRPC exporter.

    Once per process: a second call (several SDK agents in one process)
    keeps the first provider and returns True.

    Args:
        service_name: `service.name` of the resource, e.g. `agentmesh-saga`;
            `OTEL_SERVICE_NAME` (and `OTEL_RESOURCE_ATTRIBUTES`) win.
        otlp_endpoint: the collector, `host:port` (plaintext) or a URL
            (`http://` plaintext, `https://` TLS); "" falls back to
            AGENTMESH_OTLP_ENDPOINT, then the standard OTEL_EXPORTER_OTLP_*
            variables, and without any tracing stays off.
        sample_ratio: share of root traces sampled, 0..1 (parent-based).
        environ: environment to read; None reads os.environ.

    Returns:
        True when tracing is on.

    Raises:
        ValueError: `sample_ratio` outside 0..1.
    """
    global _tracer, _provider, _root_ratio
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"trace sample ratio {sample_ratio} must be within 0..1")
    if _tracer is not None:
        return True
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    # AGENTMESH_OTLP_ENDPOINT also reaches SDK agents, whose own variables
    # are AGENTMESH_AGENT_*: one variable traces a whole stack.
    endpoint = otlp_endpoint or env.get("AGENTMESH_OTLP_ENDPOINT", "") or _env_endpoint(env)
    if not endpoint:
        return False
    # Imported here: a process with tracing off never loads the SDK.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else ParentBased(_root_sampler(sample_ratio))
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    # from os.environ and lets them win over the attributes given here.
    resource = Resource.create({SERVICE_NAME: service_name})
    provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        )
    )
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    _root_ratio = None if sampler is None else sample_ratio
    # Also the global provider, for libraries that trace through the API.
    with contextlib.suppress(Exception):
        trace.set_tracer_provider(provider)
    log.info(
        "tracing on",
        extra={
            "otlp_endpoint": endpoint,
            "service_name": service_name,
            "sample_ratio": sample_ratio,
        },
    )
    return True


#: True while a root span whose sampling the mesh already decided (sampled)
#: is made: the root sampler then keeps it instead of deciding a second time.
_root_decided: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "agentmesh_root_decided", default=False
)


def _root_sampler(ratio: float) -> Any:
    """The root sampler of the mesh's ParentBased sampler: TraceIdRatioBased
    at `ratio`, except for a root the mesh's own fast path already drew as
    sampled (`_root_dropped` said no), which it keeps. Without that, a root
    passing the fast path's draw (probability `ratio`) met the ratio sampler
    again and was kept at `ratio` squared."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    class MeshRootSampler(Sampler):
        def __init__(self) -> None:
            self._ratio = TraceIdRatioBased(ratio)

        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> Any:
            if _root_decided.get():
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
            return self._ratio.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"AgentMeshRoot{{{ratio}}}"

    return MeshRootSampler()


def _root_dropped() -> bool:
    """For a root span about to be made under the mesh's sampler: True when
    it is drawn unsampled (probability 1 - ratio), so the caller makes a
    non-recording span itself; False when it is sampled, and the caller
    then makes it with `_root_decided` set (see `_root_sampler`)."""
    return _root_ratio is not None and random() >= _root_ratio


def _new_unsampled_root() -> Span:
    """A non-recording root span with fresh ids and flags 00 (callees drop too)."""
    return NonRecordingSpan(
        SpanContext(getrandbits(128) or 1, getrandbits(64) or 1, is_remote=False)
    )


def shutdown_tracing(*, timeout_ms: int = 5000) -> None:
    """Export the spans still queued and stop the exporter (daemon shutdown).

    Daemons end with os._exit, which runs no atexit hook: without this the
    last batch (up to OTEL_BSP_SCHEDULE_DELAY, 5 s by default) is lost.
    """
    global _tracer, _provider, _root_ratio
    provider, _provider, _tracer, _root_ratio = _provider, None, None, None
    if provider is None:
        return
    try:
        provider.force_flush(timeout_ms)
        provider.shutdown()
    except Exception:  # a collector that went away must not fail the shutdown
        log.warning("could not flush the last spans", exc_info=True)


# ---- ids for logs ------------------------------------------------------------------
def current_ids() -> tuple[str, str]:
    """(trace_id, span_id) of the current span as lower-case hex, or ("", "")."""
    if _tracer is None:
        return "", ""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return "", ""
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


# ---- propagation ---------------------------------------------------------------------
def inject(carrier: MutableMapping[str, str], ctx: otel_context.Context | None = None) -> None:
    """Write `traceparent`, `tracestate` and `baggage` of `ctx` (default: the
    current context) into `carrier` (gRPC metadata dict, Kafka headers dict)."""
    propagate.inject(carrier, context=ctx)


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context a `traceparent` / `baggage` carrier holds (empty when none)."""
    return propagate.extract(carrier)


def traceparent_of(span: Span) -> str:
    """The W3C `traceparent` of `span` ("" for an invalid span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str) -> otel_context.Context | None:
    """A context whose parent is the span `traceparent` names, or None when
    it is empty or malformed (a span made with it then starts a new trace)."""
    if not traceparent:
        return None
    ctx = propagate.extract({"traceparent": traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def link_from_traceparent(traceparent: str) -> Link | None:
    """A span Link to the span `traceparent` names, or None when malformed."""
    ctx = context_from_traceparent(traceparent)
    if ctx is None:
        return None
    return Link(trace.get_current_span(ctx).get_span_context())


def _unsampled_child(parent: Span) -> Span | None:
    """The non-recording child the parent-based sampler would make under an
    unsampled `parent`, made without the sampler call; None when `parent`
    is sampled or invalid, or an OTEL_TRACES_SAMPLER decides instead."""
    if _root_ratio is None:
        return None
    sc = parent.get_span_context()
    if not sc.is_valid or sc.trace_flags.sampled:
        return None
    return NonRecordingSpan(SpanContext(sc.trace_id, getrandbits(64) or 1, is_remote=False))


#: A version-00 W3C traceparent (https://www.w3.org/TR/trace-context/#traceparent-header).
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


#: traceparent -> its unsampled context (contexts are immutable), bounded:
#: cleared when full, which costs one parse per saga in flight.
_unsampled_contexts: dict[str, otel_context.Context] = {}
_UNSAMPLED_CACHE_SIZE = 4096


def _parse_unsampled(traceparent: str) -> SpanContext | None:
    """The remote SpanContext `traceparent` names when it is a well-formed
    version-00 value with the sampled flag clear and the mesh's own
    (parent-based) sampler decides, so every span under it would be
    non-recording; parsed without the propagator. None otherwise: the caller
    takes the full path."""
    if _root_ratio is None:
        return None
    m = _TRACEPARENT_00.fullmatch(traceparent)
    if m is None:
        return None
    flags = int(m[3], 16)
    trace_id, span_id = int(m[1], 16), int(m[2], 16)
    if flags & 1 or not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def unsampled_context(traceparent: str) -> otel_context.Context | None:
    """A context whose current span is the unsampled one `traceparent` names
    (a saga's stored context), or None when it is sampled, malformed or empty,
    or an OTEL_TRACES_SAMPLER decides.

    The cheap path of an unsampled trace (99 sagas in 100 at ratio 0.01):
    attach the returned context and make no spans under it; calls made there
    propagate it through `unsampled_metadata`, so their callees stay
    unsampled, and log lines carry its trace id.
    """
    if _root_ratio is None or not traceparent:
        return None
    ctx = _unsampled_contexts.get(traceparent)
    if ctx is not None:  # a saga's attempts all read the same stored context
        return ctx
    sc = _parse_unsampled(traceparent)
    if sc is None:
        return None
    ctx = trace.set_span_in_context(NonRecordingSpan(sc), otel_context.Context())
    if len(_unsampled_contexts) >= _UNSAMPLED_CACHE_SIZE:
        _unsampled_contexts.clear()
    _unsampled_contexts[traceparent] = ctx
    return ctx


def current_unsampled() -> bool:
    """True when the current span is valid and unsampled and the mesh's own
    sampler decides: every span made under it would be non-recording, so a
    caller may skip making one (and building its attributes)."""
    if _root_ratio is None:
        return False
    sc = trace.get_current_span().get_span_context()
    return sc.is_valid and not sc.trace_flags.sampled


def _traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def unsampled_metadata() -> tuple[tuple[str, str], ...] | None:
    """The propagation metadata of a call made under an unsampled current
    span (see `current_unsampled`): its `traceparent`, formatted without the
    propagator and without a span of its own (none would be recorded).
    None when the current span is sampled or invalid, or carries a
    tracestate or baggage (then the propagator writes them)."""
    if _root_ratio is None:
        return None
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid or sc.trace_flags.sampled or sc.trace_state or baggage.get_all():
        return None
    return (("traceparent", _traceparent(sc)),)


def current_traceparent() -> str:
    """The W3C `traceparent` of the current span ("" when there is none)."""
    sc = trace.get_current_span().get_span_context()
    return _traceparent(sc) if sc.is_valid else ""


# ---- server spans ----------------------------------------------------------------------
def traced_method(method: str) -> bool:
    """True when calls of `method` (`/pkg.Service/Method`) get spans."""
    return not method.startswith(_UNTRACED_PREFIXES)


def start_server_span(
    method: str, service: str, short: str, metadata: Mapping[str, str]
) -> tuple[Span, object]:
    """Start the SERVER span of one RPC, child of the caller's context in
    `metadata`, and make it current.

    Returns:
        (span, token); pass both to `end_server_span` in the same task.
    """
    assert _tracer is not None
    tp = metadata.get("traceparent")
    if tp is None:
        pass
    elif (
        "baggage" not in metadata
        and "tracestate" not in metadata
        and (sc := _parse_unsampled(tp)) is not None
    ):
        # An unsampled caller: the non-recording child the parent-based
        # sampler would make, without the propagator and the sampler call.
        span: Span = NonRecordingSpan(
            SpanContext(
                sc.trace_id, getrandbits(64) or 1, is_remote=False, trace_flags=sc.trace_flags
            )
        )
        return span, otel_context.attach(trace.set_span_in_context(span))
    if tp is None and _root_dropped():
        # A root the sampler would drop: the non-recording span it would make,
        # without the sampler call, attribute dict and span plumbing; at
        # ratio 0.01 that is 99 RPCs in 100.
        span = _new_unsampled_root()
        return span, otel_context.attach(trace.set_span_in_context(span))
    parent = propagate.extract(metadata)
    decided = _root_decided.set(tp is None and _root_ratio is not None)
    try:
        span = _tracer.start_span(
            f"{service}/{short}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: short},
        )
    finally:
        _root_decided.reset(decided)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_server_span(span: Span, token: object, code: grpc.StatusCode, message: str = "") -> None:
    """Record the RPC's status on its SERVER span, end it and detach it."""
    if span.is_recording():
        span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
        if code in _SERVER_ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, message or code.name))
        span.end()
    with contextlib.suppress(Exception):  # a token from another context: nothing to undo
        otel_context.detach(token)  # type: ignore[arg-type]


# ---- client spans ----------------------------------------------------------------------
def _split(method: str) -> tuple[str, str]:
    service, _, short = method.lstrip("/").partition("/")
    return service, short


def client_span_open() -> bool:
    """True while a caller-made CLIENT span is current (see `client_span`)."""
    return _client_span_open.get()


def start_client_span(method: str, attributes: Mapping[str, Any] | None = None) -> Span:
    """Start (not make current) the CLIENT span of an outgoing call of
    `method` (`/pkg.Service/Method`), child of the current context."""
    assert _tracer is not None
    current = trace.get_current_span()
    if (child := _unsampled_child(current)) is not None:
        return child
    root = not current.get_span_context().is_valid
    if root and _root_dropped():
        return _new_unsampled_root()
    service, short = _split(method)
    attrs: dict[str, Any] = {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: short}
    if attributes:
        attrs.update(attributes)
    decided = _root_decided.set(root and _root_ratio is not None)
    try:
        return _tracer.start_span(f"{service}/{short}", kind=SpanKind.CLIENT, attributes=attrs)
    finally:
        _root_decided.reset(decided)


def end_client_span(span: Span, code: grpc.StatusCode, message: str = "") -> None:
    """Record an outgoing call's status on its CLIENT span and end it."""
    if not span.is_recording():
        return
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, message or code.name))
    span.end()


def outgoing_metadata(span: Span | None) -> list[tuple[str, str]]:
    """The propagation metadata for a call under `span` (None: the current context)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=None if span is None else trace.set_span_in_context(span))
    return list(carrier.items())


def end_when_done(span: Span, call: Any) -> None:
    """End `span` with the status of the grpc.aio `call` once it finishes
    (nothing to do for a non-recording span: no callback, no task)."""
    if not span.is_recording():
        return

    async def finish(done: Any) -> None:
        try:
            code = await done.code()
            details = await done.details()
        except Exception:  # cancelled before a status: counted as such
            code, details = grpc.StatusCode.CANCELLED, ""
        end_client_span(span, code, details or "")

    def on_done(done: Any) -> None:
        try:
            asyncio.get_running_loop().create_task(finish(done))
        except RuntimeError:  # no loop any more (process exit): end without a status
            span.end()

    try:
        call.add_done_callback(on_done)
    except Exception:  # not a grpc.aio call object: end now rather than never
        span.end()


@contextlib.contextmanager
def client_span(method: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A CLIENT span for one call the caller makes itself (AgentClient.call),
    current inside the block, so the propagating channel injects it and opens
    no second span. The caller sets the status with `end_client_span`
    semantics through `set_call_status`; an exception marks it ERROR.
    """
    span = start_client_span(method, attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    flag = _client_span_open.set(True)
    try:
        yield span
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        _client_span_open.reset(flag)
        with contextlib.suppress(Exception):
            otel_context.detach(token)
        span.end()


def set_call_status(span: Span, code: grpc.StatusCode, message: str = "") -> None:
    """Record a call's gRPC status on a span from `client_span` (ended by the block)."""
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, message or code.name))


# ---- internal and messaging spans --------------------------------------------------------
@contextlib.contextmanager
def span(
    name: str,
    *,
    parent_traceparent: str = "",
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: list[Link] | None = None,
) -> Iterator[Span]:
    """A span current inside the block; ERROR with the exception's text when
    the block raises.

    Args:
        name: the span name.
        parent_traceparent: the parent as a W3C traceparent (a saga's stored
            context); "" makes it a child of the current context.
        kind: the span kind.
        attributes: initial attributes.
        links: span links (a consumer's link to its producer).

    Yields:
        The span; a non-recording one while tracing is off.
    """
    if _tracer is None:
        yield trace.INVALID_SPAN
        return
    if parent_traceparent and (ctx := unsampled_context(parent_traceparent)) is not None:
        token = otel_context.attach(ctx)  # unsampled: no span, no propagator
        try:
            yield trace.get_current_span(ctx)
        finally:
            otel_context.detach(token)
        return
    parent = context_from_traceparent(parent_traceparent) if parent_traceparent else None
    current = trace.get_current_span(parent)
    root = not current.get_span_context().is_valid
    child = _unsampled_child(current)
    if child is None and root and _root_dropped():
        child = _new_unsampled_root()
    if child is not None:  # unsampled trace: no sampler call, nothing recorded
        token = otel_context.attach(trace.set_span_in_context(child))
        try:
            yield child
        finally:
            otel_context.detach(token)
        return
    decided = _root_decided.set(root and _root_ratio is not None)
    try:
        made = _tracer.start_span(
            name,
            context=parent,
            kind=kind,
            attributes=dict(attributes) if attributes else None,
            links=links,
        )
    finally:
        _root_decided.reset(decided)
    with trace.use_span(
        made, end_on_exit=True, record_exception=False, set_status_on_exception=True
    ) as s:
        yield s


def remote_span(traceparent: str) -> Span:
    """A non-recording span standing for the one `traceparent` names, or
    INVALID_SPAN; for contexts read back from storage."""
    ctx = context_from_traceparent(traceparent)
    if ctx is None:
        return trace.INVALID_SPAN
    sc = trace.get_current_span(ctx).get_span_context()
    return NonRecordingSpan(
        SpanContext(sc.trace_id, sc.span_id, is_remote=True, trace_flags=TraceFlags(sc.trace_flags))
    )


@contextlib.contextmanager
def consumer_span(
    *,
    topic: str,
    headers: Mapping[str, str],
    message_id: str = "",
    key: str = "",
    partition: int | None = None,
    offset: int | None = None,
    group: str = "",
) -> Iterator[Span]:
    """The CONSUMER (`process <topic>`) span of one bus message, linked to the
    producer's context in its `traceparent` header (messaging conventions:
    a consumer links, it does not re-parent, since one producer's message
    may reach many consumers). A handler run inside the block is its child.

    Args:
        topic: the message's topic.
        headers: its application headers (Envelope.headers), which carry
            the `traceparent` the gateway injected on publish.
        message_id / key / partition / offset / group: messaging attributes.
    """
    if _tracer is None:
        yield trace.INVALID_SPAN
        return
    attrs: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_DESTINATION_NAME: topic,
    }
    if message_id:
        attrs[MESSAGING_MESSAGE_ID] = message_id
    if key:
        attrs[MESSAGING_KAFKA_MESSAGE_KEY] = key
    if partition is not None:
        attrs[MESSAGING_DESTINATION_PARTITION_ID] = str(partition)
    if offset is not None:
        attrs[MESSAGING_KAFKA_OFFSET] = offset
    if group:
        attrs[MESSAGING_CONSUMER_GROUP_NAME] = group
    link = link_from_traceparent(headers.get("traceparent", ""))
    with span(
        f"process {topic}",
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        links=[link] if link is not None else None,
    ) as s:
        yield s
