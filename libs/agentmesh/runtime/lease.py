"""One fenced lease in Redis, shared by every daemon that needs one replica to
own something for a while: the saga coordinator (a saga), the swarm engine (a
swarm), the registry reaper (the sweep) and CoordinationService (a lock).

A lease is two keys:

* the **record** (HASH ``owner``, ``token``) with a PX TTL: it exists exactly
  while the lease is held, and expires by itself when the holder stops
  renewing (Consul sessions' TTL, etcd leases);
* the **fence counter** (a STRING, or one field of a HASH the caller already
  keeps): INCR'd on every grant and never reset, so fencing tokens per lease
  only ever increase, across restarts of the daemons and of Redis when Redis
  persists (Kleppmann 2016, "How to do distributed locking": a lease alone
  cannot stop a paused holder; the storage must reject writes that carry an
  older token).

Invariant: while the record exists its ``token`` is the counter's current
value (the counter moves only in the script that writes a new record). So a
writer is still the holder, and its token is still the newest, exactly when
the record holds its ``owner`` and ``token``; the fence check below reads the
record only.

Writes that must be fenced are Lua scripts that start with
:data:`CLOCK_PRELUDE` (when they read the clock), :data:`LEASE_LUA` and
:func:`fence_check`. By the default convention (:data:`FENCE_CHECK`) the check
reads ``KEYS[1]`` = the lease record key, ``ARGV[1]`` = the writer's owner and
``ARGV[2]`` = its fencing token; on a mismatch the script returns the error
reply ``FENCED ...`` before writing anything, which :func:`call_fenced` turns
into :class:`LeaseLost`.

All times are Redis server time (``TIME``), in ms since the Unix epoch, so
replicas share one clock; TTLs are ms. Each lease's keys should share a Redis
Cluster hash slot: :meth:`LeaseKeys.for_name` hash-tags the lease name. The
daemons that had leases before this module name theirs in their READMEs; when
the Cluster layout renamed them, :mod:`agentmesh.runtime.migrate_keys` moves
the old keys (a fence counter left behind would restart tokens at 1).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

#: Lua: ``now_ms``, the Redis server clock in ms since the Unix epoch (``TIME``
#: is seconds and microseconds). Prepend it to every script that needs the clock,
#: so all replicas read one clock. Scripts that write after TIME rely on
#: effect replication (the default since Redis 5, the only mode since 7).
CLOCK_PRELUDE = """
local now_ms
do
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: Prefix of the error reply a fenced-out script returns.
FENCED_ERROR = "FENCED"

#: Lua library of the lease; needs :data:`CLOCK_PRELUDE` before it. Tokens
#: travel as decimal strings (ARGV and HASH fields are strings). A fence
#: counter field of '' means the counter is the STRING key itself.
LEASE_LUA = """
local function lease_next_token(fk, ff)
  if ff == '' then return redis.call('INCR', fk) end
  return redis.call('HINCRBY', fk, ff, 1)
end

-- Grant the lease if it is free (or, with reentrant, already the owner's).
-- Returns {token, expire_ms, ''} when granted, {0, holder's expire_ms, holder}
-- when someone else holds it.
local function lease_acquire(lk, fk, ff, owner, ttl_ms, reentrant)
  local cur = redis.call('HMGET', lk, 'owner', 'token')
  if not cur[1] then
    local token = lease_next_token(fk, ff)
    redis.call('HSET', lk, 'owner', owner, 'token', token)
    redis.call('PEXPIRE', lk, ttl_ms)
    return {token, now_ms + tonumber(ttl_ms), ''}
  end
  if reentrant and cur[1] == owner then
    redis.call('PEXPIRE', lk, ttl_ms)
    return {tonumber(cur[2]), now_ms + tonumber(ttl_ms), ''}
  end
  return {0, now_ms + redis.call('PTTL', lk), cur[1]}
end

-- True while owner holds the lease with token (the fence check).
local function lease_held(lk, owner, token)
  local cur = redis.call('HMGET', lk, 'owner', 'token')
  return cur[1] == owner and cur[2] == tostring(token)
end

-- Extend the holder's lease. Returns {1, expire_ms, ''} renewed, {0, 0, ''}
-- gone (expired or released), {-1, 0, holder} held by another owner or token.
local function lease_renew(lk, owner, token, ttl_ms)
  local cur = redis.call('HMGET', lk, 'owner', 'token')
  if not cur[1] then return {0, 0, ''} end
  if cur[1] ~= owner or cur[2] ~= tostring(token) then return {-1, 0, cur[1]} end
  redis.call('PEXPIRE', lk, ttl_ms)
  return {1, now_ms + tonumber(ttl_ms), ''}
end

-- Give the lease up; token '0' matches any token of this owner.
-- Returns 1 released, 2 not found, 3 held by another owner or token.
local function lease_release(lk, owner, token)
  local cur = redis.call('HMGET', lk, 'owner', 'token')
  if not cur[1] then return 2 end
  if cur[1] ~= owner or (tostring(token) ~= '0' and cur[2] ~= tostring(token)) then return 3 end
  redis.call('DEL', lk)
  return 1
end
"""


