"""The MCP tools' schemas are the contract's messages in the proto3 JSON
mapping: json_format's output of real messages validates against them, they
reject what json_format would, and errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import duration_pb2, json_format
from google.rpc import error_details_pb2
from jsonschema import Draft202012Validator

from agentmesh.mcp.schema import message_schema
from agentmesh.mcp.server import http_token, tool_definition
from agentmesh.mcp.tools import TOOLS, TOOLS_BY_NAME, error_outcome, parse_arguments
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.errors import InvalidArgument, Unavailable
from agentmesh.saga.v1 import saga_pb2


def validator(msg_class: type) -> Draft202012Validator:
    schema = message_schema(msg_class.DESCRIPTOR)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("spec", TOOLS, ids=lambda s: s.name)
def test_every_tool_has_valid_object_schemas(spec) -> None:
    tool = tool_definition(spec)
    for schema in (tool.input_schema, tool.output_schema):
        Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
    # Every request field is a property; nothing hand-written beside the extras.
    fields = {f.name for f in spec.request_class.DESCRIPTOR.fields}
    assert set(tool.input_schema["properties"]) == fields | set(spec.extras)


def recursive_saga_request() -> saga_pb2.StartSagaRequest:
    req = saga_pb2.StartSagaRequest(idempotency_key="k-1")
    d = req.definition
    d.name = "nested"
    d.timeout.FromSeconds(90)
    d.compensation_strategy = saga_pb2.CompensationStrategy.Value(
        saga_pb2.CompensationStrategy.keys()[1])
    inner = d.pipeline.parallel.stages.add()  # a Stage inside a StageGroup inside a Stage
    inner.step.name = "a"
    inner.step.action = "act"
    inner.step.input_mapping["x"] = "input.x"
    inner.step.timeout.FromMilliseconds(1500)
    req.input.update({"x": 1.5, "tags": ["a", None], "deep": {"ok": True}})
    return req


def test_a_recursive_message_round_trips_through_its_schema() -> None:
    req = recursive_saga_request()
    schema = message_schema(saga_pb2.StartSagaRequest.DESCRIPTOR)
    assert "agentmesh.saga.v1.Stage" in schema["$defs"]  # recursion goes through $defs
    doc = json_format.MessageToDict(req, preserving_proto_field_name=True)
    assert list(validator(saga_pb2.StartSagaRequest).iter_errors(doc)) == []
    assert json_format.ParseDict(doc, saga_pb2.StartSagaRequest()) == req


def test_response_with_int64_timestamps_and_durations_validates() -> None:
    ev = saga_pb2.SagaEvent(saga_id="sg_1", sequence=2**40, attempt=3, fencing_token=7,
                            type=saga_pb2.SAGA_EVENT_TYPE_STEP_STARTED, item_index=0)
    ev.create_time.GetCurrentTime()
    ev.backoff.CopyFrom(duration_pb2.Duration(seconds=1, nanos=500_000_000))
    ev.provenance.hash = "ab" * 32
    resp = saga_pb2.GetSagaEventsResponse(events=[ev], next_page_token="t")
    doc = json_format.MessageToDict(resp, preserving_proto_field_name=True)
    assert doc["events"][0]["sequence"] == str(2**40)  # proto3 JSON: a decimal string
    assert list(validator(saga_pb2.GetSagaEventsResponse).iter_errors(doc)) == []
    bad = {"events": [{**doc["events"][0], "sequence": "-3", "type": "NOPE"}]}
    paths = sorted(".".join(map(str, e.absolute_path))
                   for e in validator(saga_pb2.GetSagaEventsResponse).iter_errors(bad))
    assert paths == ["events.0.sequence", "events.0.type"]


@pytest.mark.parametrize(("args", "field"), [
    ({"action": 5}, "action"),
    ({"action": "a", "colour": "red"}, "colour"),
    ({"message": {"target_ids": "agent-a"}}, "message.target_ids"),
    ({"message": {"metadata": {"k": 1}}}, "message.metadata.k"),
    ({"retry_policy": {"max_attempts": -1}}, "retry_policy.max_attempts"),
    ({"retry_policy": {"attempt_timeout": "5 seconds"}}, "retry_policy.attempt_timeout"),
    ({"message": {"payload": {"struct_value": {}, "bytes_value": "AA=="}}},
     "message.payload.bytes_value"),
    ({"message": {"payload": {"bytes_value": "A"}}}, "message.payload.bytes_value"),
])
def test_bad_arguments_name_the_field(args, field) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_arguments(TOOLS_BY_NAME["invoke"], args)
    assert field in [f for f, _ in e.value.field_violations]


def test_good_arguments_parse_to_the_request_and_extras_stay_out() -> None:
    req, extras = parse_arguments(TOOLS_BY_NAME["invoke"], {
        "action": "calc", "strategy": "STRATEGY_LEAST_LOADED", "idempotency_key": "k",
        "message": {"selector": {"capabilities": ["c"]}, "payload": {"struct_value": {"x": 1}}},
        "retry_policy": {"max_attempts": 2, "initial_backoff": "0.05s"},
    })
    assert isinstance(req, router_pb2.InvokeRequest)
    assert req.strategy == router_pb2.STRATEGY_LEAST_LOADED
    assert req.retry_policy.initial_backoff.ToMilliseconds() == 50
    assert extras == {}
    req, extras = parse_arguments(TOOLS_BY_NAME["run_saga"],
                                  {"definition_name": "d", "wait_timeout_s": 5})
    assert req == saga_pb2.StartSagaRequest(definition_name="d")
    assert extras == {"wait_timeout_s": 5}


def test_mesh_errors_keep_status_reason_violations_and_retry_delay() -> None:
    out = error_outcome(InvalidArgument("bad", field_violations=[("action", "required")]))
    assert out.is_error
    assert out.data["error"]["code"] == "INVALID_ARGUMENT"
    assert out.data["error"]["field_violations"] == [
        {"field": "action", "description": "required"}]
    assert out.text.startswith("INVALID_ARGUMENT: bad [action: required]")
    err = Unavailable("down", reason="REDIS_DOWN", retry_after_s=2.5)
    out = error_outcome(err)
    assert out.data["error"]["reason"] == "REDIS_DOWN"
    types = {d["@type"] for d in out.data["error"]["details"]}
    assert f"type.googleapis.com/{error_details_pb2.RetryInfo.DESCRIPTOR.full_name}" in types
    assert "retry after 2.500s" in out.text
    assert out.text.startswith("UNAVAILABLE: down (reason REDIS_DOWN)")


class _Req:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_http_token_is_the_bearer_header_only() -> None:
    assert http_token(_Req({"authorization": "Bearer abc "})) == "abc"
    assert http_token(_Req({"authorization": "Basic abc"})) == ""
    assert http_token(_Req({})) == ""
    assert http_token(None) == ""


ROOT = Path(__file__).resolve().parents[3]


def proto_comment(proto: str, declaration: str) -> str:
    """The `//` comment lines right above `declaration` in a .proto source file."""
    lines = (ROOT / "protos" / proto).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == declaration)
    out: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        out.insert(0, line.strip().removeprefix("//").strip())
    return "\n".join(out)


def test_descriptions_are_the_contracts_comments() -> None:
    schema = message_schema(router_pb2.InvokeRequest.DESCRIPTOR)
    router = "agentmesh/router/v1/router.proto"
    assert schema["properties"]["action"]["description"] == proto_comment(
        router, "string action = 3;")
    assert schema["description"] == proto_comment(router, "message InvokeRequest {")
    # An enum field lists its values with their comments' first lines.
    strategy = schema["properties"]["strategy"]["description"]
    first = proto_comment(router, "STRATEGY_ROUND_ROBIN = 1;").splitlines()[0]
    assert f"STRATEGY_ROUND_ROBIN: {first}" in strategy.splitlines()
    # A well-known type keeps its format hint after the field's comment.
    backoff = schema["properties"]["retry_policy"]["properties"]["initial_backoff"]
    assert backoff["description"].startswith(proto_comment(
        router, "google.protobuf.Duration initial_backoff = 2;"))
    assert backoff["description"].endswith('e.g. "1.5s".')
    assert "description" not in message_schema(
        router_pb2.InvokeRequest.DESCRIPTOR, describe=False)["properties"]["action"]


def test_messages_used_by_several_fields_are_defined_once() -> None:
    schema = message_schema(saga_pb2.StartSagaRequest.DESCRIPTOR)
    defs = schema["$defs"]
    assert {"agentmesh.saga.v1.Step", "agentmesh.common.v1.AgentSelector"} <= set(defs)
    steps = schema["properties"]["definition"]["properties"]["steps"]
    assert steps["items"] == {"$ref": "#/$defs/agentmesh.saga.v1.Step"}
    assert defs["agentmesh.saga.v1.Step"]["properties"]["selector"]["$ref"] == \
        "#/$defs/agentmesh.common.v1.AgentSelector"
