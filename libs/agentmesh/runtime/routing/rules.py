"""Route rules and safety rules: stored in Redis, compiled in memory.

Both live in Redis hashes (`am:rt:rules`, `am:rt:safety`, name → serialized
proto). A write bumps `am:rt:gen` in the same MULTI, and every replica polls
that counter and reloads, so all replicas converge within `gen_poll_ms`.
Conditions are compiled once, on load; a rule that exists always compiles,
because Create rejects what does not.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from agentmesh.router.v1 import router_pb2
from agentmesh.runtime.cel import CelError, CelEvalError, Expression, route_condition
from agentmesh.runtime.errors import AlreadyExists, InvalidArgument, NotFound
from agentmesh.runtime.routing import keys
from agentmesh.runtime.routing.candidates import PoolSpec

T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


@dataclass(slots=True)
class CompiledRule:
    """A route rule ready to evaluate."""

    rule: router_pb2.RouteRule
    condition: Expression
    pool: PoolSpec


@dataclass(slots=True)
class CompiledSafety:
    """A safety rule ready to evaluate."""

    rule: router_pb2.SafetyRule
    condition: Expression
    types: frozenset[str]


def _b(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def check_name(name: str, field: str) -> None:
    """Raises InvalidArgument unless `name` is 1-128 chars of [A-Za-z0-9_.-]."""
    if not _NAME.match(name):
        raise InvalidArgument(
            f"{field} must be 1-128 characters of [A-Za-z0-9_.-]",
            field_violations={field: f"got {name!r}"},
        )


def compile_condition(source: str, field: str) -> Expression:
    """Compile a condition (agentmesh.runtime.cel) or raise InvalidArgument naming `field`."""
    try:
        return route_condition(source)
    except CelError as e:
        raise InvalidArgument(f"invalid {field}: {e}", field_violations={field: str(e)}) from e


#: Built once: Strategy.values() makes a new list on every call, and Route
#: checks the strategy of every request.
_STRATEGIES = frozenset(router_pb2.Strategy.values())


def check_strategy(value: int, field: str) -> None:
    """Raises InvalidArgument for a value outside the Strategy enum."""
    if value not in _STRATEGIES:
        raise InvalidArgument(
            f"unknown strategy {value}",
            field_violations={field: f"{value} is not a Strategy"},
        )


def pool_of_rule(rule: router_pb2.RouteRule) -> PoolSpec:
    """The candidate pool a rule sends to."""
    if rule.target_ids:
        return PoolSpec.of_ids(rule.target_ids)
    return PoolSpec.of_selector(rule.selector)


def encode_token(last: str) -> str:
    """Opaque page token that resumes after `last`."""
    return base64.urlsafe_b64encode(last.encode()).decode()


def decode_token(token: str) -> str:
    """The name a page token resumes after; raises InvalidArgument when malformed."""
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(
            "bad page_token", field_violations={"page_token": "not a token from this API"}
        ) from e


def page_size(requested: int) -> int:
    """Clamp a requested page size; raises InvalidArgument when negative."""
    if requested < 0:
        raise InvalidArgument("page_size must be >= 0", field_violations={"page_size": "negative"})
    return min(requested or DEFAULT_PAGE, MAX_PAGE)


class RuleStore:
    """Route and safety rules of the mesh.

    Args:
        redis: the router's Redis.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        #: Route rules in evaluation order: priority descending, then name.
        self.route_rules: list[CompiledRule] = []
        self.safety_rules: list[CompiledSafety] = []
        #: (rules gen, safety gen) last loaded from Redis.
        self.gen: tuple[int, int] = (-1, -1)
        #: Rule sets this process has loaded, counting up with every load: what
        #: the route and verdict caches are valid for. Not `gen`, which repeats
        #: after a Redis flush and so could revive a verdict of older rules.
        self.loads = 0

    # ---- loading ----------------------------------------------------------
    async def poll(self) -> bool:
        """Reload when another replica (or this one) changed rules; True when reloaded."""
        raw = await self._redis.hmget(keys.GEN, ["rules", "safety"])
        gen = (int(raw[0] or 0), int(raw[1] or 0))
        if gen == self.gen:
            return False
        await self._load(gen)
        return True

    async def _load(self, gen: tuple[int, int]) -> None:
        async with self._redis.pipeline(transaction=True) as p:
            p.hgetall(keys.RULES)
            p.hgetall(keys.SAFETY)
            rules_raw, safety_raw = await p.execute()
        rules = []
        for raw in rules_raw.values():
            r = router_pb2.RouteRule.FromString(_b(raw))
            rules.append(CompiledRule(r, route_condition(r.condition), pool_of_rule(r)))
        rules.sort(key=lambda c: (-c.rule.priority, c.rule.name))
        safety = []
        for raw in safety_raw.values():
            s = router_pb2.SafetyRule.FromString(_b(raw))
            cond = route_condition(s.condition)
            safety.append(CompiledSafety(s, cond, frozenset(s.message_types)))
        safety.sort(key=lambda c: c.rule.name)
        self.route_rules, self.safety_rules, self.gen = rules, safety, gen
        self.loads += 1

    # ---- evaluation -----------------------------------------------------------
    def match(self, act: dict[str, Any]) -> tuple[CompiledRule | None, int]:
        """The first rule whose condition holds, and how many failed to evaluate."""
        errors = 0
        for c in self.route_rules:
            try:
                if c.condition.evaluate_bool(act):
                    return c, errors
            except CelEvalError:
                errors += 1
        return None, errors

    def violations(
        self, act: dict[str, Any], message_type: str
    ) -> list[router_pb2.SafetyViolation]:
        """Every safety rule the message breaks; an evaluation error is a violation."""
        out = []
        for c in self.safety_rules:
            if c.types and message_type not in c.types:
                continue
            try:
                ok = c.condition.evaluate_bool(act)
                why = c.rule.description or f"condition {c.rule.condition!r} is false"
            except CelEvalError as e:
                ok, why = False, f"condition could not be evaluated: {e}"
            if not ok:
                out.append(
                    router_pb2.SafetyViolation(
                        rule_name=c.rule.name, level=c.rule.level, description=why
                    )
                )
        return out

    # ---- route rule CRUD ------------------------------------------------------
    async def create_route_rule(self, rule: router_pb2.RouteRule) -> router_pb2.RouteRule:
        """Validate and store a rule.

        Raises:
            InvalidArgument: bad name, CEL, strategy or target set.
            AlreadyExists: the name is taken.
        """
        check_name(rule.name, "rule.name")
        compile_condition(rule.condition, "rule.condition")
        check_strategy(rule.strategy, "rule.strategy")
        sel = rule.selector
        if not rule.target_ids and not (sel.capabilities or sel.service_types or sel.tags):
            raise InvalidArgument(
                "a rule needs target_ids or a selector with capabilities, service types or tags",
                field_violations={"rule.target_ids": "empty, and the selector is empty"},
            )
        if any(not t for t in rule.target_ids):
            raise InvalidArgument(
                "target_ids must not contain empty ids",
                field_violations={"rule.target_ids": "empty id"},
            )
        stored = router_pb2.RouteRule()
        stored.CopyFrom(rule)
        stored.create_time.GetCurrentTime()
        await self._put(keys.RULES, "rules", rule.name, stored.SerializeToString(), "route rule")
        return stored

    async def get_route_rule(self, name: str) -> router_pb2.RouteRule:
        """One rule; raises NotFound."""
        raw = await self._redis.hget(keys.RULES, name)
        if raw is None:
            raise NotFound(
                f"route rule {name!r} not found", resource_type="RouteRule", resource_name=name
            )
        return router_pb2.RouteRule.FromString(_b(raw))

    async def list_route_rules(
        self, *, size: int, token: str
    ) -> tuple[list[router_pb2.RouteRule], str]:
        """A page of rules in evaluation order; the token holds the last name's position."""
        rules = [
            router_pb2.RouteRule.FromString(_b(v))
            for v in (await self._redis.hgetall(keys.RULES)).values()
        ]
        rules.sort(key=lambda r: (-r.priority, r.name))
        order = [f"{r.priority:+012d}/{r.name}" for r in rules]
        return _page(rules, order, size=size, token=token, descending_key=True)

    async def delete_route_rule(self, name: str) -> None:
        """Remove a rule; raises NotFound."""
        await self._delete(keys.RULES, "rules", name, "RouteRule")

    # ---- safety rule CRUD -----------------------------------------------------
    async def create_safety_rule(self, rule: router_pb2.SafetyRule) -> router_pb2.SafetyRule:
        """Validate and store a guardrail.

        Raises:
            InvalidArgument: bad name, CEL or level.
            AlreadyExists: the name is taken.
        """
        check_name(rule.name, "rule.name")
        compile_condition(rule.condition, "rule.condition")
        if rule.level not in (router_pb2.SAFETY_LEVEL_WARNING, router_pb2.SAFETY_LEVEL_CRITICAL):
            raise InvalidArgument(
                "level must be SAFETY_LEVEL_WARNING or SAFETY_LEVEL_CRITICAL",
                field_violations={"rule.level": f"got {rule.level}"},
            )
        stored = router_pb2.SafetyRule()
        stored.CopyFrom(rule)
        stored.create_time.GetCurrentTime()
        await self._put(keys.SAFETY, "safety", rule.name, stored.SerializeToString(), "safety rule")
        return stored

    async def get_safety_rule(self, name: str) -> router_pb2.SafetyRule:
        """One guardrail; raises NotFound."""
        raw = await self._redis.hget(keys.SAFETY, name)
        if raw is None:
            raise NotFound(
                f"safety rule {name!r} not found", resource_type="SafetyRule", resource_name=name
            )
        return router_pb2.SafetyRule.FromString(_b(raw))

    async def list_safety_rules(
        self, *, size: int, token: str
    ) -> tuple[list[router_pb2.SafetyRule], str]:
        """A page of guardrails by name."""
        rules = [
            router_pb2.SafetyRule.FromString(_b(v))
            for v in (await self._redis.hgetall(keys.SAFETY)).values()
        ]
        rules.sort(key=lambda r: r.name)
        return _page(rules, [r.name for r in rules], size=size, token=token)

    async def delete_safety_rule(self, name: str) -> None:
        """Remove a guardrail; raises NotFound."""
        await self._delete(keys.SAFETY, "safety", name, "SafetyRule")

    # ---- storage ----------------------------------------------------------------
    async def _put(self, hkey: str, gen_field: str, name: str, raw: bytes, what: str) -> None:
        async with self._redis.pipeline(transaction=True) as p:
            p.hsetnx(hkey, name, raw)
            p.hincrby(keys.GEN, gen_field, 1)
            created, _ = await p.execute()
        if not created:
            raise AlreadyExists(f"{what} {name!r} already exists")
        await self.poll()

    async def _delete(self, hkey: str, gen_field: str, name: str, kind: str) -> None:
        async with self._redis.pipeline(transaction=True) as p:
            p.hdel(hkey, name)
            p.hincrby(keys.GEN, gen_field, 1)
            removed, _ = await p.execute()
        if not removed:
            raise NotFound(f"{kind} {name!r} not found", resource_type=kind, resource_name=name)
        await self.poll()


def _page(
    items: Sequence[T],
    order: Sequence[str],
    *,
    size: int,
    token: str,
    descending_key: bool = False,
) -> tuple[list[T], str]:
    after = decode_token(token)
    start = 0
    if after:
        start = next((i + 1 for i, k in enumerate(order) if k == after), len(order))
        # the named item was deleted meanwhile: resume at the next key in order
        if start == len(order) and after not in order:
            start = sum(1 for k in order if _before(k, after, descending_key))
    page = list(items[start : start + size])
    more = start + size < len(items)
    return page, (encode_token(order[start + size - 1]) if more else "")


def _before(k: str, after: str, descending: bool) -> bool:
    if descending:
        # order strings sort by (-priority, name); compare on the same tuple
        return _rank(k) <= _rank(after)
    return k <= after


def _rank(k: str) -> tuple[int, str]:
    prio, _, name = k.partition("/")
    return (-int(prio), name)
