"""The one retry classification of the mesh: may this failed call be sent again?

Every caller in the mesh (the client SDK, the agent SDK's registrar, the
runtime's agent client) asks `is_retryable`; nobody keeps a list of codes or
method names of its own. A method's retry safety comes from the contract:
`option idempotency_level` on each RPC, read from the generated descriptors
by `idempotency_of`, plus the `(agentmesh.common.v1.idempotency_key_field)`
option for methods that become IDEMPOTENT when the caller sets a dedupe key
(Execute with `idempotency_key`, Publish with `message.id`, ...).

    level = idempotency_of("/agentmesh.registry.v1.RegistryService/GetAgent")
    is_retryable(code=grpc.StatusCode.DEADLINE_EXCEEDED,
                 reason=ErrorReason.ERROR_REASON_UNSPECIFIED, idempotency=level)  # True

`is_retryable` answers for one more attempt of the same request with the same
idempotency key, after a backoff. It does not budget attempts or time: the
caller stops at its deadline and its attempt limit.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from agentmesh.common.v1 import options_pb2
from agentmesh.runtime.errors import ErrorReason, error_reason

_Options = descriptor_pb2.MethodOptions


class IdempotencyLevel(enum.IntEnum):
    """`google.protobuf.MethodOptions.IdempotencyLevel`, as a Python enum.

    Values are those of descriptor.proto, so `IdempotencyLevel(options.idempotency_level)`
    converts.
    """

    #: Not marked, or the call may take effect twice when repeated.
    IDEMPOTENCY_UNKNOWN = _Options.IDEMPOTENCY_UNKNOWN
    #: A read: no effect at all (HTTP GET semantics).
    NO_SIDE_EFFECTS = _Options.NO_SIDE_EFFECTS
    #: Repeating the call leaves the same state as one call (HTTP PUT/DELETE semantics).
    IDEMPOTENT = _Options.IDEMPOTENT


_SAFE_TO_REPEAT = frozenset({IdempotencyLevel.NO_SIDE_EFFECTS, IdempotencyLevel.IDEMPOTENT})

#: Reasons that say the call took no effect, whatever the method: nothing was
#: sent on (no target, an open breaker, a full local producer queue), or the
#: agent refused before its handler ran (its idempotency store is down).
_NOT_APPLIED = frozenset({
    ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET,
    ErrorReason.ERROR_REASON_CIRCUIT_OPEN,
    ErrorReason.ERROR_REASON_KAFKA_QUEUE_FULL,
    ErrorReason.ERROR_REASON_IDEMPOTENCY_STORE_DOWN,
    ErrorReason.ERROR_REASON_RATE_LIMITED,
})

#: Reasons that no repetition can fix, or where one would be harmful.
_NEVER = frozenset({
    # The agent compensated this key: the Execute must never take effect.
    ErrorReason.ERROR_REASON_COMPENSATED,
    # The server already retried; retrying here multiplies the attempts
    # (retry amplification; Google SRE book, "Handling Overload").
    ErrorReason.ERROR_REASON_ATTEMPTS_EXHAUSTED,
    # The same payload breaks the same rule again.
    ErrorReason.ERROR_REASON_SAFETY_VIOLATION,
    ErrorReason.ERROR_REASON_MESSAGE_TOO_LARGE,
})


def is_retryable(
    *,
    code: grpc.StatusCode,
    reason: ErrorReason.ValueType = ErrorReason.ERROR_REASON_UNSPECIFIED,
    idempotency: IdempotencyLevel,
    reached: bool = True,
) -> bool:
    """Whether a call that failed with `code` and `reason` may be sent again.

    The table, first matching row wins ("safe" = IDEMPOTENT or NO_SIDE_EFFECTS):

    ===================  ======================================  ==============  =======
    code                 reason                                  UNKNOWN method  safe
    ===================  ======================================  ==============  =======
    any                  COMPENSATED, ATTEMPTS_EXHAUSTED,        no              no
                         SAFETY_VIOLATION, MESSAGE_TOO_LARGE
    any                  EXECUTE_IN_FLIGHT                       yes             yes
    UNAVAILABLE          any, with `reached=False`               yes             yes
    UNAVAILABLE          NO_HEALTHY_TARGET, CIRCUIT_OPEN,        yes             yes
                         KAFKA_QUEUE_FULL, IDEMPOTENCY_STORE_
                         DOWN, RATE_LIMITED (nothing applied)
    UNAVAILABLE          any other (UNKNOWN_OUTCOME, REDIS_      no              yes
                         DOWN, none: the request may have
                         taken effect)
    DEADLINE_EXCEEDED    any                                     no              yes
    RESOURCE_EXHAUSTED   any other                               yes             yes
    ABORTED              any other                               no              no
    anything else        (OK, INVALID_ARGUMENT, NOT_FOUND,       no              no
                         FAILED_PRECONDITION, INTERNAL, ...)
    ===================  ======================================  ==============  =======

    Sources: gRPC retry design A6 (retry only codes the service owner lists as
    safe for the method; a request that never reached the server is always
    safe, "transparent retry");
    https://github.com/grpc/proposal/blob/master/A6-client-retries.md.
    google.rpc.Code guidance (UNAVAILABLE "most likely a transient condition,
    ... corrected by retrying with a backoff", but "it is not always safe to
    retry non-idempotent operations"; ABORTED is retried "at a higher level",
    i.e. a new read-modify-write, not the same request; DEADLINE_EXCEEDED may
    have completed); https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto.
    AIP-194 (retry UNAVAILABLE; do not retry INTERNAL, UNKNOWN or
    DEADLINE_EXCEEDED blindly; RESOURCE_EXHAUSTED with backoff);
    https://google.aip.dev/194.

    Args:
        code: the status code of the failure.
        reason: the ErrorInfo reason (`agentmesh.runtime.errors.error_reason`).
        idempotency: the method's level for this call (`idempotency_of`).
        reached: False when the caller knows the request never left it (the
            channel was not connected: connection refused, no route), so an
            UNAVAILABLE is safe to repeat for any method (A6 transparent retry).

    Returns:
        True when one more attempt after a backoff is safe and may succeed.
    """
    if reason in _NEVER:
        return False
    if reason == ErrorReason.ERROR_REASON_EXECUTE_IN_FLIGHT:
        # The compensation runs on in the agent; a retry with the same key joins it.
        return True
    safe = idempotency in _SAFE_TO_REPEAT
    if code == grpc.StatusCode.UNAVAILABLE:
        return safe or not reached or reason in _NOT_APPLIED
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return safe
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED


def is_retryable_error(
    err: BaseException, *, idempotency: IdempotencyLevel, reached: bool = True
) -> bool:
    """`is_retryable` for a failed call's exception: a grpc.RpcError (sync or
    aio) or an `AgentMeshError`; any other exception is not retryable."""
    code = getattr(err, "code", None)
    status = code() if callable(code) else code
    if not isinstance(status, grpc.StatusCode):
        return False
    return is_retryable(
        code=status, reason=error_reason(err), idempotency=idempotency, reached=reached
    )


@dataclass(frozen=True)
class _MethodRetry:
    level: IdempotencyLevel
    key_path: tuple[str, ...]


_BY_METHOD: dict[str, _MethodRetry] = {}


def _proto_name(method_full_name: str) -> str:
    """"/pkg.Service/Method" (gRPC path) or "pkg.Service.Method" → "pkg.Service.Method"."""
    return method_full_name.lstrip("/").replace("/", ".")


def method_descriptor(method_full_name: str) -> MethodDescriptor:
    """The MethodDescriptor of a method, by gRPC path or protobuf full name.

    The generated modules of the method's package (`agentmesh.<area>.v1`) are
    imported when the method is not in the default pool yet.

    Raises:
        KeyError: no such method in the contracts.
    """
    name = _proto_name(method_full_name)
    pool = descriptor_pool.Default()
    try:
        return pool.FindMethodByName(name)
    except KeyError:
        package = name.rsplit(".", 2)[0]
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            raise KeyError(f"unknown method {method_full_name!r}") from None
        for mod in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            if mod.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{mod.name}")
        try:
            return pool.FindMethodByName(name)
        except KeyError:
            raise KeyError(f"unknown method {method_full_name!r}") from None


def _method_retry(method_full_name: str) -> _MethodRetry:
    found = _BY_METHOD.get(method_full_name)
    if found is None:
        options = method_descriptor(method_full_name).GetOptions()
        key_field = options.Extensions[options_pb2.idempotency_key_field]
        found = _MethodRetry(
            IdempotencyLevel(options.idempotency_level),
            tuple(key_field.split(".")) if key_field else (),
        )
        _BY_METHOD[method_full_name] = found
    return found


def _field(msg: Any, path: tuple[str, ...]) -> Any:
    value = msg
    for part in path:
        value = getattr(value, part)
    return value


def idempotency_of(method_full_name: str, *, request: Message | None = None) -> IdempotencyLevel:
    """A method's retry safety, as its contract declares it.

    Args:
        method_full_name: "/agentmesh.agent.v1.AgentService/Execute" (the
            gRPC path) or "agentmesh.agent.v1.AgentService.Execute".
        request: the call's request. For a method with
            `(agentmesh.common.v1.idempotency_key_field)`, a request whose
            field is set makes the call IDEMPOTENT.

    Returns:
        The method's `idempotency_level`; IDEMPOTENT for a keyed request as above.

    Raises:
        KeyError: no such method in the contracts.
    """
    found = _method_retry(method_full_name)
    if request is not None and found.key_path and _field(request, found.key_path):
        return IdempotencyLevel.IDEMPOTENT
    return found.level


def key_field_of(method_full_name: str) -> str:
    """The request field that makes a call of the method IDEMPOTENT, "" when none.

    Raises:
        KeyError: no such method in the contracts.
    """
    return ".".join(_method_retry(method_full_name).key_path)


__all__ = [
    "IdempotencyLevel",
    "idempotency_of",
    "is_retryable",
    "is_retryable_error",
    "key_field_of",
    "method_descriptor",
]
