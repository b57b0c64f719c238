from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from agentmesh.runtime.errors import (
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)


class FakeRpcError(grpc.RpcError):
    """What a client sees: code, details and trailing metadata."""

    def __init__(self, err: Exception, code: grpc.StatusCode, trailing: tuple) -> None:
        self._code, self._details, self._trailing = code, str(err), trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


def roundtrip(err):  # type: ignore[no-untyped-def]
    return from_rpc_error(FakeRpcError(err, err.code, err.trailing_metadata()))


def test_invalid_argument_keeps_field_violations() -> None:
    err = InvalidArgument("bad agent", field_violations={"agent_id": "must match agent-[a-z0-9-]+"})
    back = roundtrip(err)
    assert isinstance(back, InvalidArgument)
    assert back.field_violations == [("agent_id", "must match agent-[a-z0-9-]+")]
    assert back.message == "bad agent"


def test_retry_info_and_error_info_survive() -> None:
    back = roundtrip(ResourceExhausted("slow down", retry_after_s=1.5))
    info = back.detail(error_details_pb2.RetryInfo)
    assert isinstance(info, error_details_pb2.RetryInfo)
    assert info.retry_delay.ToNanoseconds() == 1_500_000_000
    un = roundtrip(Unavailable("lost", reason="UNKNOWN_OUTCOME"))
    assert isinstance(un, Unavailable) and un.reason == "UNKNOWN_OUTCOME"


def test_status_codes_map_to_classes() -> None:
    assert NotFound("x").code == grpc.StatusCode.NOT_FOUND
    assert roundtrip(NotFound("x", resource_type="agent", resource_name="agent-a")).code == (
        grpc.StatusCode.NOT_FOUND
    )
    plain = from_rpc_error(FakeRpcError(Exception("boom"), grpc.StatusCode.DATA_LOSS, ()))
    assert plain.code == grpc.StatusCode.DATA_LOSS


def test_out_of_range_round_trips_to_its_class() -> None:
    back = roundtrip(OutOfRange("revision 3 is older than the retained history (oldest 10)"))
    assert isinstance(back, OutOfRange)
    assert back.code == grpc.StatusCode.OUT_OF_RANGE


def test_every_error_reason_travels_as_its_name_without_the_prefix() -> None:
    from agentmesh.runtime.errors import DOMAIN, ErrorReason, error_reason, parse_reason

    for value in ErrorReason.DESCRIPTOR.values:
        if value.number == ErrorReason.ERROR_REASON_UNSPECIFIED:
            continue
        back = roundtrip(Unavailable("down", reason=value.number))  # type: ignore[arg-type]
        info = back.detail(error_details_pb2.ErrorInfo)
        assert isinstance(info, error_details_pb2.ErrorInfo)
        assert (info.reason, info.domain) == (value.name.removeprefix("ERROR_REASON_"), DOMAIN)
        assert error_reason(back) == value.number
        assert parse_reason(info.reason) == value.number


def test_unknown_or_foreign_reasons_read_as_unspecified() -> None:
    from agentmesh.runtime.errors import ErrorReason, error_info, error_reason

    assert Unavailable("x", reason="TEST").reason == "TEST"
    assert error_reason(Unavailable("x", reason="TEST")) == ErrorReason.ERROR_REASON_UNSPECIFIED
    assert Unavailable("x", reason=ErrorReason.ERROR_REASON_UNSPECIFIED).details == []
    foreign = error_info("REDIS_DOWN")
    foreign.domain = "googleapis.com"
    err = Unavailable("x", details=[foreign])
    assert err.reason == "REDIS_DOWN"
    assert err.error_reason == ErrorReason.ERROR_REASON_UNSPECIFIED
    assert error_reason(ValueError("no status")) == ErrorReason.ERROR_REASON_UNSPECIFIED
