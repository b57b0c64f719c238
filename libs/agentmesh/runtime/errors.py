"""One error hierarchy for the whole mesh, mapped to gRPC status codes with
`google.rpc` error details (AIP-193).

Servers raise these; the server runtime turns them into a rich status
(`grpc-status-details-bin`). Clients turn an `AioRpcError` back into the same
class with `from_rpc_error`, so code on both sides catches one hierarchy.

Why a call failed travels as `google.rpc.ErrorInfo` with a reason from the
contract's `agentmesh.common.v1.ErrorReason` enum, spelled without the
`ERROR_REASON_` prefix ("NO_HEALTHY_TARGET") and with domain `DOMAIN`. Raise
with `reason=ErrorReason.ERROR_REASON_X` (a plain string still works, for
reasons outside the enum); read it back with `error_reason(err)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar, TypeAlias

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1.common_pb2 import ErrorReason

#: Error domain used in google.rpc.ErrorInfo.
DOMAIN = "agentmesh.io"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REASON_PREFIX = "ERROR_REASON_"

#: A reason as raised: an `ErrorReason` value, or a free-form string (the
#: string of an enum value's name without its prefix means that value).
Reason: TypeAlias = "ErrorReason.ValueType | str"


def reason_name(reason: Reason) -> str:
    """The ErrorInfo.reason string of `reason`: the enum name without its prefix.

    `ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET` → "NO_HEALTHY_TARGET";
    UNSPECIFIED → ""; a string is returned as it is.

    Raises:
        ValueError: an int that is no ErrorReason value.
    """
    if isinstance(reason, str):
        return reason
    if reason == ErrorReason.ERROR_REASON_UNSPECIFIED:
        return ""
    return ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


def parse_reason(reason: str) -> ErrorReason.ValueType:
    """The ErrorReason of an ErrorInfo.reason string; UNSPECIFIED when unknown."""
    value = ErrorReason.DESCRIPTOR.values_by_name.get(_REASON_PREFIX + reason) if reason else None
    return ErrorReason.ERROR_REASON_UNSPECIFIED if value is None else value.number  # type: ignore[return-value]


def error_info(
    reason: Reason, *, metadata: Mapping[str, str] | None = None
) -> error_details_pb2.ErrorInfo:
    """A google.rpc.ErrorInfo with `reason` (see `reason_name`) in `DOMAIN`."""
    return error_details_pb2.ErrorInfo(
        reason=reason_name(reason), domain=DOMAIN, metadata=metadata or {}
    )


class AgentMeshError(Exception):
    """Base of every AgentMesh error.

    Attributes:
        code: the gRPC status code the error maps to.
        message: a sentence that says what went wrong and what to do.
        details: google.rpc detail messages (BadRequest, ErrorInfo, RetryInfo, ...).
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, details: Sequence[Message] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[Message] = list(details)

    def detail(self, kind: type[Message]) -> Message | None:
        """The first detail of type `kind`, or None."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def reason(self) -> str:
        """The ErrorInfo reason string, e.g. "NO_HEALTHY_TARGET", or ""."""
        info = self.detail(error_details_pb2.ErrorInfo)
        return info.reason if isinstance(info, error_details_pb2.ErrorInfo) else ""

    @property
    def error_reason(self) -> ErrorReason.ValueType:
        """The ErrorInfo reason as an ErrorReason (UNSPECIFIED when none or
        unknown, or when the ErrorInfo is of another domain)."""
        info = self.detail(error_details_pb2.ErrorInfo)
        if not isinstance(info, error_details_pb2.ErrorInfo) or info.domain != DOMAIN:
            return ErrorReason.ERROR_REASON_UNSPECIFIED
        return parse_reason(info.reason)

    def to_status_proto(self) -> status_pb2.Status:
        """The google.rpc.Status for this error."""
        packed = []
        for d in self.details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """Trailing metadata that carries the rich status."""
        return ((STATUS_DETAILS_KEY, self.to_status_proto().SerializeToString()),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(AgentMeshError):
    """INVALID_ARGUMENT with a google.rpc.BadRequest listing field violations.

    Args:
        message: summary.
        field_violations: (field path, description) pairs, or a mapping of them.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        field_violations: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        details: Sequence[Message] = (),
    ) -> None:
        pairs = list(field_violations.items()) if isinstance(field_violations, Mapping) else list(
            field_violations
        )
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in pairs
            ]
        )
        super().__init__(message, details=[bad, *details] if pairs else list(details))
        self.field_violations: list[tuple[str, str]] = pairs


