"""Log limits of runtime/logs.py: clipped fields and one line per key per interval."""

from __future__ import annotations

import json
import logging

from agentmesh.runtime.logs import MAX_FIELD_CHARS, JsonFormatter, RateLimitedLog, clip


def test_clip_keeps_short_text_and_marks_what_it_cut() -> None:
    assert clip("abc") == "abc"
    out = clip("x" * 1000, max_chars=10)
    assert out.startswith("x" * 10) and "990 more chars" in out


def test_formatter_clips_every_field() -> None:
    record = logging.makeLogRecord(
        {"msg": "m" * 5000, "levelname": "INFO", "name": "t", "reason": "r" * 10**6,
         "nested": {"k": "v" * 10**5}, "n": 3}
    )
    line = JsonFormatter("test").format(record)
    doc = json.loads(line)
    assert len(line) < 4 * MAX_FIELD_CHARS
    assert doc["n"] == 3 and "more chars" in doc["reason"] and "more chars" in doc["nested"]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_with_the_suppressed_count() -> None:
    logger = logging.getLogger("test.ratelimit")
    logger.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    clock = _Clock()
    lim = RateLimitedLog(logger, interval_s=1.0, clock=clock)
    try:
        assert lim.log(logging.INFO, ("m", "A"), "rejected")
        assert not lim.log(logging.INFO, ("m", "A"), "rejected")
        assert not lim.log(logging.INFO, ("m", "A"), "rejected")
        assert lim.log(logging.INFO, ("m", "B"), "rejected")  # another key
        clock.now = 1.5
        assert lim.log(logging.INFO, ("m", "A"), "rejected")
    finally:
        logger.removeHandler(handler)
    assert [r.__dict__["suppressed"] for r in records] == [0, 0, 2]