def fence_check(
    *, record: str = "KEYS[1]", owner: str = "ARGV[1]", token: str = "ARGV[2]"
) -> str:
    """The Lua statement a commit script runs before it writes anything.

    Args:
        record: Lua expression of the lease record key.
        owner: Lua expression of the writer's owner id.
        token: Lua expression of the writer's fencing token.

    Returns:
        Lua that returns the error reply ``FENCED <record key>`` unless the
        writer still holds the lease with that token. Needs :data:`LEASE_LUA`
        earlier in the script.
    """
    return (
        f"if not lease_held({record}, {owner}, {token}) then "
        f"return redis.error_reply('{FENCED_ERROR} ' .. {record}) end\n"
    )


#: The fence check by the default convention: ``KEYS[1]`` lease record key,
#: ``ARGV[1]`` owner, ``ARGV[2]`` fencing token.
FENCE_CHECK = fence_check()

_ACQUIRE = (
    CLOCK_PRELUDE
    + LEASE_LUA
    + "return lease_acquire(KEYS[1], KEYS[2], ARGV[4], ARGV[1], ARGV[2], ARGV[3] == '1')\n"
)
_RENEW = CLOCK_PRELUDE + LEASE_LUA + "return lease_renew(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"
_RELEASE = CLOCK_PRELUDE + LEASE_LUA + "return lease_release(KEYS[1], ARGV[1], ARGV[2])\n"


class LeaseLost(Exception):
    """The holder's lease expired or another holder took it; nothing was written."""


@dataclass(frozen=True)
class LeaseKeys:
    """Where one lease lives.

    Attributes:
        record: key of the lease record (HASH ``owner``, ``token``, PX TTL).
        fence: key of the fencing-token counter; never expires while the
            leased thing exists.
        fence_field: HASH field of the counter inside `fence`; "" when `fence`
            is a STRING counter of its own.
    """

    record: str
    fence: str
    fence_field: str = ""

    @classmethod
    def for_name(cls, prefix: str, name: str) -> LeaseKeys:
        """Keys of a new lease, hash-tagged so both share a Cluster slot.

        Args:
            prefix: key prefix, e.g. ``am:task:``.
            name: the lease name (what is leased), e.g. a task id.

        Returns:
            ``<prefix>lease:{<name>}`` and ``<prefix>fence:{<name>}``.
        """
        return cls(f"{prefix}lease:{{{name}}}", f"{prefix}fence:{{{name}}}")


@dataclass(frozen=True)
class Lease:
    """A held lease.

    Attributes:
        keys: where it lives.
        owner: the holder's id (a replica or client id).
        token: fencing token; only ever increases per lease.
    """

    keys: LeaseKeys
    owner: str
    token: int


@dataclass(frozen=True)
class Grant:
    """Outcome of :meth:`FencedLeases.acquire`.

    Attributes:
        lease: the held lease, or None when another owner holds it.
        expire_ms: when the lease expires (Redis clock, Unix ms): ours when
            granted, else the current holder's.
        holder: the current holder's owner id when not granted, else "".
    """

    lease: Lease | None
    expire_ms: int
    holder: str

    @property
    def acquired(self) -> bool:
        """Whether the caller now holds the lease."""
        return self.lease is not None


class RenewStatus(enum.IntEnum):
    """Outcome of renewing one lease."""

    HELD = 1  #: still held; extended
    GONE = 0  #: expired or released; nobody holds it
    OTHER_HOLDER = -1  #: held by another owner, or under a newer token


@dataclass(frozen=True)
class Renewal:
    """Outcome of renewing one lease.

    Attributes:
        status: see RenewStatus.
        expire_ms: new expiry (Redis clock, Unix ms) when HELD, else 0.
        holder: the other owner when OTHER_HOLDER, else "".
    """

    status: RenewStatus
    expire_ms: int
    holder: str

    @property
    def held(self) -> bool:
        """Whether the lease is still the caller's."""
        return self.status is RenewStatus.HELD


class ReleaseStatus(enum.IntEnum):
    """Outcome of releasing a lease."""

    RELEASED = 1
    NOT_FOUND = 2  #: nobody holds it (expired or released already)
    NOT_HOLDER = 3  #: another owner or token holds it; left alone