class NotFound(AgentMeshError):
    """NOT_FOUND, with a google.rpc.ResourceInfo when the resource is named."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(
        self, message: str, *, resource_type: str = "", resource_name: str = "",
        details: Sequence[Message] = (),
    ) -> None:
        extra: list[Message] = []
        if resource_type or resource_name:
            extra.append(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type, resource_name=resource_name
                )
            )
        super().__init__(message, details=[*extra, *details])


class AlreadyExists(AgentMeshError):
    """ALREADY_EXISTS."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AgentMeshError):
    """FAILED_PRECONDITION: the resource is in the wrong state for the call.

    Args:
        violations: (type, subject, description) triples for a PreconditionFailure.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self, message: str, *, violations: Iterable[tuple[str, str, str]] = (),
        details: Sequence[Message] = (),
    ) -> None:
        v = list(violations)
        extra: list[Message] = []
        if v:
            extra.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=t, subject=s, description=d
                        )
                        for t, s, d in v
                    ]
                )
            )
        super().__init__(message, details=[*extra, *details])


class Aborted(AgentMeshError):
    """ABORTED: a conflict such as a lost lease or a stale fencing token."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(AgentMeshError):
    """OUT_OF_RANGE: a position past the valid range, e.g. a watch revision
    older than the retained history; the caller must restart from a fresh read."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(AgentMeshError):
    """RESOURCE_EXHAUSTED: a rate or size limit.

    Args:
        retry_after_s: when set, a google.rpc.RetryInfo tells the caller how
            long to wait before retrying, in seconds.
        quota_subject / quota_description: a google.rpc.QuotaFailure violation.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, quota_subject: str = "",
        quota_description: str = "", details: Sequence[Message] = (),
    ) -> None:
        extra: list[Message] = []
        if retry_after_s is not None:
            extra.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after_s)))
        if quota_subject:
            extra.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=quota_subject, description=quota_description
                        )
                    ]
                )
            )
        super().__init__(message, details=[*extra, *details])


class Unavailable(AgentMeshError):
    """UNAVAILABLE: a dependency is down, or a write's outcome is unknown.

    Args:
        reason: the ErrorInfo reason, an ErrorReason such as
            `ErrorReason.ERROR_REASON_REDIS_DOWN` (or its string "REDIS_DOWN").
        metadata: ErrorInfo metadata.
        retry_after_s: optional RetryInfo delay in seconds.
    """

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self, message: str, *, reason: Reason = "",
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None, details: Sequence[Message] = (),
    ) -> None:
        extra: list[Message] = []
        if reason_name(reason):
            extra.append(error_info(reason, metadata=metadata))
        if retry_after_s is not None:
            extra.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after_s)))
        super().__init__(message, details=[*extra, *details])


class DeadlineExceeded(AgentMeshError):
    """DEADLINE_EXCEEDED."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(AgentMeshError):
    """UNAUTHENTICATED: a missing or unknown bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AgentMeshError):
    """PERMISSION_DENIED: the caller may not act on this resource."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Cancelled(AgentMeshError):
    """CANCELLED."""

    code = grpc.StatusCode.CANCELLED


class Unimplemented(AgentMeshError):
    """UNIMPLEMENTED."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(AgentMeshError):
    """INTERNAL: a bug; the message carries no internals."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[AgentMeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Aborted, OutOfRange,
        ResourceExhausted, Unavailable, DeadlineExceeded, Unauthenticated,
        PermissionDenied, Cancelled, Unimplemented, Internal,
    )
}

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure, error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo, error_details_pb2.DebugInfo, error_details_pb2.Help,
    error_details_pb2.LocalizedMessage, error_details_pb2.RequestInfo,
)

def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def status_code_name(code: int) -> str:
    """google.rpc.Code number → name, e.g. 3 → "INVALID_ARGUMENT"."""
    return code_pb2.Code.Name(code)


def unpack_details(status: status_pb2.Status) -> list[Message]:
    """Unpack the known google.rpc detail types of a Status; unknown ones are skipped."""
    out: list[Message] = []
    for a in status.details:
        for kind in _DETAIL_TYPES:
            if a.Is(kind.DESCRIPTOR):
                msg = kind()
                a.Unpack(msg)
                out.append(msg)
                break
    return out


def error_reason(err: BaseException) -> ErrorReason.ValueType:
    """The ErrorReason of a failed call: of an AgentMeshError, or of a
    grpc.RpcError (sync or aio) from the ErrorInfo in its status details.

    Returns:
        ERROR_REASON_UNSPECIFIED when there is no ErrorInfo of `DOMAIN`, or
        its reason is not in the enum (a newer server, or a free-form string).
    """
    if isinstance(err, AgentMeshError):
        return err.error_reason
    if isinstance(err, grpc.RpcError):
        return from_rpc_error(err).error_reason
    return ErrorReason.ERROR_REASON_UNSPECIFIED


def from_rpc_error(err: grpc.RpcError) -> AgentMeshError:
    """Turn a client-side RpcError (sync or aio) into the matching AgentMeshError,
    keeping the google.rpc details from the trailing metadata."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    details: list[Message] = []
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            details = unpack_details(status_pb2.Status.FromString(value))
    cls = _BY_CODE.get(code, AgentMeshError)
    exc = AgentMeshError.__new__(cls)
    AgentMeshError.__init__(exc, message or code.name, details=details)
    if cls is AgentMeshError:
        exc.code = code  # type: ignore[misc]
    if isinstance(exc, InvalidArgument):
        bad = exc.detail(error_details_pb2.BadRequest)
        exc.field_violations = (
            [(v.field, v.description) for v in bad.field_violations]
            if isinstance(bad, error_details_pb2.BadRequest)
            else []
        )
    return exc
