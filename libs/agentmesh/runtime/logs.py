"""Structured logs carrying the daemon name, request id and trace id.

JSON lines by default, for log shippers; `text` renders the same fields as
one readable line for people tailing a pod (`AGENTMESH_LOG_FORMAT=text`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from agentmesh.runtime import tracing
from agentmesh.runtime.context import request_id_var, trace_id_var

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


#: Longest rendering of one field of a log line, in characters. Fields can
#: carry what clients sent (names, messages, CEL, payloads): whatever a
#: call site forgets to clip, a line stays this size.
MAX_FIELD_CHARS = 1000
#: Longest traceback kept, in characters (exception texts may quote input).
MAX_EXC_CHARS = 8000
_PLAIN = (int, float, bool, type(None))


def _bounded(value: Any) -> Any:
    """`value` as logged: numbers as they are, anything else at most
    MAX_FIELD_CHARS characters once rendered."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, str):
        return clip(value, max_chars=MAX_FIELD_CHARS)
    text = json.dumps(value, default=str)
    return value if len(text) <= MAX_FIELD_CHARS else clip(text, max_chars=MAX_FIELD_CHARS)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339 UTC), level, logger, msg, daemon,
    request_id, trace_id, span_id (while tracing is on), any `extra=` fields,
    and exc for exceptions."""

    def __init__(self, daemon: str) -> None:
        super().__init__()
        self._daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON line."""
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": clip(record.getMessage(), max_chars=MAX_FIELD_CHARS),
            "daemon": self._daemon,
        }
        if rid := request_id_var.get():
            doc["request_id"] = rid
        if tid := trace_id_var.get():
            doc["trace_id"] = tid
        if tracing.enabled():
            # The current span's ids: inside a saga step or a bus handler
            # they are the step's or the message's trace, not the RPC's.
            otid, sid = tracing.current_ids()
            if sid:
                doc["trace_id"], doc["span_id"] = otid, sid
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = _bounded(value)
        if record.exc_info:
            doc["exc"] = clip(self.formatException(record.exc_info), max_chars=MAX_EXC_CHARS)
        return json.dumps(doc, default=str)


class TextFormatter(JsonFormatter):
    """One readable line: `ts LEVEL daemon logger: msg key=value ...`, with the
    request id, trace id and `extra=` fields as key=value pairs, and the
    traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a text line (plus traceback lines)."""
        doc = json.loads(super().format(record))
        head = f"{doc.pop('ts')} {doc.pop('level'):<7} {doc.pop('daemon')} {doc.pop('logger')}: "
        line = head + str(doc.pop("msg"))
        exc = doc.pop("exc", None)
        if doc:
            line += " " + " ".join(f"{key}={value}" for key, value in doc.items())
        return f"{line}\n{exc}" if exc else line


#: Longest client-supplied text a log line carries, in characters.
MAX_CLIENT_TEXT_CHARS = 300


def clip(text: object, *, max_chars: int = MAX_CLIENT_TEXT_CHARS) -> str:
    """`text` as a string of at most `max_chars` characters plus a marker
    saying how much was cut: client input (names, messages, CEL) is echoed
    in logs only this far, so a hostile request cannot write megabytes."""
    s = str(text)
    if len(s) <= max_chars:
        return s
    return f"{s[:max_chars]}... ({len(s) - max_chars} more chars)"


class RateLimitedLog:
    """At most one line per key per `interval_s`; the next line that goes out
    for a key carries `suppressed`, the number of lines left out since.

    Keys are few and fixed by the caller (method and status code, never
    client input), so the table stays small. Safe across threads and tasks.

    Args:
        logger: where lines go.
        interval_s: minimum seconds between two lines of one key.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def log(self, level: int, key: Hashable, msg: str, **fields: Any) -> bool:
        """Write `msg` at `level` with `fields` unless `key` logged less than
        `interval_s` ago; returns True when the line was written."""
        now = self._clock()
        with self._lock:
            nxt = self._next.get(key)
            if nxt is not None and now < nxt:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._next[key] = now + self._interval_s
            suppressed = self._suppressed.pop(key, 0)
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, extra={**fields, "suppressed": suppressed})
        return True


#: Formatter per `log_format` value.
FORMATTERS: dict[str, type[JsonFormatter]] = {"json": JsonFormatter, "text": TextFormatter}


def configure_logging(daemon: str, level: str = "INFO", *, log_format: str = "json") -> None:
    """Route the root logger to stderr in `log_format`.

    Args:
        daemon: name put on every line.
        level: logging level name.
        log_format: `json` (one object per line) or `text` (one readable line).

    Raises:
        ValueError: when `level` is not a logging level name or `log_format` is unknown.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    formatter = FORMATTERS.get(log_format.lower())
    if formatter is None:
        raise ValueError(f"unknown log format {log_format!r}; use json or text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(daemon))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
