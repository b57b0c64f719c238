"""Which Redis failures are "Redis is down", the status they map to, and the
rate-limited log line. Error replies go through redis-py's own reply parser,
so each case is the exception a real reply raises."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import error_details_pb2
from redis import exceptions as rx
from redis._parsers.base import BaseParser
from redis.sentinel import MasterNotFoundError

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.runtime.errors import DOMAIN
from agentmesh.runtime.redis_errors import (
    REDIS_RETRY_DELAY_S,
    RedisDownLog,
    is_redis_down,
    redis_unavailable,
)

DOWN_REPLIES = [
    "READONLY You can't write against a read only replica.",
    "LOADING Redis is loading the dataset in memory",
    "CLUSTERDOWN The cluster is down",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
    "NOREPLICAS Not enough good replicas to write.",
    "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
]

BUG_REPLIES = [
    # a commit script's own refusals: their callers turn them into domain errors
    "FENCED am:saga:{sg_1}:lease",
    "saga exists",
    "NOSCRIPT No matching script. Please use EVAL.",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "NOPERM User agentmesh has no permissions to run the 'xadd' command",
    "ERR unknown command 'FOO'",
    "EXECABORT Transaction discarded because of previous errors.",
    "ERR Error running script (call to f_1): user_script:1: boom",
]


@pytest.mark.parametrize("reply", DOWN_REPLIES)
def test_outage_replies_are_redis_down(reply: str) -> None:
    assert is_redis_down(BaseParser.parse_error(reply))


@pytest.mark.parametrize("reply", BUG_REPLIES)
def test_command_and_script_errors_are_not_redis_down(reply: str) -> None:
    assert not is_redis_down(BaseParser.parse_error(reply))


@pytest.mark.parametrize(
    "exc",
    [
        rx.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
        rx.TimeoutError("Timeout reading from 127.0.0.1:6379"),
        rx.MaxConnectionsError("Too many connections"),
        MasterNotFoundError("No master found for 'mymaster'"),
        rx.InvalidResponse("Protocol Error: b'H'"),
        rx.SlotNotCoveredError("slot 3999 is not covered"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_level_failures_are_redis_down(exc: BaseException) -> None:
    assert is_redis_down(exc)


@pytest.mark.parametrize(
    "exc",
    [rx.WatchError("watched key changed"), rx.DataError("bad argument"), ValueError("x"),
     rx.LockNotOwnedError("not owned"), rx.PubSubError("no subscription")],
    ids=lambda e: type(e).__name__,
)
def test_other_errors_are_not_redis_down(exc: BaseException) -> None:
    assert not is_redis_down(exc)


def test_redis_unavailable_carries_reason_and_retry_info() -> None:
    err = redis_unavailable(rx.ConnectionError("Error 111 connecting to 10.0.0.7:6379."))
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.error_reason == ErrorReason.ERROR_REASON_REDIS_DOWN
    info = err.detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("REDIS_DOWN", DOMAIN)
    assert info.metadata["error"] == "ConnectionError"
    retry = err.detail(error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == int(REDIS_RETRY_DELAY_S * 1e9)
    # Callers get the class, not the host and port.
    assert "ConnectionError" in err.message
    assert "10.0.0.7" not in err.message
    read = redis_unavailable(rx.TimeoutError(), action="cannot read the catalog")
    assert read.message.startswith("cannot read the catalog (TimeoutError)")


def test_redis_down_log_writes_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    logger = logging.getLogger("test.redis_down")
    down = RedisDownLog(logger, "redis unavailable", interval_s=10.0, clock=lambda: now[0])
    exc = rx.ConnectionError("Connection refused")
    with caplog.at_level(logging.INFO, logger="test.redis_down"):
        assert down.warn(exc, method="/a/B")
        now[0] = 105.0
        assert not down.warn(exc, method="/a/B")
        assert not down.warn(exc, method="/a/C")
        now[0] = 110.0
        assert down.warn(exc, method="/a/D")
    records = [r for r in caplog.records if r.name == "test.redis_down"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    fields = [r.__dict__ for r in records]  # the extra= fields the JSON line carries
    assert [f["suppressed"] for f in fields] == [0, 2]
    assert [f["method"] for f in fields] == ["/a/B", "/a/D"]
    assert fields[0]["error"] == "ConnectionError: Connection refused"
    assert all(r.exc_info is None for r in records)
