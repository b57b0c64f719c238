"""Leased locks with fencing tokens (agentmesh.runtime.lease), and consensus
proposals, in Redis.

Locks (etcd/Consul style) are the runtime's fenced lease
(agentmesh.runtime.lease): `am:reg:lock:{<resource>}` is the lease record, a
HASH {owner, token} with a PX TTL; `am:reg:fence:{<resource>}` is its counter,
which never expires. Each grant INCRs the counter, so tokens per resource only
increase, across registry restarts, and across Redis restarts when Redis
persists (AOF `appendfsync everysec` or better; see
services/registry/README.md). A lock is reentrant: its owner re-acquiring it
extends it and keeps its token.

Proposals: `am:reg:proposal:{<id>}` HASH (pb, state, deadline_ms, ratio, n,
open, resolve_ms), `...:votes` HASH voter → choice, `...:voters` SET of
eligible voters. Tally and resolution run inside one script per vote.

The braces are Redis Cluster hash tags: a lock's record and counter share
the slot of its resource name, a proposal's three keys the slot of its id, so
each script and transaction stays in one slot while locks and proposals
spread over the cluster. They are outside the catalog's slot (`{catalog}`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from agentmesh.registry.v1 import coordination_pb2
from agentmesh.runtime.lease import CLOCK_PRELUDE, FencedLeases, LeaseKeys, RenewStatus
from agentmesh.runtime.lease import Lease as FencedLease
from agentmesh.server.registry.store import ts_ms

#: Prefix of the lock and proposal keys.
COORDINATION_PREFIX = "am:reg:"

_TALLY_EXPIRE = CLOCK_PRELUDE + r"""
local now = now_ms
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
        prefix: key prefix, `am:reg:` (without a hash tag: each lock and
            proposal brings its own).
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = COORDINATION_PREFIX) -> None:
        self.r = client
        self.p = prefix
        self.leases = FencedLeases(client)
        self._vote = client.register_script(VOTE)
        self._get = client.register_script(GET)

    # ---- locks (the runtime's fenced lease) ---------------------------------
    def lock_keys(self, resource: str) -> LeaseKeys:
        """The lock's lease record and fence counter."""
        tag = "{" + resource + "}"
        return LeaseKeys(self.p + "lock:" + tag, self.p + "fence:" + tag)

    async def acquire(self, resource: str, owner: str, *, ttl_ms: int) -> LockGrant:
        """Try once to take the lock (see coordination.proto AcquireLock)."""
        g = await self.leases.acquire(
            self.lock_keys(resource), owner=owner, ttl_ms=ttl_ms, reentrant=True
        )
        return LockGrant(g.acquired, g.lease.token if g.lease else 0, g.expire_ms, g.holder)

    async def renew(
        self, resource: str, owner: str, *, token: int, ttl_ms: int
    ) -> tuple[int, int | str]:
        """(1, expire_ms) when renewed, (0, 0) when gone, (-1, holder) when not ours."""
        r = await self.leases.renew(
            FencedLease(self.lock_keys(resource), owner, token), ttl_ms=ttl_ms
        )
        if r.status is RenewStatus.HELD:
            return 1, r.expire_ms
        if r.status is RenewStatus.GONE:
            return 0, 0
        return -1, r.holder

    async def release(self, resource: str, owner: str, *, token: int) -> int:
        """1 released, 2 not found, 3 held by another owner or token (token 0 = any)."""
        return int(await self.leases.release(self.lock_keys(resource), owner=owner, token=token))

    # ---- proposals --------------------------------------------------------
    def _keys(self, proposal_id: str) -> list[str]:
        base = self.p + "proposal:{" + proposal_id + "}"
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
