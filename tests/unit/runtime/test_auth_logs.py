from __future__ import annotations

import json
import logging

import pytest

from agentmesh.runtime.auth import TokenAuthenticator
from agentmesh.runtime.context import request_id_var, trace_id_from_metadata, trace_id_var
from agentmesh.runtime.errors import Unauthenticated
from agentmesh.runtime.logs import JsonFormatter


def test_tokens_file_identities_and_roles(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"t1": "agent-a", "t2": {"identity": "ops", "roles": ["admin"]}}))
    auth = TokenAuthenticator.from_file(f)
    assert auth.authenticate("Bearer t1").identity == "agent-a"
    ops = auth.authenticate("bearer t2")
    assert ops.identity == "ops" and ops.is_admin
    for bad in (None, "", "Basic t1", "Bearer nope", "Bearer"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)


def test_tokens_file_shape_is_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"t1": 42}))
    with pytest.raises(ValueError, match="identity"):
        TokenAuthenticator.from_file(f)


def test_json_log_line_carries_ids() -> None:
    request_id_var.set("req-1")
    trace_id_var.set("a" * 32)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.agent_id = "agent-a"
    doc = json.loads(JsonFormatter("registry").format(record))
    assert doc["msg"] == "hello you"
    assert doc["request_id"] == "req-1" and doc["trace_id"] == "a" * 32
    assert doc["daemon"] == "registry" and doc["agent_id"] == "agent-a"


def test_traceparent_is_parsed() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id_from_metadata({"traceparent": tp}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_from_metadata({"x-trace-id": "abc"}) == "abc"
    assert len(trace_id_from_metadata({})) == 32


def test_text_log_line_is_readable_and_keeps_the_fields() -> None:
    from agentmesh.runtime.logs import TextFormatter

    rec = logging.LogRecord("svc", logging.WARNING, __file__, 1, "slow %s", ("call",), None)
    rec.elapsed_ms = 12
    token = request_id_var.set("req-9")
    trace = trace_id_var.set("t-1")
    try:
        line = TextFormatter("router").format(rec)
    finally:
        request_id_var.reset(token)
        trace_id_var.reset(trace)
    assert line.endswith(
        "WARNING router svc: slow call request_id=req-9 trace_id=t-1 elapsed_ms=12"
    )
    assert line[:4].isdigit() and "\n" not in line


def test_configure_logging_picks_the_format_and_rejects_unknown_ones() -> None:
    from agentmesh.runtime.logs import TextFormatter, configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("bus", "INFO", log_format="TEXT")
        assert type(root.handlers[0].formatter) is TextFormatter
        configure_logging("bus", "INFO")
        assert type(root.handlers[0].formatter) is JsonFormatter
        with pytest.raises(ValueError, match="json or text"):
            configure_logging("bus", "INFO", log_format="xml")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
