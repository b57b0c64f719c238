"""Ready-made agents for tests, demos and benchmarks, runnable as processes.

    python -m agentmesh.agent.testing counting --agent-id agent-count-1 --port 0 \\
        --redis-url redis://127.0.0.1:6379/6 --registry-target 127.0.0.1:50053

Kinds:
  * `noop` — every action and compensation succeeds and echoes its input
    (a compensation answers `{agent_id, compensated, count, original_output}`).
  * `counting` — every action records its effect in Redis, so a test can check
    that each idempotency key took effect exactly once:
      HASH `{prefix}:effects`        field = idempotency key (or `<action>:<uuid>`
                                     when the call had none), value = times run
      HASH `{prefix}:compensations`  same, for compensations
      LIST `{prefix}:log`            one JSON event per handler run:
                                     {agent_id, kind, action, key, attempt, ts_ms}
    `{prefix}` is `--effects-prefix`, default `am:agent:{agent_id}`. Redis is
    `--redis-url`, which also makes dedupe durable across restarts.

Every kind also evaluates the benchmark objectives `sphere`, `rastrigin`,
`rosenbrock` and `ackley` (lower is better; minimum 0 at the origin, or at all
ones for rosenbrock), and takes these failure-injection flags:
  --fail-attempts N      actions fail with UNAVAILABLE while ctx.attempt <= N
  --fail-actions a,b     these actions always fail with FAILED_PRECONDITION
  --fail-compensations a,b  these compensations always fail with UNAVAILABLE
  --fail-rate P          actions fail with UNAVAILABLE with probability P (--seed)
  --delay-ms MS          each action sleeps MS first (bounded by the deadline)
  --crash-actions a,b    the process exits (code 3) right after recording the
                         effect, before answering: a crash mid-call

The process logs `{"msg": "serving", "port": N}` once it is bound and, when
`--registry-target` is set, registered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentmesh.agent.context import ActionContext
from agentmesh.agent.sdk import WILDCARD, Agent
from agentmesh.runtime.errors import (
    ErrorReason,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

KINDS = ("noop", "counting")


# ---- objectives ---------------------------------------------------------------
def sphere(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """f(x) = Σ x_i²; shape (n, d) → (n,)."""
    return np.sum(x * x, axis=1)


def rastrigin(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """f(x) = 10d + Σ (x_i² - 10 cos 2πx_i)  (Rastrigin 1974); `params["a"]` overrides 10."""
    a = float(params.get("a", 10.0))
    return a * x.shape[1] + np.sum(x * x - a * np.cos(2 * np.pi * x), axis=1)


def rosenbrock(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """f(x) = Σ 100 (x_{i+1} - x_i²)² + (1 - x_i)²  (Rosenbrock 1960); minimum at 1."""
    return np.sum(100.0 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1.0 - x[:, :-1]) ** 2, axis=1)


def ackley(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Ackley (1987) with a=20, b=0.2, c=2π; minimum 0 at the origin."""
    d = x.shape[1]
    s1 = np.sqrt(np.sum(x * x, axis=1) / d)
    s2 = np.sum(np.cos(2 * np.pi * x), axis=1) / d
    return -20.0 * np.exp(-0.2 * s1) - np.exp(s2) + 20.0 + np.e


OBJECTIVES = {"sphere": sphere, "rastrigin": rastrigin, "rosenbrock": rosenbrock, "ackley": ackley}


def _csv(value: str) -> set[str]:
    return {v for v in value.split(",") if v}


