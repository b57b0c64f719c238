"""Leased locks with fencing tokens, and consensus proposals, in Redis.

Locks (etcd/Consul style): `am:reg:lock:{resource}` is a HASH {owner, token}
with a PEXPIRE TTL; `am:reg:fence:{resource}` is a counter that never
expires. Each grant INCRs the counter, so tokens per resource only increase,
across registry restarts, and across Redis restarts when Redis persists
(AOF `appendfsync everysec` or better; see services/registry/README.md).

Proposals: `am:reg:proposal:{id}` HASH (pb, state, deadline_ms, ratio, n,
open, resolve_ms), `...:votes` HASH voter → choice, `...:voters` SET of
eligible voters. Tally and resolution run inside one script per vote.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from agentmesh.registry.v1 import coordination_pb2
from services.registry.store import ts_ms

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: lock, fence. ARGV: owner, ttl_ms. Returns {acquired, token, expire_ms, holder}.
ACQUIRE = _NOW + r"""
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token')
if not cur[1] then
  local token = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, token, now + tonumber(ARGV[2]), ''}
elseif cur[1] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(cur[2]), now + tonumber(ARGV[2]), ''}
end
return {0, 0, now + redis.call('PTTL', KEYS[1]), cur[1]}
"""

#: KEYS: lock. ARGV: owner, token, ttl_ms. Returns {1, expire_ms} | {0} | {-1, holder}.
RENEW = _NOW + r"""
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token')
if not cur[1] then return {0} end
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return {-1, cur[1]} end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, now + tonumber(ARGV[3])}
"""

#: KEYS: lock. ARGV: owner, token ("0" = any). Returns 1 released, 2 not found, 3 held by other.
RELEASE = r"""
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token')
if not cur[1] then return 2 end
if cur[1] ~= ARGV[1] or (ARGV[2] ~= '0' and cur[2] ~= ARGV[2]) then return 3 end
redis.call('DEL', KEYS[1])
return 1
"""

_TALLY_EXPIRE = _NOW + r"""
local function expire_if_due(f)
  if f[1] == 'OPEN' and now >= tonumber(f[2]) then
    redis.call('HSET', KEYS[1], 'state', 'EXPIRED', 'resolve_ms', f[2])
    return 'EXPIRED'
  end
  return f[1]
end
"""

#: KEYS: proposal, votes, voters. ARGV: voter, choice (1 approve, 2 reject, 3 abstain).
#: Returns {outcome, state}; outcome OK, NOT_FOUND, RESOLVED, NOT_ELIGIBLE or CONFLICT.
VOTE = _TALLY_EXPIRE + r"""
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_ms', 'ratio', 'n', 'open')
if not f[1] then return {'NOT_FOUND', ''} end
local state = expire_if_due(f)
if state ~= 'OPEN' then return {'RESOLVED', state} end
if f[5] ~= '1' and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
  return {'NOT_ELIGIBLE', state}
end
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then
  if prev == ARGV[2] then return {'OK', state} end
  return {'CONFLICT', state}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local a, r, b = 0, 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
  if v == '1' then a = a + 1 elseif v == '2' then r = r + 1 else b = b + 1 end
