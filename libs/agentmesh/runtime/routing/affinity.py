"""AFFINITY bindings in Redis, so every router replica sends a key to the
same agent: `am:rt:aff:{pool}:{key}` holds the agent id with a sliding TTL.

`bind` is one atomic script: keep the current binding when it is still
eligible (renewing its TTL), otherwise compare-and-set the proposed agent. Two
replicas that race on a fresh key both end up with the winner's choice.
"""

from __future__ import annotations

from collections.abc import Container

import redis.asyncio as aioredis

from agentmesh.runtime.routing import keys

# KEYS[1] binding; ARGV: proposed, ttl_ms, expected current ("" = none).
# Returns the bound agent id.
_BIND = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""


class AffinityStore:
    """Sticky key → agent bindings shared by replicas.

    Args:
        redis: the router's Redis.
        ttl_s: binding lifetime, renewed on each use.
    """

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_ms = ttl_s * 1000
        self._bind = redis.register_script(_BIND)

    async def bind(
        self, pool_key: str, key: str, *, proposed: str, eligible: Container[str]
    ) -> str:
        """The agent bound to `key`: the existing binding if eligible, else `proposed`.

        Args:
            pool_key: the candidate pool, so one key can bind in several pools.
            key: the affinity key.
            proposed: the agent to bind when there is no usable binding.
            eligible: agent ids that may receive traffic now.
        """
        k = keys.affinity(pool_key, key)
        got = await self._bind(keys=[k], args=[proposed, self._ttl_ms, ""])
        agent = got.decode() if isinstance(got, bytes) else str(got)
        if agent in eligible:
            return agent
        # The bound agent is unusable: replace it, unless another replica just did.
        got = await self._bind(keys=[k], args=[proposed, self._ttl_ms, agent])
        agent = got.decode() if isinstance(got, bytes) else str(got)
        return agent if agent in eligible else proposed
