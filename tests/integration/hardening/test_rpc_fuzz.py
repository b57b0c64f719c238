"""Property test of issue 20: every RPC of every daemon, walked through the
generated descriptors, gets generated requests (random values, empty and
huge strings, out-of-range enums and integers, huge and negative Durations,
deep and wide Structs, garbage bytes as the body) on real daemons with real
Redis and, for the bus gateway, a real Kafka broker. Properties: no call is
answered INTERNAL or UNKNOWN, no ERROR line is logged, the daemon stays
SERVING, and its RSS stays bounded.

`make test` runs AGENTMESH_FUZZ_EXAMPLES (default 40) examples per daemon;
`make fuzz` runs many more.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.fuzz_messages import request_bodies
from tests.hardening import call_method, daemon_methods, errors_in_log, log_size, rss_mb
from tests.hardening_seeds import seed_for
from tests.health import health_status
from tests.integration.hardening.conftest import DAEMONS
from tests.procs import DaemonProcess

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

EXAMPLES = int(os.environ.get("AGENTMESH_FUZZ_EXAMPLES", "40"))
#: RSS growth allowed over a run, MiB.
MAX_GROWTH_MB = 40.0
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module's channels (hypothesis runs sync tests)."""
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _calls(name: str) -> st.SearchStrategy[tuple[object, bytes]]:
    methods = daemon_methods(name)
    return st.sampled_from(methods).flatmap(
        lambda m: st.tuples(st.just(m), request_bodies(m, seed_for(m)))
    )


@pytest.mark.parametrize("name", DAEMONS)
def test_generated_requests_never_internal(
    mesh: dict[str, DaemonProcess], loop: asyncio.AbstractEventLoop, name: str
) -> None:
    proc = mesh[name]
    offset = log_size(proc)
    start_rss = rss_mb(proc)
    channel = loop.run_until_complete(_channel(proc.target))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(call=_calls(name))
    def one(call: tuple[object, bytes]) -> None:
        method, body = call
        note(f"{method.full_name} ({len(body)} bytes)")  # type: ignore[attr-defined]
        err = loop.run_until_complete(call_method(channel, method, body, timeout_s=1.0))
        if err is not None:
            assert err.code() not in BAD, (method.full_name, err.code(), err.details())  # type: ignore[attr-defined]

    try:
        one()
    finally:
        loop.run_until_complete(channel.close())
    status = loop.run_until_complete(health_status(proc.target, ""))
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert errors_in_log(proc, offset=offset) == []
    growth = rss_mb(proc) - start_rss
    assert growth < MAX_GROWTH_MB, f"{name} grew {growth:.1f} MiB"


async def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target)
