"""The gateway's producer side of bus tracing (messaging semantic conventions,
https://opentelemetry.io/docs/specs/semconv/messaging/kafka/).

Each message written by Publish, Request or a batch publish gets a PRODUCER
span `publish <topic>` (child of the RPC's SERVER span) with
`messaging.system=kafka`, `messaging.destination.name`,
`messaging.kafka.message.key`, and, once written,
`messaging.destination.partition.id` and `messaging.kafka.offset`. Its W3C
context goes into the message's headers (`traceparent`, `tracestate`),
which the gateway carries both as Kafka headers (plain Kafka consumers can
continue the trace) and inside the stored Envelope, so a Subscribe client
receives it in `Envelope.headers` and starts its consumer span linked to it
(`agentmesh.runtime.tracing.consumer_span`). A message whose client already
set `traceparent` keeps it. PublishStream does the same per message of each
batch, every PRODUCER span a child of the stream's SERVER span.

Unsampled (ratio 0.01: 99 RPCs or streams in 100) no span is made: one
check per batch, then the RPC's unsampled `traceparent` goes into the
headers of the batch's messages, so consumers stay unsampled too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentmesh.bus.v1 import bus_pb2
from agentmesh.runtime import tracing


def inject_context(envs: Sequence[bus_pb2.Envelope]) -> None:
    """Put the current W3C context into the headers of each envelope that
    carries none (no-op while tracing is off)."""
    if not tracing.enabled():
        return
    unsampled = tracing.unsampled_metadata()
    if unsampled is not None:
        carrier = dict(unsampled)
    else:
        carrier = {}
        tracing.inject(carrier)
    if not carrier:
        return
    for env in envs:
        if "traceparent" not in env.headers:
            env.headers.update(carrier)


def producer_spans(envs: Sequence[bus_pb2.Envelope]) -> list[Any]:
    """Start one PRODUCER span per envelope and inject it into its headers;
    [] while tracing is off or the current span is unsampled. End them with
    `end_producer_spans`."""
    if not tracing.enabled() or tracing.current_unsampled():
        return []  # unsampled: `inject_context` passes the RPC's context on
    spans = []
    tracer = tracing.tracer()
    for env in envs:
        attrs: dict[str, Any] = {
            tracing.MESSAGING_SYSTEM: "kafka",
            tracing.MESSAGING_OPERATION_TYPE: "send",
            tracing.MESSAGING_DESTINATION_NAME: env.topic,
        }
        if env.key:
            attrs[tracing.MESSAGING_KAFKA_MESSAGE_KEY] = env.key
        if env.id:
            attrs[tracing.MESSAGING_MESSAGE_ID] = env.id
        span = tracer.start_span(f"publish {env.topic}", kind=SpanKind.PRODUCER, attributes=attrs)
        if "traceparent" not in env.headers:
            carrier: dict[str, str] = {}
            tracing.inject(carrier, trace.set_span_in_context(span))
            env.headers.update(carrier)
        spans.append(span)
    return spans


def end_producer_spans(spans: Sequence[Any], results: Sequence[Any]) -> None:
    """End the spans of `producer_spans` with the write outcomes (a Written
    with id and position, or the AgentMeshError of the message); no-op for []."""
    if not spans:
        return
    for span, res in zip(spans, results, strict=True):
        position = getattr(res, "position", None)
        if position is not None:
            span.set_attribute(tracing.MESSAGING_MESSAGE_ID, res.id)
            span.set_attribute(tracing.MESSAGING_DESTINATION_PARTITION_ID, str(position.partition))
            span.set_attribute(tracing.MESSAGING_KAFKA_OFFSET, position.offset)
        else:
            span.set_status(Status(StatusCode.ERROR, getattr(res, "message", str(res))))
        span.end()
