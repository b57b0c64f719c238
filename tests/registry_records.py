"""Write agents into the registry's Redis key schema, as the registry does,
for tests and benchmarks that run without a registry daemon.

The key names come from agentmesh.catalog, so these records are exactly what
the router, the saga coordinator and the swarm engine read. Only the fields
those readers use are written (no descriptor, no flap-damping state).

    await write_agent_record(redis, "a1", endpoint="127.0.0.1:7000", capabilities=["calc"])

    with sync_redis.pipeline() as p:      # any redis-py pipeline, sync or asyncio
        queue_agent_record(p, "a1", endpoint=..., capabilities=["calc"])
        p.execute()
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from agentmesh import catalog


def queue_agent_record(
    pipe: Any,
    agent_id: str,
    *,
    endpoint: str,
    status: str = "ACTIVE",
    health: float = 1.0,
    location: str = "",
    version: str = "1.0.0",
    capabilities: Iterable[str] = (),
    service_types: Iterable[str] = (),
    tags: Iterable[str] = (),
    load: Mapping[str, float] | None = None,
) -> None:
    """Queue the commands that register one agent on a redis-py pipeline.

    Args:
        pipe: a pipeline of redis.Redis or redis.asyncio.Redis; the caller
            executes it (queuing is synchronous in both).
        agent_id: the agent's id.
        endpoint: host:port of its AgentService.
        status: ACTIVE, DEGRADED, INACTIVE or DECOMMISSIONED.
        health: health score in [0, 1].
        location / version: agent hash fields.
        capabilities / service_types / tags: index sets it joins.
        load: fields of the load hash (catalog.LOAD_FIELDS), if any.
    """
    now_ms = int(time.time() * 1000)
    pipe.hset(
        catalog.agent_key(agent_id),
        mapping={
            "endpoint": endpoint,
            "status": status,
            "health": repr(float(health)),
            "location": location,
            "version": version,
            "last_heartbeat_ms": str(now_ms),
        },
    )
    for c in capabilities:
        pipe.sadd(catalog.capability_index_key(c), agent_id)
    for s in service_types:
        pipe.sadd(catalog.service_type_index_key(s), agent_id)
    for t in tags:
        pipe.sadd(catalog.tag_index_key(t), agent_id)
    pipe.zadd(catalog.health_key(), {agent_id: float(health)})
    pipe.zadd(catalog.agents_key(), {agent_id: 0})
    if load:
        pipe.hset(
            catalog.load_key(agent_id),
            mapping={**{k: repr(float(v)) for k, v in load.items()}, "updated_ms": str(now_ms)},
        )


async def write_agent_record(redis: aioredis.Redis, agent_id: str, **fields: Any) -> None:
    """Register one agent atomically (MULTI/EXEC); `fields` as `queue_agent_record`'s."""
    async with redis.pipeline(transaction=True) as p:
        queue_agent_record(p, agent_id, **fields)
        await p.execute()
