"""Defect 7 of issue 20: memory and logs under bad input. Every string field
reachable from every request of the five daemons gets large random content,
again and again (each value new, so any cache keyed by request content would
grow): log lines stay short (no line echoes more than a few hundred bytes
of input per field), client errors are logged at most once per second per
method and code, nothing is logged at ERROR, and RSS after the load is
within 20 MB of what it was after a warm-up round."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from tests.hardening import (
    call_method,
    daemon_methods,
    errors_in_log,
    field_paths,
    log_docs,
    log_size,
    message_with,
    rss_mb,
)
from tests.hardening_seeds import seed_for
from tests.integration.hardening.conftest import DAEMONS
from tests.procs import DaemonProcess

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

STRING = FieldDescriptor.CPPTYPE_STRING
#: Size of each random string, characters.
BIG = 32 * 1024
ROUNDS = 3


def set_text(text: str) -> Any:
    def put(parent: Any, f: Any) -> str:
        value: Any = text.encode() if f.type == FieldDescriptor.TYPE_BYTES else text
        if f.is_repeated:
            getattr(parent, f.name).append(value)
            return f"{f.name}[0]"
        setattr(parent, f.name, value)
        return str(f.name)

    return put


async def one_round(ch: grpc.aio.Channel, name: str, rng: random.Random) -> int:
    sent = 0
    for method in daemon_methods(name):
        for path in field_paths(method.input_type, lambda f: f.cpp_type == STRING):
            text = "".join(rng.choices("abcxyz{}()'\"\\.*$ ", k=BIG)) + str(rng.random())
            body, _ = message_with(method.input_type, path, set_text(text), base=seed_for(method))
            await call_method(ch, method, body, timeout_s=2.0)
            sent += 1
    return sent


@pytest.mark.parametrize("name", DAEMONS)
async def test_large_random_strings_keep_logs_and_memory_bounded(
    mesh: dict[str, DaemonProcess], name: str
) -> None:
    proc = mesh[name]
    rng = random.Random(20)
    async with grpc.aio.insecure_channel(proc.target) as ch:
        await one_round(ch, name, rng)  # warm-up: caches, pools, imports
        await asyncio.sleep(0.5)
        start_rss = rss_mb(proc)
        offset = log_size(proc)
        started = time.monotonic()
        sent = 0
        for _ in range(ROUNDS):
            sent += await one_round(ch, name, rng)
        elapsed_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    docs = log_docs(proc, offset=offset)
    assert errors_in_log(proc, offset=offset) == []
    longest = max((len(str(d)) for d in docs), default=0)
    assert longest < 4000, max(docs, key=lambda d: len(str(d)))
    rejected = [d for d in docs if d.get("msg") in ("rpc rejected", "undecodable request")]
    per_key: dict[tuple[str, str], int] = {}
    for d in rejected:
        key = (d["method"], d["code"])
        per_key[key] = per_key.get(key, 0) + 1
    # At most one line per method and code per second (plus the first).
    assert all(n <= 2 + elapsed_s for n in per_key.values()), per_key
    growth_mb = rss_mb(proc) - start_rss
    assert growth_mb < 20, f"{name}: RSS grew {growth_mb:.1f} MB over {sent} requests"