end
local pending = math.max(0, tonumber(f[4]) - a - r - b)
local ratio = tonumber(f[3])
local denom = a + r + pending
local eps = 1e-9
if denom == 0 then state = 'REJECTED'
elseif a / denom >= ratio - eps then state = 'ACHIEVED'
elseif (a + pending) / denom < ratio - eps then state = 'REJECTED' end
if state ~= 'OPEN' then redis.call('HSET', KEYS[1], 'state', state, 'resolve_ms', now) end
return {'OK', state}
"""

#: KEYS: proposal, votes. Returns nil or {pb, state, resolve_ms, voter, choice, ...}.
GET = _TALLY_EXPIRE + r"""
local f = redis.call('HMGET', KEYS[1], 'state', 'deadline_ms', 'pb', 'resolve_ms')
if not f[1] then return nil end
local state = expire_if_due(f)
local resolve = redis.call('HGET', KEYS[1], 'resolve_ms') or ''
local out = {f[3], state, resolve}
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do table.insert(out, v) end
return out
"""

STATES = {
    "OPEN": coordination_pb2.PROPOSAL_STATE_OPEN,
    "ACHIEVED": coordination_pb2.PROPOSAL_STATE_ACHIEVED,
    "REJECTED": coordination_pb2.PROPOSAL_STATE_REJECTED,
    "EXPIRED": coordination_pb2.PROPOSAL_STATE_EXPIRED,
}

#: Resolved proposals are kept this long after their deadline, ms.
PROPOSAL_RETENTION_MS = 7 * 24 * 3600 * 1000


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class LockGrant:
    """Outcome of AcquireLock.

    Attributes:
        acquired: whether the owner now holds the lock.
        token: fencing token when acquired, else 0.
        expire_ms: lock expiry (Unix ms) when acquired, else the holder's expiry.
        holder: the other owner when not acquired.
    """

    acquired: bool
    token: int
    expire_ms: int
    holder: str


class CoordinationStore:
    """Locks and proposals.

    Args:
        client: redis.asyncio client (decode_responses=False).
        prefix: key prefix, `am:reg:`.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.r = client
        self.p = prefix
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._vote = client.register_script(VOTE)
        self._get = client.register_script(GET)

    # ---- locks ------------------------------------------------------------
    async def acquire(self, resource: str, owner: str, *, ttl_ms: int) -> LockGrant:
        """Try once to take the lock (see coordination.proto AcquireLock)."""
        acquired, token, expire_ms, holder = await self._acquire(
            keys=[self.p + "lock:" + resource, self.p + "fence:" + resource],
            args=[owner, ttl_ms],
        )
        return LockGrant(bool(acquired), int(token), int(expire_ms), _s(holder))

    async def renew(
        self, resource: str, owner: str, *, token: int, ttl_ms: int
    ) -> tuple[int, int | str]:
        """(1, expire_ms) when renewed, (0, 0) when gone, (-1, holder) when not ours."""
        res = await self._renew(keys=[self.p + "lock:" + resource], args=[owner, token, ttl_ms])
        code = int(res[0])
        if code == 1:
            return 1, int(res[1])
        if code == 0:
            return 0, 0
        return -1, _s(res[1])

    async def release(self, resource: str, owner: str, *, token: int) -> int:
        """1 released, 2 not found, 3 held by another owner or token."""
        return int(await self._release(keys=[self.p + "lock:" + resource], args=[owner, token]))

    # ---- proposals --------------------------------------------------------
    def _keys(self, proposal_id: str) -> list[str]:
        base = self.p + "proposal:" + proposal_id
        return [base, base + ":votes", base + ":voters"]

    async def create_proposal(
        self, proposal: coordination_pb2.Proposal, *, deadline_ms: int, expected_votes: int
    ) -> coordination_pb2.Proposal:
        """Store a new OPEN proposal; fills in its id and create time."""
        proposal.proposal_id = "prop-" + uuid.uuid4().hex
        sec, usec = await self.r.time()
        now_ms = sec * 1000 + usec // 1000
        proposal.create_time.CopyFrom(ts_ms(now_ms))
        proposal.deadline.CopyFrom(ts_ms(deadline_ms))
        proposal.state = coordination_pb2.PROPOSAL_STATE_OPEN
        key, _votes, voters = self._keys(proposal.proposal_id)
        expire_at = deadline_ms + PROPOSAL_RETENTION_MS
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "pb": proposal.SerializeToString(), "state": "OPEN", "deadline_ms": deadline_ms,
            "ratio": repr(proposal.required_approval_ratio), "n": expected_votes,
            "open": "0" if proposal.voters else "1",
        })
        pipe.pexpireat(key, expire_at)
        if proposal.voters:
            pipe.sadd(voters, *proposal.voters)
            pipe.pexpireat(voters, expire_at)
        await pipe.execute()
        return proposal

    async def vote(self, proposal_id: str, voter: str, choice: int) -> tuple[str, str]:
        """(outcome, state) of a vote; see VOTE."""
        keys = self._keys(proposal_id)
        outcome, state = await self._vote(keys=keys, args=[voter, choice])
        if _s(outcome) == "OK":
            # Votes live as long as the proposal.
            ttl = await self.r.pttl(keys[0])
            if ttl > 0:
                await self.r.pexpire(keys[1], ttl)
        return _s(outcome), _s(state)

    async def get_proposal(self, proposal_id: str) -> coordination_pb2.Proposal | None:
        """The proposal with its votes and tally; past-deadline OPEN ones become EXPIRED."""
        res = await self._get(keys=self._keys(proposal_id)[:2], args=[])
        if not res:
            return None
        proposal = coordination_pb2.Proposal.FromString(res[0])
        proposal.state = STATES[_s(res[1])]
        if _s(res[2]):
            proposal.resolve_time.CopyFrom(ts_ms(int(_s(res[2]))))
        flat = [_s(x) for x in res[3:]]
        for voter, choice in zip(flat[0::2], flat[1::2], strict=True):
            c = int(choice)
            proposal.votes[voter] = c  # type: ignore[assignment]
            if c == coordination_pb2.VOTE_CHOICE_APPROVE:
                proposal.approvals += 1
            elif c == coordination_pb2.VOTE_CHOICE_REJECT:
                proposal.rejections += 1
            else:
                proposal.abstentions += 1
        return proposal
