"""Idempotency stores: completed idempotency key → stored output.

An agent records the output of every completed call that carried an
idempotency key, so a retry with the same key returns the stored output instead
of running the action again. Only successes are stored; a failed call may be
retried and will run again.

Namespaces used by the SDK: `x` completed Execute keys, `c` completed
Compensate keys, `t` compensation tombstones (Execute key `K` whose Compensate
has started, i.e. one with `compensated_idempotency_key` = `K`, or keyed
`K/compensate` by an older caller: a later Execute with `K` is refused, see
`agentmesh.agent.executor`).

Two stores:
  * `MemoryIdempotencyStore` — per process, bounded, lost on restart. The default.
  * `RedisIdempotencyStore` — `am:agent:{agent_id}:idem:{namespace}:{key}` STRING
    holding a JSON record, with a TTL, so dedupe survives restarts of the agent.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # redis-py is needed only by agents that use the Redis store
    import redis.asyncio as aioredis


@dataclass(frozen=True)
class StoredResult:
    """A completed call.

    Attributes:
        action: action name the key completed with.
        output: the action's output (JSON-compatible).
        completed_ms: wall-clock completion time, Unix milliseconds.
    """

    action: str
    output: dict[str, Any]
    completed_ms: int

    def to_json(self) -> str:
        """Serialise for storage."""
        return json.dumps(
            {"action": self.action, "output": self.output, "completed_ms": self.completed_ms},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> StoredResult:
        """Parse what `to_json` wrote."""
        doc = json.loads(raw)
        return cls(
            action=str(doc["action"]),
            output=dict(doc["output"]),
            completed_ms=int(doc["completed_ms"]),
        )


class IdempotencyStore(Protocol):
    """Where completed results live. `namespace` separates Execute from Compensate keys."""

    async def get(self, namespace: str, key: str) -> StoredResult | None:
        """The stored result for `key`, or None."""
        ...

    async def get_many(self, items: Sequence[tuple[str, str]]) -> list[StoredResult | None]:
        """The stored results for several (namespace, key) pairs, in order (one round trip)."""
        ...

    async def put(self, namespace: str, key: str, result: StoredResult) -> None:
        """Store `result` for `key`; an existing entry is kept (first writer wins)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryIdempotencyStore:
    """In-process store, LRU-bounded and with a TTL.

    Args:
        ttl_s: how long a result is kept, seconds.
        max_entries: the oldest entries are evicted beyond this count.
    """

    def __init__(self, *, ttl_s: float = 86_400.0, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._data: OrderedDict[tuple[str, str], tuple[float, StoredResult]] = OrderedDict()

    async def get(self, namespace: str, key: str) -> StoredResult | None:
        """See IdempotencyStore.get."""
        item = self._data.get((namespace, key))
        if item is None:
            return None
        expires, result = item
        if expires < time.monotonic():
            del self._data[(namespace, key)]
            return None
        return result

    async def get_many(self, items: Sequence[tuple[str, str]]) -> list[StoredResult | None]:
        """See IdempotencyStore.get_many."""
        return [await self.get(ns, key) for ns, key in items]

    async def put(self, namespace: str, key: str, result: StoredResult) -> None:
        """See IdempotencyStore.put."""
        k = (namespace, key)
        if k in self._data:
            return
        self._data[k] = (time.monotonic() + self._ttl_s, result)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def close(self) -> None:
        """Nothing to release."""


class RedisIdempotencyStore:
    """Redis-backed store that survives agent restarts.

    Keys: `am:agent:{agent_id}:idem:{namespace}:{key}` → JSON StoredResult, with
    `EX ttl_s`. Writes use `SET NX` so the first completion wins.

    Args:
        client: a redis.asyncio client (bytes responses are fine).
        agent_id: the agent's id; keys are scoped to it.
        ttl_s: how long a result is kept, seconds.
    """

    def __init__(self, client: aioredis.Redis, *, agent_id: str, ttl_s: float = 86_400.0) -> None:
        self._r = client
        self._prefix = f"am:agent:{agent_id}:idem:"
        self._ttl_ms = max(1, int(ttl_s * 1000))

    def redis_key(self, namespace: str, key: str) -> str:
        """The Redis key used for (namespace, key)."""
        return f"{self._prefix}{namespace}:{key}"

    async def get(self, namespace: str, key: str) -> StoredResult | None:
        """See IdempotencyStore.get."""
        raw = await self._r.get(self.redis_key(namespace, key))
        return None if raw is None else StoredResult.from_json(raw)

    async def get_many(self, items: Sequence[tuple[str, str]]) -> list[StoredResult | None]:
        """See IdempotencyStore.get_many; one round trip (a pipeline of GETs).

        Not MGET: on Redis Cluster the keys sit in different slots, and a
        non-transactional pipeline is split by node there (one round trip
        per node), while on a single Redis it is one round trip like MGET.
        """
        if not items:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for ns, key in items:
                pipe.get(self.redis_key(ns, key))
            raws = await pipe.execute()
        return [None if raw is None else StoredResult.from_json(raw) for raw in raws]

    async def put(self, namespace: str, key: str, result: StoredResult) -> None:
        """See IdempotencyStore.put."""
        await self._r.set(
            self.redis_key(namespace, key), result.to_json(), px=self._ttl_ms, nx=True
        )

    async def close(self) -> None:
        """The client is owned by the agent; nothing to do here."""
