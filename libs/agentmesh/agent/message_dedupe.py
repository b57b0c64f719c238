"""Handle each bus message once per consumer group, by its Envelope.id.

The bus delivers at least once: a message acked but not yet committed when
its partition moves (a rebalance, a gateway killed with SIGKILL) comes again,
to any member of the group, and the gateway's delivery count starts again at
1 then. The contract says to deduplicate by `Envelope.id`; the SDK does it
for every `@agent.on_message` handler with a claim per (group, message id):

* `claim` before the handler: free -> this delivery runs it; `done` -> the
  message was handled, ack without running; held by another delivery ->
  nack with a delay (it comes back once the holder settles it).
* `done` after the handler returned (kept `ttl_ms`); `release` after it
  raised, so the redelivery may claim it again.

A claim expires after the subscription's ack deadline, when the gateway
would redeliver anyway (a holder that died never releases).

Two stores: `RedisMessageClaims` (`am:agent:bus:{group}:{message id}`,
shared by every replica of the group, used when the agent has `redis_url`)
and `MemoryMessageClaims` (one process; replicas in other processes are
not seen).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: What `claim` found: run the handler, skip it (already handled), or wait.
Claim = Literal["run", "done", "busy"]
_DONE = "done"
#: Deletes the claim only when this delivery still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class MessageClaims(Protocol):
    """Claims on (group, message id) pairs; see the module docstring."""

    async def claim(self, group: str, message_id: str, owner: str, *, lease_ms: int) -> Claim:
        """Take the message for `owner` for `lease_ms`, unless handled or held."""
        ...

    async def done(self, group: str, message_id: str, *, ttl_ms: int) -> None:
        """Mark the message handled for `ttl_ms`."""
        ...

    async def release(self, group: str, message_id: str, owner: str) -> None:
        """Drop `owner`'s claim (its handler failed)."""
        ...


class MemoryMessageClaims:
    """Claims in this process, bounded to `max_entries` (oldest evicted first)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._max = max_entries

    async def claim(self, group: str, message_id: str, owner: str, *, lease_ms: int) -> Claim:
        """See MessageClaims.claim."""
        k = (group, message_id)
        now = time.monotonic()
        held = self._data.get(k)
        if held is not None and held[1] > now:
            return "done" if held[0] == _DONE else "busy"
        self._data[k] = (owner, now + lease_ms / 1000)
        self._data.move_to_end(k)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
        return "run"

    async def done(self, group: str, message_id: str, *, ttl_ms: int) -> None:
        """See MessageClaims.done."""
        self._data[(group, message_id)] = (_DONE, time.monotonic() + ttl_ms / 1000)

    async def release(self, group: str, message_id: str, owner: str) -> None:
        """See MessageClaims.release."""
        held = self._data.get((group, message_id))
        if held is not None and held[0] == owner:
            del self._data[(group, message_id)]


class RedisMessageClaims:
    """Claims in Redis, shared by the group's replicas: one STRING per
    message, `am:agent:bus:{group}:{message id}` = the owner or "done", with a TTL.

    Args:
        client: a redis.asyncio client.

    Raises (from each method):
        redis.exceptions.RedisError: Redis is unreachable; the SDK then nacks
            the delivery with a delay, as for a failed handler.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def redis_key(group: str, message_id: str) -> str:
        """The key of a (group, message id) claim."""
        return f"am:agent:bus:{group}:{message_id}"

    async def claim(self, group: str, message_id: str, owner: str, *, lease_ms: int) -> Claim:
        """See MessageClaims.claim: SET NX PX, else GET."""
        key = self.redis_key(group, message_id)
        if await self._r.set(key, owner, nx=True, px=max(1, lease_ms)):
            return "run"
        held = await self._r.get(key)
        if held is None:  # expired in between: try once more
            return "run" if await self._r.set(key, owner, nx=True, px=max(1, lease_ms)) \
                else "busy"
        return "done" if held in (_DONE, _DONE.encode()) else "busy"

    async def done(self, group: str, message_id: str, *, ttl_ms: int) -> None:
        """See MessageClaims.done."""
        await self._r.set(self.redis_key(group, message_id), _DONE, px=max(1, ttl_ms))

    async def release(self, group: str, message_id: str, owner: str) -> None:
        """See MessageClaims.release (only this owner's claim)."""
        await self._release(keys=[self.redis_key(group, message_id)], args=[owner])


__all__ = ["Claim", "MemoryMessageClaims", "MessageClaims", "RedisMessageClaims"]
