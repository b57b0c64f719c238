"""Per-target circuit breaker and outlier detection, shared by router
replicas through Redis (`am:rt:target:{<agent_id>}`, in the agent's Redis
Cluster slot).

Breaker (seeds' SafetyMonitor, Envoy/Hystrix style): CLOSED until
`failure_threshold` consecutive failures, then OPEN for `open_ms`; after that
HALF_OPEN, where `half_open_successes` successes close it and one failure
reopens it.

Outlier detection (Envoy's failure-percentage ejection,
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier):
per fixed window of `window_ms`, once a target has `min_requests` calls and a
failure fraction of at least `failure_rate`, it is ejected for
`base_ejection_ms * ejection count` (capped at 300 s). As in Envoy, the count
(the ejection-time multiplier) goes down by one for every full window the
target spends un-ejected, so a target that recovered is not punished with
the long ejections of its past on its next lapse.

One Lua script applies an outcome atomically, so replicas never lose updates.
The same script drives the SafetyService's named breakers
(`NamedBreakerRecorder`): one key, outlier detection off, no expiry.
A failure is an outcome that says the agent is unwell (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, DATA_LOSS); application errors such as
INVALID_ARGUMENT count as successes of the transport.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from agentmesh.runtime.lease import call_many
from agentmesh.runtime.routing import keys

#: Codes that count against a target's health.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
MAX_EJECTION_MS = 300_000

_RECORD = """
local h = KEYS[1]
local ok = ARGV[2] == '1'
local now = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local open_ms = tonumber(ARGV[5])
local need = tonumber(ARGV[6])
local window_ms = tonumber(ARGV[7])
local min_req = tonumber(ARGV[8])
local rate = tonumber(ARGV[9])
local base = tonumber(ARGV[10])
local cap = tonumber(ARGV[11])
local n = tonumber(ARGV[12] or '1')
local v = redis.call('HMGET', h, 'state', 'cf', 'open_until', 'hs', 'ws', 'wf', 'wstart',
                     'ejected_until', 'ejections')
local state = v[1] or 'CLOSED'
local cf = tonumber(v[2] or '0')
local open_until = tonumber(v[3] or '0')
local hs = tonumber(v[4] or '0')
local ws = tonumber(v[5] or '0')
local wf = tonumber(v[6] or '0')
local wstart = tonumber(v[7] or '0')
local ejected_until = tonumber(v[8] or '0')
local ejections = tonumber(v[9] or '0')
if state == 'OPEN' and now >= open_until then state = 'HALF_OPEN'; hs = 0 end
if now - wstart >= window_ms then
  -- decay: one less ejection per full window spent un-ejected
  if ejections > 0 and now >= ejected_until then
    local healthy = math.floor((now - math.max(wstart, ejected_until)) / window_ms)
    ejections = math.max(0, ejections - healthy)
  end
  ws = 0; wf = 0; wstart = now
end
if ok then
  cf = 0
  ws = ws + n
  if state == 'HALF_OPEN' then
    hs = hs + n
    if hs >= need then state = 'CLOSED'; hs = 0 end
  end
else
  cf = cf + 1
  wf = wf + 1
  if state == 'HALF_OPEN' then
    state = 'OPEN'; open_until = now + open_ms; hs = 0
  elseif state == 'CLOSED' and cf >= threshold then
    state = 'OPEN'; open_until = now + open_ms
  end
  if ws + wf >= min_req and wf / (ws + wf) >= rate and now >= ejected_until then
    ejections = ejections + 1
    ejected_until = now + math.min(base * ejections, cap)
    ws = 0; wf = 0; wstart = now
  end
end
redis.call('HSET', h, 'state', state, 'cf', cf, 'open_until', open_until, 'hs', hs,
           'ws', ws, 'wf', wf, 'wstart', wstart, 'ejected_until', ejected_until,
           'ejections', ejections)
