"""The routing decision: safety rules, rule match, candidate pool, eligibility
and strategy, with the route cache in front of the CEL work.

Route cache: key = a digest of the RouteMessage (below) plus the requested
strategy; value = the matched rule, the pool, and the safety
violations, i.e. everything CEL decides. An entry is valid while the rule set
(`RuleStore.loads`) and the health generation are those it was made under,
and for at most `route_cache_ttl_ms`; so creating or deleting a rule, or any
change in which agents are eligible, invalidates the whole cache at once.

Verdict cache, behind it: key = the message's digest; value = what
CEL alone decides (the matched rule and the safety violations), valid while
the rule set is the one it was made under and for no set time, since a CEL
verdict depends on nothing else (the activation is the message alone and the
dialect has no clock). A route-cache entry that expired, or that a health
change invalidated, is rebuilt from it without evaluating any expression
again: at most one CEL evaluation per distinct message and rule set, instead
of one per message every `route_cache_ttl_ms` (which, for 100 repeated
operations under six safety rules, was a fifth of the router's CPU in
perf/router/bench_safety.py). Both caches hold at most `route_cache_size`
entries, least recently used out first; CEL_ERRORS counts evaluations, so a
verdict served from the cache adds nothing to it.

Both key on the 128-bit BLAKE2b digest of the message's deterministic
serialization rather than on the bytes themselves, so an entry costs the same
for a 32 KB message as for a 100-byte one (a full cache of large messages
would otherwise hold hundreds of MB). Two distinct messages share a key with
probability about n^2 / 2^129 for n entries (1e-31 at 10,000), far below any
hardware error rate; the digest costs well under a microsecond per message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.cel import route_activation as activation
from agentmesh.runtime.errors import (
    ErrorReason,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    error_info,
)
from agentmesh.runtime.redis_errors import is_redis_down, redis_unavailable
from agentmesh.runtime.routing import metrics
from agentmesh.runtime.routing.affinity import AffinityStore
from agentmesh.runtime.routing.candidates import Candidate, Eligible, PoolSpec, PoolStore
from agentmesh.runtime.routing.rules import CompiledRule, RuleStore, check_strategy
from agentmesh.runtime.routing.settings import RoutingSettings
from agentmesh.runtime.routing.strategies import Picker
from agentmesh.runtime.routing.targets import (
    OutcomePolicy,
    OutcomeRecorder,
    TargetState,
    TargetStates,
)
from agentmesh.runtime.tasks import cancel_and_wait

log = logging.getLogger("agentmesh.router.engine")

R = router_pb2
STRATEGY_LABEL: dict[int, str] = {
    v: R.Strategy.Name(v).removeprefix("STRATEGY_") for v in R.Strategy.values()
}


@dataclass(slots=True)
class Decision:
    """A routing decision.

    Attributes:
        targets: chosen candidates, best first.
        strategy: the strategy applied.
        rule: the rule that matched, or None.
        pool: the pool the targets came from.
        eligible: the eligible set the strategy picked from.
        cache_hit: whether CEL work was served from the route cache.
        violations: non-blocking safety violations.
        explicit_order: the pool has an explicit id order (FAILOVER).
    """

    targets: list[Candidate]
    strategy: router_pb2.Strategy.ValueType
    rule: CompiledRule | None
    pool: PoolSpec
    eligible: Eligible
    cache_hit: bool
    violations: list[R.SafetyViolation] = field(default_factory=list)
    explicit_order: bool = False

    @property
    def rule_name(self) -> str:
        """The matched rule's name, or ""."""
        return self.rule.rule.name if self.rule else ""


@dataclass(slots=True)
class _Entry:
    gen: tuple[int, int]
    expires: float
    rule: CompiledRule | None
    pool: PoolSpec
    violations: list[R.SafetyViolation]
    blocking: list[R.SafetyViolation]


