"""Token buckets in Redis, shared by replicas: per caller (`am:rt:rl:{identity}`)
and the SafetyService's named limiters (`am:rt:lb:{name:key}`, `take_from`).
One Lua script refills by elapsed time (Redis server clock, so replicas on
skewed hosts agree) and takes tokens atomically, all or none."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from agentmesh.runtime.lease import CLOCK_PRELUDE
from agentmesh.runtime.routing import keys

# KEYS[1] bucket; ARGV: rate per s, burst, cost. Returns {allowed, retry_after_ms}.
_TAKE = CLOCK_PRELUDE + """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_ms
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of taking tokens: allowed, or how long to wait in ms."""

    allowed: bool
    retry_after_ms: int


class RateLimiter:
    """Token bucket per caller identity.

    Args:
        redis: the router's Redis.
        rate_per_s: refill rate; 0 disables limiting.
        burst: bucket size.
    """

    def __init__(self, redis: aioredis.Redis, *, rate_per_s: float, burst: int) -> None:
        self.enabled = rate_per_s > 0
        self._rate = rate_per_s
        self._burst = max(1, burst)
        self._take = redis.register_script(_TAKE)

    async def take(self, identity: str, cost: int = 1) -> Verdict:
        """Take `cost` tokens from `identity`'s bucket."""
        if not self.enabled:
            return Verdict(True, 0)
        return await self.take_from(
            keys.rate_bucket(identity), rate_per_s=self._rate, burst=self._burst, cost=cost
        )

    async def take_from(
        self, bucket_key: str, *, rate_per_s: float, burst: int, cost: int = 1
    ) -> Verdict:
        """Take `cost` tokens from the bucket at `bucket_key`, whatever this
        limiter's own rate: a bucket of capacity `burst` refilled at
        `rate_per_s` tokens per second, full when first used.

        Args:
            bucket_key: the bucket's Redis key (one key: one hash slot).
            rate_per_s: refill rate, tokens per second; > 0.
            burst: capacity, tokens; >= cost for the take ever to succeed.
            cost: tokens to take, all or none.

        Returns:
            The verdict; `retry_after_ms` is the wait until `cost` tokens are there.
        """
        allowed, wait = await self._take(keys=[bucket_key], args=[rate_per_s, burst, cost])
        return Verdict(bool(allowed), int(wait))
