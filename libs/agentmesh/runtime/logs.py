"""Structured logs carrying the daemon name, request id and trace id.

JSON lines by default, for log shippers; `text` renders the same fields as
one readable line for people tailing a pod (`AGENTMESH_LOG_FORMAT=text`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from agentmesh.runtime.context import request_id_var, trace_id_var

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339 UTC), level, logger, msg, daemon,
    request_id, trace_id, any `extra=` fields, and exc for exceptions."""

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
            "msg": record.getMessage(),
            "daemon": self._daemon,
        }
        if rid := request_id_var.get():
            doc["request_id"] = rid
        if tid := trace_id_var.get():
            doc["trace_id"] = tid
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
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
