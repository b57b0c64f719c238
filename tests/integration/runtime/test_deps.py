"""Dependency helpers against the real Redis."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh.runtime.deps import create_redis

pytestmark = pytest.mark.integration


async def test_redis_pool_queues_bursts_instead_of_failing(redis_url: str) -> None:
    client = create_redis(redis_url, max_connections=4)
    try:
        # 50 blocking commands on a pool of 4: each waits for a free connection.
        keys = [f"am:test:pool:{i}" for i in range(50)]
        results = await asyncio.gather(*(client.blpop([k], timeout=0.05) for k in keys))
        assert results == [None] * 50
        assert await client.ping()
    finally:
        await client.aclose()
