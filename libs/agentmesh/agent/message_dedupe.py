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
  raised, so the redelivery may claim it again. A release keeps how many
  deliveries failed, and `claim` returns it: the gateway's delivery count
  lives in its memory and starts again at 1 after a restart or a
  rebalance, so the SDK reports `max(gateway count, failures + 1)` as
  `ctx.delivery_attempt`, and a handler that sees a message again sees an
  attempt above 1.

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
_FAILED = "failed:"
#: Free or failed before -> take it (returns the failures so far); else say why not.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 1, 7) == 'failed:' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if v then return {'run', string.sub(v, 8)} end
  return {'run', '0'}
end
if v == 'done' then return {'done', '0'} end
return {'busy', '0'}
"""
#: Replaces the claim by the failure count, only when this delivery still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], 'failed:' .. ARGV[2], 'PX', ARGV[3])
end
return 0
"""


class MessageClaims(Protocol):
    """Claims on (group, message id) pairs; see the module docstring."""

    async def claim(self, group: str, message_id: str, owner: str, *, lease_ms: int
                    ) -> tuple[Claim, int]:
        """Take the message for `owner` for `lease_ms`, unless handled or held.

        Returns:
            (what was found, how many deliveries of it failed before).
        """
        ...

    async def done(self, group: str, message_id: str, *, ttl_ms: int) -> None:
        """Mark the message handled for `ttl_ms`."""
        ...

    async def release(self, group: str, message_id: str, owner: str, *, failures: int,
                      ttl_ms: int) -> None:
        """Drop `owner`'s claim (its handler failed), keeping `failures` for `ttl_ms`."""
        ...


class MemoryMessageClaims:
    """Claims in this process, bounded to `max_entries` (oldest evicted first)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._max = max_entries

    async def claim(self, group: str, message_id: str, owner: str, *, lease_ms: int
                    ) -> tuple[Claim, int]:
        """See MessageClaims.claim."""
        k = (group, message_id)
        now = time.monotonic()
        held = self._data.get(k)
        failures = 0
        if held is not None and held[1] > now:
            if held[0] == _DONE:
                return "done", 0
            if not held[0].startswith(_FAILED):
                return "busy", 0
            failures = int(held[0][len(_FAILED):])
        self._data[k] = (owner, now + lease_ms / 1000)
        self._data.move_to_end(k)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
        return "run", failures

    async def done(self, group: str, message_id: str, *, ttl_ms: int) -> None:
        """See MessageClaims.done."""
        self._data[(group, message_id)] = (_DONE, time.monotonic() + ttl_ms / 1000)

    async def release(self, group: str, message_id: str, owner: str, *, failures: int,
                      ttl_ms: int) -> None:
        """See MessageClaims.release."""
        held = self._data.get((group, message_id))
        if held is not None and held[0] == owner:
            self._data[(group, message_id)] = (f"{_FAILED}{failures}",
                                               time.monotonic() + ttl_ms / 1000)


class RedisMessageClaims:
    """Claims in Redis, shared by the group's replicas: one STRING per
    message, `am:agent:bus:{group}:{message id}` = the owner, "done" or
    "failed:<n>", with a TTL; claim and release are scripts (one round trip each).

    Args:
        client: a redis.asyncio client.

    Raises (from each method):
        redis.exceptions.RedisError: Redis is unreachable; the SDK then nacks
            the delivery with a delay, as for a failed handler.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def redis_key(group: str, message_id: str) -> str:
        """The key of a (group, message id) claim."""
        return f"am:agent:bus:{group}:{message_id}"

    async def claim(self, group: str, message_id: str, owner: str, *, lease_ms: int
                    ) -> tuple[Claim, int]:
        """See MessageClaims.claim."""
        state, failures = await self._claim(keys=[self.redis_key(group, message_id)],
                                            args=[owner, max(1, lease_ms)])
        text = state.decode() if isinstance(state, bytes) else str(state)
        return text, int(failures)  # type: ignore[return-value]

    async def done(self, group: str, message_id: str, *, ttl_ms: int) -> None:
        """See MessageClaims.done."""
        await self._r.set(self.redis_key(group, message_id), _DONE, px=max(1, ttl_ms))

    async def release(self, group: str, message_id: str, owner: str, *, failures: int,
                      ttl_ms: int) -> None:
        """See MessageClaims.release (only this owner's claim)."""
        await self._release(keys=[self.redis_key(group, message_id)],
                            args=[owner, failures, max(1, ttl_ms)])


__all__ = ["Claim", "MemoryMessageClaims", "MessageClaims", "RedisMessageClaims"]
