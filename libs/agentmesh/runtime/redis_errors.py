"""The one Redis error boundary: which Redis failures mean "Redis is down",
and the status a caller gets for them.

The runtime's handler wrapper (`agentmesh.runtime.interceptors`) applies it
to every RPC of every daemon, unary and streaming: a Redis-down error that
escapes a servicer answers UNAVAILABLE with `google.rpc.ErrorInfo` reason
REDIS_DOWN (domain `errors.DOMAIN`) and a `google.rpc.RetryInfo` of
`REDIS_RETRY_DELAY_S`, and logs one rate-limited WARNING without a
traceback. Servicers therefore let `redis.exceptions.RedisError` propagate
and catch it only where they must do something other than fail the call.
Code that maps outside an RPC handler (a routing decision made for a saga
step) raises `redis_unavailable(exc)`; background loops do not map, they log
with a `RedisDownLog` and try again.

"Down" means the failure is about reaching a Redis that can serve the
command, not about the command: the same call may succeed later with no
code or data fixed, so UNAVAILABLE (retry) is the honest answer.

- `ConnectionError` and its subclasses: refused or reset connections,
  `BusyLoadingError` (LOADING, the dataset is loading after a restart),
  `MaxConnectionsError`, Sentinel's `MasterNotFoundError` and
  `SlaveNotFoundError`, `AuthenticationError` / `AuthorizationError` (the
  health probe fails the same way);
- `TimeoutError`: socket timeouts (Redis paused, overloaded, partitioned);
- `InvalidResponse`: the peer does not speak RESP; redis-py drops the connection;
- `ReadOnlyError` (READONLY, a write reached a replica during a failover);
- `ClusterError`, with `ClusterDownError` (CLUSTERDOWN) and `MasterDownError`
  (MASTERDOWN); `TryAgainError` (TRYAGAIN, resharding);
  `SlotNotCoveredError` (a slot without a node during a cluster failover);
- `OutOfMemoryError` (OOM, writes refused until memory is freed);
- the error replies redis-py has no class for, by their code: MISCONF
  (the last snapshot failed, writes refused), NOREPLICAS
  (`min-replicas-to-write` not met), UNBLOCKED (a blocking read was cut off
  because the instance changed role).

Everything else is a bug, not an outage, and goes the wrapper's INTERNAL
path (logged at ERROR with its traceback): other `ResponseError` replies,
among them a script's own `redis.error_reply` (the lease fence's
``FENCED <key>``, the saga store's ``saga exists``: their callers turn those
into domain errors, and one that escapes is a missed case), WRONGTYPE,
NOSCRIPT escaping redis-py's reload, syntax errors; `NoPermissionError`
(NOPERM: PING works but the ACL user lacks a command, a deployment bug);
`DataError` (a bad argument); `WatchError` (an optimistic transaction lost a
race its caller should have retried); `LockError`; `PubSubError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.runtime.errors import Unavailable

_DOWN_TYPES: tuple[type[BaseException], ...] = ()
_RESPONSE_ERROR: type[BaseException] | None = None
try:
    from redis import exceptions as rx

    _DOWN_TYPES = (
        rx.ConnectionError,
        rx.TimeoutError,
        rx.InvalidResponse,
        rx.ReadOnlyError,
        rx.ClusterError,
        rx.TryAgainError,
        rx.SlotNotCoveredError,
        rx.OutOfMemoryError,
    )
    _RESPONSE_ERROR = rx.ResponseError
except ImportError:  # an agent without redis-py: no exception is a Redis one
    pass

#: RetryInfo delay a client gets with REDIS_DOWN, seconds: long enough for a
#: dropped connection to be re-established or a Sentinel failover to progress,
#: short enough that a blip costs a caller about one second.
REDIS_RETRY_DELAY_S = 1.0

#: A `RedisDownLog` writes at most one WARNING per this many seconds and
#: counts the failures in between, so an outage under load costs a log line
#: per interval, not one per RPC.
REDIS_DOWN_LOG_INTERVAL_S = 10.0


#: Error reply codes (the reply's first word) of "Redis is down" replies that
#: redis-py raises as a plain ResponseError.
_DOWN_REPLY_CODES = frozenset({"MISCONF", "NOREPLICAS", "UNBLOCKED"})


def is_redis_down(exc: BaseException) -> bool:
    """Whether `exc` means Redis cannot serve the command now (see the module
    docstring for the list); False for every other exception, Redis or not."""
    if isinstance(exc, _DOWN_TYPES):
        return True
    if _RESPONSE_ERROR is not None and type(exc) is _RESPONSE_ERROR:
        code, _, _ = str(exc).partition(" ")
        return code in _DOWN_REPLY_CODES
    return False


def redis_unavailable(exc: BaseException, *, action: str = "") -> Unavailable:
    """The status for a Redis-down error: UNAVAILABLE, ErrorInfo reason
    REDIS_DOWN (metadata `error`: the exception class), RetryInfo of
    `REDIS_RETRY_DELAY_S`.

    The message names the exception class but not its text, which carries
    Redis host names and ports that callers have no use for; the daemon's
    WARNING has them.

    Args:
        exc: the Redis error, as `is_redis_down` accepts it (not checked:
            a caller that maps has decided).
        action: what could not be done, e.g. "cannot read the registry state";
            empty for the generic sentence.

    Returns:
        The error to raise (`raise redis_unavailable(e) from e`).
    """
    kind = type(exc).__name__
    what = action or "Redis is unavailable"
    return Unavailable(
        f"{what} ({kind}); retry in {REDIS_RETRY_DELAY_S:g} s",
        reason=ErrorReason.ERROR_REASON_REDIS_DOWN,
        metadata={"error": kind},
        retry_after_s=REDIS_RETRY_DELAY_S,
    )


class RedisDownLog:
    """A rate-limited WARNING for Redis-down errors: the first one at once,
    then at most one per `interval_s`, carrying `suppressed`, the number of
    failures left out since the previous line. No traceback: the failure is
    the dependency's, and its text (class and message) is in the line.

    Safe to share between threads and tasks.

    Args:
        logger: where the line goes.
        msg: the line's message, e.g. "redis unavailable".
        interval_s: minimum seconds between two lines.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self, logger: logging.Logger, msg: str, *,
        interval_s: float = REDIS_DOWN_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._msg = msg
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next: float | None = None
        self._suppressed = 0

    def warn(self, exc: BaseException, **fields: Any) -> bool:
        """Log `exc` unless a line went out less than `interval_s` ago.

        Args:
            exc: the Redis error.
            fields: extra JSON fields, e.g. method="/pkg.Service/Method".

        Returns:
            True when a line was written.
        """
        now = self._clock()
        with self._lock:
            if self._next is not None and now < self._next:
                self._suppressed += 1
                return False
            self._next = now + self._interval_s
            suppressed, self._suppressed = self._suppressed, 0
        self._log.warning(
            self._msg,
            extra={
                **fields,
                "reason": "REDIS_DOWN",
                "error": f"{type(exc).__name__}: {exc}",
                "suppressed": suppressed,
            },
        )
        return True


__all__ = [
    "REDIS_DOWN_LOG_INTERVAL_S",
    "REDIS_RETRY_DELAY_S",
    "RedisDownLog",
    "is_redis_down",
    "redis_unavailable",
]
