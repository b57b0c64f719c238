"""Error hierarchy of the swarm engine.

Every error the engine raises on purpose derives from :class:`SwarmEngineError`,
and also from the builtin it specialises, so callers that only know the builtin
(``ValueError``, ``KeyError``, ``RuntimeError``) still catch it. The daemon maps
them onto gRPC status codes:

================================  =========================================
error                             gRPC status
================================  =========================================
:class:`InvalidConfigError`       ``INVALID_ARGUMENT`` (``BadRequest`` with
                                  ``field`` as the field violation)
:class:`InvalidStateError`        ``FAILED_PRECONDITION``
:class:`SnapshotError`            ``INVALID_ARGUMENT`` (or ``DATA_LOSS`` when
                                  the snapshot came from storage)
:class:`UnknownNameError`         ``INVALID_ARGUMENT`` / ``NOT_FOUND``
================================  =========================================
"""

from __future__ import annotations

__all__ = [
    "InvalidConfigError",
    "InvalidStateError",
    "SnapshotError",
    "SwarmEngineError",
    "UnknownNameError",
]


class SwarmEngineError(Exception):
    """Base class of every error raised on purpose by the swarm engine."""


class InvalidConfigError(SwarmEngineError, ValueError):
    """A configuration value or an argument is out of its documented range.

    Attributes:
        field: Name of the offending field or argument, so the daemon can fill
            a ``google.rpc.BadRequest.FieldViolation``.
        reason: Human-readable description of the violation.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidStateError(SwarmEngineError, RuntimeError):
    """The call is not allowed in the object's current state.

    Examples: ``tell()`` on a finished swarm, ``step()`` without a fitness
    callable, or an operation on a removed agent.
    """


class SnapshotError(SwarmEngineError, ValueError):
    """A snapshot is malformed, from another format version, or inconsistent."""


class UnknownNameError(SwarmEngineError, KeyError):
    """A name (benchmark function, agent id, lease id) is not known."""

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument; a plain message reads better.
        return str(self.args[0]) if self.args else ""