class FencedLeases:
    """Acquire, renew and release fenced leases (see the module docstring).

    Args:
        redis: asyncio client; replies may be bytes or str.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(
        self, keys: LeaseKeys, *, owner: str, ttl_ms: int, reentrant: bool = False
    ) -> Grant:
        """Take the lease if nobody holds it (one round trip).

        Each grant of a free lease takes the next fencing token; a failed
        acquire takes none.

        Args:
            keys: the lease.
            owner: the caller's id; must not be empty.
            ttl_ms: lease length, ms (> 0).
            reentrant: when the caller already holds it, extend it and return
                the same token (a lock's re-acquire) instead of refusing.

        Returns:
            The grant (with the holder when refused).

        Raises:
            ValueError: empty owner or ttl_ms <= 0.
            redis.exceptions.RedisError: Redis failed.
        """
        _check(owner, ttl_ms)
        token, expire_ms, holder = await self._acquire(
            keys=[keys.record, keys.fence],
            args=[owner, ttl_ms, "1" if reentrant else "0", keys.fence_field],
        )
        if int(token) > 0:
            return Grant(Lease(keys, owner, int(token)), int(expire_ms), "")
        return Grant(None, int(expire_ms), _s(holder))

    async def renew_many(self, leases: Sequence[Lease], *, ttl_ms: int) -> list[Renewal]:
        """Extend many leases in one round trip (one pipeline of one script call each).

        One call per lease rather than one script over all keys, so that each
        call's keys stay in one Cluster slot.

        Args:
            leases: the caller's leases.
            ttl_ms: new lease length from now, ms (> 0).

        Returns:
            One Renewal per lease, in order; ``held`` tells which are still held.

        Raises:
            ValueError: ttl_ms <= 0.
            redis.exceptions.RedisError: Redis failed.
        """
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
        if not leases:
            return []
        res = await call_many(
            self._renew,
            [([lease.keys.record], [lease.owner, lease.token, ttl_ms]) for lease in leases],
        )
        return [Renewal(RenewStatus(int(c)), int(e), _s(h)) for c, e, h in res]

    async def renew(self, lease: Lease, *, ttl_ms: int) -> Renewal:
        """Extend one lease; see renew_many."""
        code, expire_ms, holder = await self._renew(
            keys=[lease.keys.record], args=[lease.owner, lease.token, _ttl(ttl_ms)]
        )
        return Renewal(RenewStatus(int(code)), int(expire_ms), _s(holder))

    async def release(self, keys: LeaseKeys, *, owner: str, token: int = 0) -> ReleaseStatus:
        """Give the lease up, only if `owner` (with `token`) holds it.

        Args:
            keys: the lease.
            owner: the holder's id.
            token: the holder's fencing token; 0 matches any token of `owner`.

        Returns:
            RELEASED, NOT_FOUND, or NOT_HOLDER (nothing changed).

        Raises:
            redis.exceptions.RedisError: Redis failed.
        """
        return ReleaseStatus(int(await self._release(keys=[keys.record], args=[owner, token])))


async def call_many(
    script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run one script many times in one round trip (a non-transactional pipeline).

    EVALSHA goes straight into the pipeline: redis-py's Script in a pipeline
    first sends SCRIPT EXISTS, a second round trip on every call. It goes in
    through `execute_command`, because redis-py's cluster pipeline blocks
    its `evalsha` method (a blanket list of commands it will not route);
    given as a command it is routed by its keys like any other, so on Redis
    Cluster the batch is one round trip per node, and the keys of each call
    must share a slot, as for any script there. When Redis
    lost its script cache (restart, SCRIPT FLUSH) the script is loaded and the
    whole batch sent again, so the script must be safe to run twice (renewals are).

    Args:
        script: a script registered on the client that will run it.
        calls: (keys, args) per call.

    Returns:
        One reply per call, in order.

    Raises:
        redis.exceptions.RedisError: Redis failed, or a call's script error
            (the first one).
    """
    if not calls:
        return []
    redis = script.registered_client
    for attempt in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
        await redis.script_load(script.script)
    raise AssertionError("unreachable")


def is_fenced(err: ResponseError) -> bool:
    """Whether a script error is the fence check's refusal (see fence_check)."""
    return str(err).startswith(FENCED_ERROR)


async def call_fenced(
    script: AsyncScript, *, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """Run a commit script that starts with a fence check.

    Returns:
        The script's reply.

    Raises:
        LeaseLost: the fence check refused the write (nothing was written).
        redis.exceptions.RedisError: Redis failed, or another script error.
    """
    try:
        return await script(keys=list(keys), args=list(args))
    except ResponseError as e:
        if is_fenced(e):
            raise LeaseLost(str(e)) from e
        raise


def _check(owner: str, ttl_ms: int) -> None:
    if not owner:
        raise ValueError("owner must not be empty")
    _ttl(ttl_ms)


def _ttl(ttl_ms: int) -> int:
    if ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
    return ttl_ms


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


__all__ = [
    "CLOCK_PRELUDE",
    "FENCED_ERROR",
    "FENCE_CHECK",
    "LEASE_LUA",
    "FencedLeases",
    "Grant",
    "Lease",
    "LeaseKeys",
    "LeaseLost",
    "ReleaseStatus",
    "RenewStatus",
    "Renewal",
    "call_fenced",
    "call_many",
    "fence_check",
    "is_fenced",
]
