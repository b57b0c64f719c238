"""Tracing settings and log correlation (agentmesh.runtime.tracing); the spans
themselves are checked against a real Jaeger in tests/e2e/test_tracing_jaeger.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from agentmesh.runtime import tracing
from agentmesh.runtime.config import load_config
from agentmesh.runtime.logs import JsonFormatter


@pytest.fixture
def off() -> Iterator[None]:
    tracing.shutdown_tracing()
    yield
    tracing.shutdown_tracing()


def test_off_without_an_endpoint_and_when_the_sdk_is_disabled(off: None) -> None:
    assert not tracing.configure_tracing(service_name="t", environ={})
    assert not tracing.enabled()
    assert not tracing.configure_tracing(
        service_name="t", otlp_endpoint="127.0.0.1:9", environ={"OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing.enabled()
    assert tracing.current_ids() == ("", "")


def test_settings_flags_and_env() -> None:
    cfg = load_config(
        "router",
        ["--otlp-endpoint", "jaeger:4317"],
        environ={"AGENTMESH_TRACE_SAMPLE_RATIO": "0.25"},
    )
    assert (cfg.otlp_endpoint, cfg.trace_sample_ratio) == ("jaeger:4317", 0.25)
    with pytest.raises(SystemExit):
        load_config("router", [], environ={"AGENTMESH_TRACE_SAMPLE_RATIO": "1.5"})
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        tracing.configure_tracing(service_name="t", otlp_endpoint="x:1", sample_ratio=-0.1)


def test_log_lines_carry_the_current_span_ids(off: None) -> None:
    # Ratio 0: spans get real ids but none is recorded or exported.
    assert tracing.configure_tracing(
        service_name="t", otlp_endpoint="127.0.0.1:9", sample_ratio=0.0
    )
    fmt = JsonFormatter("test")
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "t"})
    with tracing.span("work") as span:
        doc = json.loads(fmt.format(record))
        sc = span.get_span_context()
    assert doc["trace_id"] == format(sc.trace_id, "032x")
    assert doc["span_id"] == format(sc.span_id, "016x")
    assert "span_id" not in json.loads(fmt.format(record))  # outside the span


def test_traceparent_round_trip_re_parents(off: None) -> None:
    assert tracing.configure_tracing(
        service_name="t", otlp_endpoint="127.0.0.1:9", sample_ratio=0.0
    )
    with tracing.span("saga") as saga:
        stored = tracing.traceparent_of(saga)
    assert stored.split("-")[1] == format(saga.get_span_context().trace_id, "032x")
    with tracing.span("step", parent_traceparent=stored) as step:
        assert step.get_span_context().trace_id == saga.get_span_context().trace_id
    assert tracing.context_from_traceparent("garbage") is None


def test_an_unsampled_stored_context_is_continued_without_spans(off: None) -> None:
    # Ratio 0: every root is unsampled; a sampled caller is still followed.
    assert tracing.configure_tracing(
        service_name="t", otlp_endpoint="127.0.0.1:9", sample_ratio=0.0
    )
    with tracing.span("saga") as saga:
        stored = tracing.traceparent_of(saga)
    assert not int(stored[-2:], 16) & 1 and not saga.is_recording()  # sampled flag clear
    ctx = tracing.unsampled_context(stored)
    assert ctx is not None and tracing.unsampled_context(stored) is ctx  # cached
    token = tracing.otel_context.attach(ctx)
    try:
        assert tracing.current_unsampled()
        md = tracing.unsampled_metadata()
        assert md == (("traceparent", stored),)  # the stored context, passed on as is
        with tracing.span("step", parent_traceparent=stored) as step:
            assert not step.is_recording()
            assert step.get_span_context().trace_id == saga.get_span_context().trace_id
    finally:
        tracing.otel_context.detach(token)
    assert not tracing.current_unsampled() and tracing.unsampled_metadata() is None
    trace_hex = stored.split("-")[1]
    sampled = f"00-{trace_hex}-00f067aa0ba902b7-01"
    for bad in (
        sampled,
        "",
        "garbage",
        stored.upper(),
        f"00-{'0' * 32}-00f067aa0ba902b7-00",
        stored + "-extra",
    ):
        assert tracing.unsampled_context(bad) is None, bad
    # An unsampled caller's server span: non-recording, same trace, new id.
    span, token = tracing.start_server_span("/p.S/M", "p.S", "M", {"traceparent": stored})
    assert not span.is_recording()
    assert format(span.get_span_context().trace_id, "032x") == trace_hex
    assert format(span.get_span_context().span_id, "016x") != stored.split("-")[2]
    tracing.end_server_span(span, token, tracing.grpc.StatusCode.OK)
    # A sampled caller is never taken for unsampled: the parent-based sampler keeps it.
    span, token = tracing.start_server_span("/p.S/M", "p.S", "M", {"traceparent": sampled})
    assert span.is_recording()
    tracing.otel_context.detach(token)  # not ended: nothing queued for the absent collector
    # Baggage goes through the propagator, not the shortcut.
    span, token = tracing.start_server_span(
        "/p.S/M", "p.S", "M", {"traceparent": stored, "baggage": "tenant=a"}
    )
    try:
        assert tracing.unsampled_metadata() is None
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        assert carrier["baggage"] == "tenant=a"
        assert carrier["traceparent"].split("-")[1] == trace_hex
    finally:
        tracing.end_server_span(span, token, tracing.grpc.StatusCode.OK)


def test_roots_are_sampled_at_the_ratio_not_its_square(off: None) -> None:
    # The fast path draws each root once; a root it keeps must not meet the
    # ratio sampler again (0.5 became 0.25 that way). 4,000 draws: the
    # share's standard deviation is 0.008, so 0.05 is six of them.
    assert tracing.configure_tracing(
        service_name="t", otlp_endpoint="127.0.0.1:9", sample_ratio=0.5
    )
    n, server, client = 4000, 0, 0
    for _ in range(n):
        span, token = tracing.start_server_span("/p.S/M", "p.S", "M", {})
        server += span.is_recording()
        tracing.otel_context.detach(token)  # never ended: nothing to export
        client += tracing.start_client_span("/p.S/M").is_recording()
    assert abs(server / n - 0.5) < 0.05 and abs(client / n - 0.5) < 0.05


def test_agent_call_attributes_name_the_swarm_partition_and_task() -> None:
    from agentmesh.agent.v1 import agent_pb2
    from agentmesh.runtime.agents import _span_attributes
    from agentmesh.runtime.routing.candidates import Candidate

    target = Candidate("a1", "127.0.0.1:1", "ACTIVE", 1.0)
    partition = agent_pb2.ExecuteRequest(
        action="map",
        idempotency_key="sw-1/p3",
        attempt=2,
        metadata={"swarm_id": "sw-1", "partition": "3"},
    )
    attrs = _span_attributes(target, partition, "")
    assert attrs[tracing.ATTR_SWARM_ID] == "sw-1" and attrs[tracing.ATTR_PARTITION] == 3
    assert attrs[tracing.ATTR_ATTEMPT] == 2 and attrs[tracing.ATTR_IDEMPOTENCY_KEY] == "sw-1/p3"
    evaluate = agent_pb2.EvaluateRequest(objective="sphere", swarm_id="sw-2")
    assert _span_attributes(target, evaluate, "")[tracing.ATTR_SWARM_ID] == "sw-2"
    task = agent_pb2.ExecuteRequest(action="work", metadata={"task_id": "t-9"})
    assert _span_attributes(target, task, "")[tracing.ATTR_TASK_ID] == "t-9"