local ttl = tonumber(ARGV[13] or '86400000')
if ttl > 0 then redis.call('PEXPIRE', h, ttl) end
-- The last value says the state was created now: the caller then adds the id to
-- the index SET, outside the script, because that SET is in another Redis
-- Cluster slot than this agent's key (named breakers write their index on create).
return {state, cf, open_until, hs, ws, wf, wstart, ejected_until, ejections, v[1] and 0 or 1}
"""

_FIELDS = ("state", "cf", "open_until", "hs", "ws", "wf", "wstart", "ejected_until", "ejections")


@dataclass(slots=True)
class TargetState:
    """Breaker and outlier state of one agent (times are wall-clock ms)."""

    agent_id: str
    breaker: str = "CLOSED"
    consecutive_failures: int = 0
    open_until_ms: int = 0
    half_open_successes: int = 0
    window_successes: int = 0
    window_failures: int = 0
    window_start_ms: int = 0
    ejected_until_ms: int = 0
    ejections: int = 0

    @classmethod
    def from_values(cls, agent_id: str, values: Iterable[bytes | str | int | None]) -> TargetState:
        """From the script's return list or HMGET values, in `_FIELDS` order."""
        v = [x.decode() if isinstance(x, bytes) else x for x in values]
        return cls(
            agent_id,
            str(v[0] or "CLOSED"),
            *(int(float(x or 0)) for x in v[1 : len(_FIELDS)]),
        )

    @classmethod
    def from_hash(cls, agent_id: str, h: Mapping[bytes, bytes]) -> TargetState:
        """From an HGETALL reply."""
        return cls.from_values(agent_id, [h.get(f.encode()) for f in _FIELDS])

    def effective_breaker(self, now_ms: int) -> str:
        """The breaker state with the open interval's expiry applied."""
        if self.breaker == "OPEN" and now_ms >= self.open_until_ms:
            return "HALF_OPEN"
        return self.breaker

    def is_ejected(self, now_ms: int) -> bool:
        """True while outlier detection keeps the agent out."""
        return now_ms < self.ejected_until_ms


class TargetStates:
    """This replica's view of every target's state, by agent id."""

    def __init__(self) -> None:
        self._by_id: dict[str, TargetState] = {}
        # When this replica first saw each tripped breaker (OPEN or HALF_OPEN)
        # that has not closed since: a dead target cycles OPEN -> HALF_OPEN ->
        # OPEN every open interval, so no single state lasts long.
        self._tripped_since_ms: dict[str, int] = {}

    def get(self, agent_id: str) -> TargetState | None:
        """The state of one agent, None when it was never called."""
        return self._by_id.get(agent_id)

    def merge(self, fresh: Mapping[str, TargetState], ids: Iterable[str]) -> None:
        """Take Redis' states for `ids`; ids without a state in Redis are reset."""
        for aid in ids:
            st = fresh.get(aid)
            if st is None:
                self._by_id.pop(aid, None)
            else:
                self._by_id[aid] = st

    def put(self, st: TargetState) -> None:
        """Take one state, as returned by `record`."""
        self._by_id[st.agent_id] = st

    def counts(self, now_ms: int) -> dict[str, int]:
        """How many known targets are in each breaker state (bounded metrics)."""
        out = {"CLOSED": 0, "OPEN": 0, "HALF_OPEN": 0}
        for st in self._by_id.values():
            out[st.effective_breaker(now_ms)] += 1
        return out

    def longest_tripped_s(self, now_ms: int) -> float:
        """Seconds the longest-tripped breaker has stayed out of CLOSED, 0.0 when none is.

        Call it periodically: a breaker counts from the first call that saw it
        OPEN or HALF_OPEN, and resets once it is seen CLOSED (or forgotten).
        """
        since = self._tripped_since_ms
        for aid in [a for a in since if a not in self._by_id]:
            del since[aid]
        for aid, st in self._by_id.items():
            if st.effective_breaker(now_ms) == "CLOSED":
                since.pop(aid, None)
            else:
                since.setdefault(aid, now_ms)
        return max((now_ms - t for t in since.values()), default=0) / 1000.0

    def ejected_count(self, now_ms: int) -> int:
        """How many known targets are ejected now."""
        return sum(1 for st in self._by_id.values() if st.is_ejected(now_ms))


@dataclass(frozen=True)
class OutcomePolicy:
    """Breaker and outlier thresholds (see the module docstring)."""

    failure_threshold: int = 5
    open_ms: int = 30_000
    half_open_successes: int = 1
    window_ms: int = 10_000
    min_requests: int = 10
    failure_rate: float = 0.5
    base_ejection_ms: int = 30_000


def _created(values: Iterable[bytes | str | int | None]) -> bool:
    """Whether the outcome script created the state (its last value is 1).

    A router that dies between the script and the SADD leaves a state that
    ListTargetStates misses until the state expires (a day without calls) and
    is created, and indexed, again; the breaker itself works all along.
    """
    v = list(values)
    return len(v) > len(_FIELDS) and int(v[len(_FIELDS)] or 0) == 1