def message_pool(msg: R.RouteMessage) -> PoolSpec:
    """The pool a message names itself: target_ids, else selector, else the
    agents with capability `message_type`.

    Raises:
        InvalidArgument: when the message names no candidates at all.
    """
    if msg.target_ids:
        if any(not t for t in msg.target_ids):
            raise InvalidArgument(
                "target_ids must not contain empty ids",
                field_violations={"message.target_ids": "empty id"},
            )
        return PoolSpec.of_ids(msg.target_ids)
    sel = msg.selector
    if sel.capabilities or sel.service_types or sel.tags:
        return PoolSpec.of_selector(sel)
    if msg.message_type:
        return PoolSpec.of_selector(common_pb2.AgentSelector(capabilities=[msg.message_type]))
    raise InvalidArgument(
        "the message names no candidates: set message_type, target_ids or selector",
        field_violations={"message.message_type": "empty, and no target_ids or selector"},
    )


class RouteEngine:
    """Everything a routing decision needs, for one router replica.

    Args:
        redis: the router's Redis (also holds the registry state).
        settings: router tunables.
        seed: random seed for the strategies (tests).
    """

    def __init__(
        self, redis: aioredis.Redis, settings: RoutingSettings, *, seed: int | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.states = TargetStates()
        self.pools = PoolStore(
            redis,
            self.states,
            state_ttl_ms=settings.state_ttl_ms,
            panic_threshold=settings.panic_threshold,
            max_ejection_percent=settings.outlier_max_ejection_percent,
            max_load_age_ms=settings.max_load_age_ms,
        )
        self.rules = RuleStore(redis)
        self.affinity = AffinityStore(redis, ttl_s=settings.affinity_ttl_s)
        self.picker = Picker(vnodes=settings.vnodes, seed=seed)
        self.outcomes = OutcomeRecorder(
            redis,
            OutcomePolicy(
                failure_threshold=settings.breaker_failure_threshold,
                open_ms=settings.breaker_open_ms,
                half_open_successes=settings.breaker_half_open_successes,
                window_ms=settings.outlier_window_ms,
                min_requests=settings.outlier_min_requests,
                failure_rate=settings.outlier_failure_rate,
                base_ejection_ms=settings.outlier_base_ejection_ms,
            ),
        )
        name = settings.default_strategy.upper().removeprefix("STRATEGY_")
        if "STRATEGY_" + name not in R.Strategy.keys() or name == "UNSPECIFIED":
            raise ValueError(f"unknown default strategy {settings.default_strategy!r}")
        self.default_strategy = R.Strategy.Value("STRATEGY_" + name)
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        #: message digest -> (RuleStore.loads, rule, violations); see the module doc.
        self._verdicts: OrderedDict[
            bytes, tuple[int, CompiledRule | None, list[R.SafetyViolation]]
        ] = OrderedDict()
        self._cache_ttl_s = settings.route_cache_ttl_ms / 1000.0
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        """Load rules and start the background refreshers (Redis may be down:
        the poller keeps trying)."""
        try:
            await self.rules.poll()
        except redis.RedisError as e:
            log.warning("rules not loaded yet", extra={"error": repr(e)})
        self.pools.start()
        self._task = asyncio.create_task(self._poll_loop(), name="router-gen-poll")

    async def stop(self) -> None:
        """Stop the background refreshers."""
        await self.pools.stop()
        if self._task:
            # Not a single cancel(): redis-py's wait_for can swallow it on 3.11
            # and the loop would run on, hanging the SIGTERM shutdown.
            await cancel_and_wait(self._task)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gen_poll_ms / 1000.0)
            try:
                await self.rules.poll()
            except Exception as e:  # keep polling through Redis blips and bad data
                log.warning("rule poll failed", extra={"error": repr(e)})
            now_ms = int(time.time() * 1000)
            for state, n in self.states.counts(now_ms).items():
                metrics.BREAKER_TARGETS.labels(state).set(n)
            metrics.EJECTED_TARGETS.set(self.states.ejected_count(now_ms))
            metrics.BREAKER_LONGEST_OPEN.set(self.states.longest_tripped_s(now_ms))

    # ---- checks -------------------------------------------------------------
    def check_size(self, msg: R.RouteMessage) -> None:
        """Raises ResourceExhausted when the message is over the size limit."""
        size = msg.ByteSize()
        if size > self.settings.max_message_bytes:
            raise ResourceExhausted(
                f"message is {size} bytes; the limit is {self.settings.max_message_bytes}",
                quota_subject="message.size_bytes",
                quota_description=f"at most {self.settings.max_message_bytes} bytes",
            )

    # ---- deciding -----------------------------------------------------------
    def _resolve(self, msg: R.RouteMessage, strategy: int) -> tuple[_Entry, bool]:
        loads = self.rules.loads
        gen = (loads, self.pools.health_gen)
        raw = hashlib.blake2b(msg.SerializeToString(deterministic=True), digest_size=16).digest()
        key = raw + bytes((strategy & 0xFF,))
        now = time.monotonic()
        e = self._cache.get(key)
        if e is not None and e.gen == gen and e.expires > now:
            self._cache.move_to_end(key)
            metrics.CACHE_HITS.inc()
            return e, True
        metrics.CACHE_MISSES.inc()
        rule: CompiledRule | None = None
        violations: list[R.SafetyViolation] = []
        if self.rules.route_rules or self.rules.safety_rules:
            verdict = self._verdicts.get(raw)
            if verdict is not None and verdict[0] == loads:
                self._verdicts.move_to_end(raw)
                rule, violations = verdict[1], verdict[2]
            else:
                act = activation(msg)
                violations = self.rules.violations(act, msg.message_type)
                rule, errors = self.rules.match(act)
                if errors:
                    metrics.CEL_ERRORS.inc(errors)
                self._verdicts[raw] = (loads, rule, violations)
                if len(self._verdicts) > self.settings.route_cache_size:
                    self._verdicts.popitem(last=False)
        halt = self.settings.safety_halt_on_critical
        blocking = [v for v in violations if halt and v.level == R.SAFETY_LEVEL_CRITICAL]
        passing = [v for v in violations if v not in blocking]
        pool = rule.pool if rule is not None else message_pool(msg)
        e = _Entry(gen, now + self._cache_ttl_s, rule, pool, passing, blocking)
        self._cache[key] = e
        if len(self._cache) > self.settings.route_cache_size:
            self._cache.popitem(last=False)
        return e, False

    def _enforce(self, violations: list[R.SafetyViolation]) -> list[R.SafetyViolation]:
        for v in violations:
            metrics.SAFETY_VIOLATIONS.labels(R.SafetyLevel.Name(v.level)).inc()
        halt = self.settings.safety_halt_on_critical
        blocking = [v for v in violations if halt and v.level == R.SAFETY_LEVEL_CRITICAL]
        if blocking:
            raise FailedPrecondition(
                f"{len(blocking)} critical safety rule(s) violated: "
                + "; ".join(f"{v.rule_name}: {v.description}" for v in blocking),
                violations=[("SAFETY", v.rule_name, v.description) for v in blocking],
                details=[
                    error_info(
                        ErrorReason.ERROR_REASON_SAFETY_VIOLATION,
                        metadata={"rules": ",".join(v.rule_name for v in blocking)},
                    )
                ],
            )
        return [v for v in violations if v not in blocking]

    def evaluate_safety(
        self, msg: R.RouteMessage
    ) -> tuple[list[R.SafetyViolation], list[R.SafetyViolation]]:
        """The safety step of `decide` as a dry run (SafetyService.ValidateOperation):
        the same evaluation and route cache, nothing enforced or counted.

        Returns:
            (violations a real call would pass with, violations it would be
            blocked for); the second is empty unless halting on CRITICAL.

        Raises:
            InvalidArgument: the message names no candidates at all.
        """
        entry, _ = self._resolve(msg, R.STRATEGY_UNSPECIFIED)
        return list(entry.violations), list(entry.blocking)

    async def decide(
        self, req: R.RouteRequest, *, allow_broadcast: bool = True, enforce_safety: bool = True
    ) -> Decision:
        """Route one message.

        Args:
            req: the message and the requested strategy.
            allow_broadcast: False refuses STRATEGY_BROADCAST (Invoke).
            enforce_safety: False skips the safety rules (compensations,
                which undo an effect that already passed them).

        Raises:
            InvalidArgument: unknown strategy, missing keys, bad selector.
            FailedPrecondition: a CRITICAL safety violation (when halting).
            Unavailable: no eligible target (NO_HEALTHY_TARGET), no rule for
                CONTENT_BASED (NO_MATCHING_RULE), Redis down (REDIS_DOWN).
        """
        msg = req.message
        if req.strategy:
            check_strategy(req.strategy, "strategy")
        entry, hit = self._resolve(msg, req.strategy)
        if enforce_safety and (entry.violations or entry.blocking):
            self._enforce([*entry.blocking, *entry.violations])
        rule = entry.rule
        strategy = req.strategy or (rule.rule.strategy if rule else None) or self.default_strategy
        if strategy == R.STRATEGY_BROADCAST and not allow_broadcast:
            raise InvalidArgument(
                "BROADCAST cannot be used with Invoke; use ScatterGather",
                field_violations={"strategy": "BROADCAST"},
            )
        el = self.pools.peek(entry.pool)
        if el is None:
            el = await self._load(entry.pool)
        if not el.candidates:
            raise Unavailable(
                f"no healthy target among {el.total} candidate(s) of pool {entry.pool.key}"
                + (f" (rule {rule.rule.name})" if rule else ""),
                reason=ErrorReason.ERROR_REASON_NO_HEALTHY_TARGET,
                metadata={
                    "pool": entry.pool.key,
                    "candidates": str(el.total),
                    "rule": rule.rule.name if rule else "",
                    **{f"skipped_{k}": str(v) for k, v in sorted(el.skipped.items())},
                },
            )
        if el.panic:
            metrics.PANIC.inc()
        targets = await self._pick(strategy, msg, req.max_targets, rule, entry.pool, el)
        return Decision(
            targets,
            strategy,
            rule,
            entry.pool,
            el,
            hit,
            list(entry.violations),
            explicit_order=entry.pool.ids is not None,
        )

    async def _load(self, pool: PoolSpec) -> Eligible:
        try:
            return await self.pools.eligible(pool)
        except ValueError as e:
            raise InvalidArgument(str(e), field_violations={"selector": str(e)}) from e
        except redis.RedisError as e:
            # mapped here too: saga and swarm drivers decide outside any RPC handler
            if not is_redis_down(e):
                raise
            raise redis_unavailable(e, action="cannot read the registry state") from e

    async def _pick(
        self,
        strategy: int,
        msg: R.RouteMessage,
        max_targets: int,
        rule: CompiledRule | None,
        pool: PoolSpec,
        el: Eligible,
    ) -> list[Candidate]:
        p = self.picker
        if strategy == R.STRATEGY_ROUND_ROBIN:
            return [p.round_robin(pool.key, el)]
        if strategy == R.STRATEGY_LEAST_LOADED:
            return [p.least_loaded(el)]
        if strategy == R.STRATEGY_WEIGHTED_RANDOM:
            return [p.weighted_random(el)]
        if strategy == R.STRATEGY_PRIORITY:
            return [p.priority(el, msg.priority)]
        if strategy == R.STRATEGY_FAILOVER:
            return [p.ordered(el, explicit=pool.ids is not None)[0]]
        if strategy == R.STRATEGY_CONTENT_BASED:
            if rule is None:
                raise Unavailable(
                    "CONTENT_BASED routing needs a matching route rule, and none matched",
                    reason=ErrorReason.ERROR_REASON_NO_MATCHING_RULE,
                    metadata={"message_type": msg.message_type},
                )
            return [p.ordered(el, explicit=pool.ids is not None)[0]]
        if strategy == R.STRATEGY_BROADCAST:
            cands = el.candidates
            return list(cands[:max_targets] if max_targets else cands)
        if strategy == R.STRATEGY_CONSISTENT_HASH:
            if not msg.routing_key:
                raise InvalidArgument(
                    "CONSISTENT_HASH needs message.routing_key",
                    field_violations={"message.routing_key": "empty"},
                )
            return [p.consistent_hash(pool.key, el, msg.routing_key)]
        if strategy == R.STRATEGY_AFFINITY:
            key = msg.affinity_key or msg.routing_key or msg.sender_id
            if not key:
                raise InvalidArgument(
                    "AFFINITY needs message.affinity_key, routing_key or sender_id",
                    field_violations={"message.affinity_key": "empty"},
                )
            proposed = p.least_loaded(el)
            try:
                bound = await self.affinity.bind(
                    pool.key, key, proposed=proposed.agent_id, eligible=el.ids()
                )
            except redis.RedisError as e:
                # mapped here too: saga and swarm drivers decide outside any RPC handler
                if not is_redis_down(e):
                    raise
                raise redis_unavailable(e, action="cannot read affinity bindings") from e
            by_id = {c.agent_id: c for c in el.candidates} if bound != proposed.agent_id else {}
            return [by_id.get(bound, proposed)]
        raise InvalidArgument(
            f"unknown strategy {strategy}", field_violations={"strategy": str(strategy)}
        )

    def failover_order(self, d: Decision) -> list[Candidate]:
        """Who Invoke tries: the decision's targets, then the other eligible
        candidates in the strategy's fallback order (explicit or health order
        for FAILOVER and CONTENT_BASED, load order otherwise)."""
        first = d.targets
        chosen = {c.agent_id for c in first}
        if d.strategy in (R.STRATEGY_FAILOVER, R.STRATEGY_CONTENT_BASED):
            rest = self.picker.ordered(d.eligible, explicit=d.explicit_order)
        else:
            rest = self.picker.by_load(d.eligible)
        return [*first, *(c for c in rest if c.agent_id not in chosen)]

    # ---- outcomes -------------------------------------------------------------
    async def record_successes(self, counts: Mapping[str, int]) -> None:
        """Report many agents' successes in one round trip (`record` for each,
        with `ok=True` and its count). Redis errors are logged, not raised."""
        if not counts:
            return
        now_ms = int(time.time() * 1000)
        before = {a: self.states.get(a) for a in counts}
        try:
            states = await self.outcomes.record_successes(counts, now_ms=now_ms)
        except redis.RedisError as e:
            log.warning("outcomes not recorded", extra={"agents": len(counts), "error": repr(e)})
            return
        changed = False
        for st in states:
            self.states.put(st)
            old = before[st.agent_id]
            was = (
                (old.effective_breaker(now_ms), old.is_ejected(now_ms))
                if old
                else ("CLOSED", False)
            )
            changed |= (st.effective_breaker(now_ms), st.is_ejected(now_ms)) != was
        if changed:
            self.pools.invalidate()

    async def record(self, agent_id: str, *, ok: bool, count: int = 1) -> TargetState | None:
        """Report one call outcome (or `count` successes) to the breaker and
        outlier detection; when it changes eligibility, invalidate cached
        eligibility and the route cache. Redis errors are logged, not raised."""
        before = self.states.get(agent_id)
        now_ms = int(time.time() * 1000)
        try:
            st = await self.outcomes.record(agent_id, ok=ok, now_ms=now_ms, count=count)
        except redis.RedisError as e:
            log.warning("outcome not recorded", extra={"agent_id": agent_id, "error": repr(e)})
            return None
        self.states.put(st)
        old = (
            (before.effective_breaker(now_ms), before.is_ejected(now_ms))
            if before
            else ("CLOSED", False)
        )
        if (st.effective_breaker(now_ms), st.is_ejected(now_ms)) != old:
            self.pools.invalidate()
        return st