class _Behaviour:
    """Failure injection and effect recording shared by the kinds."""

    def __init__(self, agent: Agent, kind: str) -> None:
        self.agent = agent
        self.kind = kind
        self.rng = random.Random()
        self._seeded = False
        self.redis: Any = None

    @property
    def args(self) -> argparse.Namespace:
        return self.agent.args

    @property
    def prefix(self) -> str:
        return str(self.args.effects_prefix or f"am:agent:{self.agent.agent_id}")

    def _redis(self) -> Any:
        if self.redis is None:
            url = self.agent.settings.redis_url
            if not url:
                raise FailedPrecondition("the counting agent needs --redis-url")
            from agentmesh.runtime.deps import create_redis

            self.redis = create_redis(url)
        return self.redis

    async def before_action(self, ctx: ActionContext) -> None:
        a = self.args
        if ctx.action in _csv(a.fail_actions):
            raise FailedPrecondition(f"injected permanent failure of action {ctx.action!r}")
        if ctx.attempt <= a.fail_attempts:
            raise Unavailable(
                f"injected transient failure (attempt {ctx.attempt} <= {a.fail_attempts})",
                reason=ErrorReason.ERROR_REASON_INJECTED,
            )
        if a.seed is not None and not self._seeded:
            self.rng.seed(a.seed)
            self._seeded = True
        if a.fail_rate > 0 and self.rng.random() < a.fail_rate:
            raise Unavailable("injected random failure", reason=ErrorReason.ERROR_REASON_INJECTED)
        if a.delay_ms > 0:
            delay_s = a.delay_ms / 1000.0
            left = ctx.remaining_s
            await asyncio.sleep(delay_s if left is None else min(delay_s, left))
            ctx.check_deadline()

    async def record(self, ctx: ActionContext, inp: dict[str, Any]) -> int:
        """Record one effect; returns how many times this key has taken effect."""
        if self.kind != "counting":
            return 1
        r = self._redis()
        field = ctx.idempotency_key or f"{ctx.action}:{uuid.uuid4().hex}"
        hash_key = f"{self.prefix}:{'effects' if ctx.kind == 'execute' else 'compensations'}"
        event = json.dumps(
            {"agent_id": self.agent.agent_id, "kind": ctx.kind, "action": ctx.action,
             "key": ctx.idempotency_key, "attempt": ctx.attempt,
             "ts_ms": int(time.time() * 1000)},
            separators=(",", ":"),
        )
        async with r.pipeline(transaction=True) as p:
            p.hincrby(hash_key, field, 1)
            p.rpush(f"{self.prefix}:log", event)
            count, _ = await p.execute()
        return int(count)

    def maybe_crash(self, ctx: ActionContext) -> None:
        if ctx.action in _csv(self.args.crash_actions):
            # Simulates a crash between doing the work and answering.
            os._exit(3)


def build(kind: str, agent_id: str = "agent-test-1") -> Agent:
    """An agent of `kind` (see the module docstring), with flags read by `Agent.run`.

    Raises:
        ValueError: for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    agent = Agent(
        agent_id,
        agent_type=f"test-{kind}",
        version="1.0.0",
        capabilities=[kind],
        service_types=["test"],
    )
    b = _Behaviour(agent, kind)

    @agent.action(WILDCARD)
    async def act(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await b.before_action(ctx)
        count = await b.record(ctx, inp)
        b.maybe_crash(ctx)
        return {"agent_id": agent.agent_id, "action": ctx.action, "count": count, "input": inp}

    @agent.compensation(WILDCARD)
    async def undo(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        if ctx.action in _csv(b.args.fail_compensations):
            raise Unavailable(
                f"injected failure of compensation {ctx.action!r}",
                reason=ErrorReason.ERROR_REASON_INJECTED,
            )
        count = await b.record(ctx, inp)
        return {"agent_id": agent.agent_id, "compensated": ctx.action, "count": count,
                "original_output": ctx.original_output}

    for name, fn in OBJECTIVES.items():
        agent.evaluate(name)(fn)

    @agent.evaluate("fail")
    def fail(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        raise InvalidArgument("the 'fail' objective always fails")

    agent.args = _parser(kind).parse_args([])  # defaults, for in-process use
    return agent


def _parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m agentmesh.agent.testing {kind}")
    p.add_argument("--effects-prefix", default="", help="Redis key prefix for recorded effects")
    p.add_argument("--fail-attempts", type=int, default=0)
    p.add_argument("--fail-actions", default="")
    p.add_argument("--fail-compensations", default="")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--crash-actions", default="")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m agentmesh.agent.testing <kind> [agent flags] [injection flags]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in KINDS:
        print(f"usage: python -m agentmesh.agent.testing {{{','.join(KINDS)}}} [flags]\n"
              "       (--help after the kind lists the flags)", file=sys.stderr)
        raise SystemExit(2)
    kind = args.pop(0)
    agent = build(kind, agent_id=f"agent-{kind}-{os.getpid()}")
    agent.run(args, parser=_parser(kind))


if __name__ == "__main__":
    main()