class OutcomeRecorder:
    """Applies call outcomes to the shared target state in Redis.

    Args:
        redis: the router's Redis.
        policy: thresholds.
    """

    def __init__(self, redis: aioredis.Redis, policy: OutcomePolicy) -> None:
        self._redis = redis
        self._policy = policy
        self._script = redis.register_script(_RECORD)

    async def record(
        self, agent_id: str, *, ok: bool, now_ms: int | None = None, count: int = 1
    ) -> TargetState:
        """Apply one outcome (or `count` successes at once) and return the agent's new state.

        Raises:
            ValueError: `count` > 1 for a failure (failures are applied one by one).
        """
        if count > 1 and not ok:
            raise ValueError("failures are recorded one at a time")
        p = self._policy
        now = int(time.time() * 1000) if now_ms is None else now_ms
        values = await self._script(
            keys=[keys.target(agent_id)],
            args=[
                agent_id,
                "1" if ok else "0",
                now,
                p.failure_threshold,
                p.open_ms,
                p.half_open_successes,
                p.window_ms,
                p.min_requests,
                p.failure_rate,
                p.base_ejection_ms,
                MAX_EJECTION_MS,
                count,
            ],
        )
        if _created(values):
            await self._redis.sadd(keys.TARGETS, agent_id)
        return TargetState.from_values(agent_id, values)

    async def record_successes(
        self, counts: Mapping[str, int], *, now_ms: int | None = None
    ) -> list[TargetState]:
        """Apply `counts[agent_id]` successes to each agent, all in one round
        trip (a pipeline of the same script `record` runs, one call per agent).

        Returns:
            The agents' new states, in `counts` order.

        Raises:
            redis.exceptions.RedisError: Redis failed. Should Redis drop its
            script cache while the batch runs, the batch is sent again and a
            few successes may count twice; these are statistics for the
            breaker and outlier detection, where that is harmless.
        """
        p = self._policy
        now = int(time.time() * 1000) if now_ms is None else now_ms
        ids = list(counts)
        rows = await call_many(self._script, [
            (
                [keys.target(aid)],
                [aid, "1", now, p.failure_threshold, p.open_ms, p.half_open_successes,
                 p.window_ms, p.min_requests, p.failure_rate, p.base_ejection_ms,
                 MAX_EJECTION_MS, counts[aid]],
            )
            for aid in ids
        ])
        if created := [aid for aid, v in zip(ids, rows, strict=True) if _created(v)]:
            await self._redis.sadd(keys.TARGETS, *created)
        return [TargetState.from_values(aid, v) for aid, v in zip(ids, rows, strict=True)]

    async def list_states(self, *, after: str, limit: int) -> tuple[list[TargetState], str]:
        """Target states ordered by agent id, after `after`; returns (page, last id or "")."""
        ids = sorted(
            m.decode() if isinstance(m, bytes) else m
            for m in await self._redis.smembers(keys.TARGETS)
        )
        ids = [i for i in ids if i > after]
        page, more = ids[:limit], len(ids) > limit
        async with self._redis.pipeline(transaction=False) as pipe:
            for aid in page:
                pipe.hmget(keys.target(aid), _FIELDS)
            raw = await pipe.execute()
        states = [
            TargetState.from_values(aid, vals)
            for aid, vals in zip(page, raw, strict=True)
            if vals[0] is not None
        ]
        return states, (page[-1] if more and page else "")


#: Window and minimum request count that turn the script's outlier detection
#: off: the window never rolls over (so ws/wf count every outcome since
#: creation) and no window ever reaches the minimum.
_NO_WINDOW = 2**53


class NamedBreakerRecorder:
    """Applies outcomes to the SafetyService's named breakers with the same
    script (and so the same state machine) as the per-agent breakers: one key
    (`am:rt:cb:{name}`), outlier detection off, no expiry.

    Args:
        redis: the router's Redis.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(_RECORD)

    async def record(
        self,
        key: str,
        name: str,
        *,
        ok: bool,
        failure_threshold: int,
        open_ms: int,
        half_open_successes: int,
        now_ms: int | None = None,
    ) -> TargetState:
        """Apply one outcome to the breaker at `key` and return its new state.

        Args:
            key: the breaker's hash (`keys.named_breaker(name)`).
            name: the breaker's name (the returned state's `agent_id`).
            ok: the guarded call succeeded.
            failure_threshold: consecutive failures that open it.
            open_ms: how long it stays OPEN, ms.
            half_open_successes: successes in HALF_OPEN that close it.
            now_ms: wall clock, ms since the epoch; default now.

        Returns:
            The state; `window_successes` / `window_failures` count every
            outcome since creation.
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        values = await self._script(
            keys=[key],
            args=[
                name,
                "1" if ok else "0",
                now,
                failure_threshold,
                open_ms,
                half_open_successes,
                _NO_WINDOW,
                _NO_WINDOW,
                1.0,
                0,
                0,
                1,
                0,
            ],
        )
        return TargetState.from_values(name, values)
