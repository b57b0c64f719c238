"""A test agent for the saga tests, built on the agent SDK; behaviour by action name.

    python tests/integration/saga/saga_agent.py --agent-id A --port 0 --redis-url URL

Every action and compensation that takes effect is counted in Redis (the SDK
dedupes by idempotency key through the same Redis, so a count above 1 means an
effect happened twice):
    HASH am:saga:test:{agent_id}:exec   field = idempotency key, value = times run
    HASH am:saga:test:{agent_id}:comp   same, for compensations
    LIST am:saga:test:{agent_id}:log    "exec|<key>" / "comp|<key>" in the order they ran
    LIST am:saga:test:{agent_id}:tries  "<key>|<attempt>|<unix ms>" for every attempt received

Actions (prefix of the action name):
    fail*   FAILED_PRECONDITION (non-retryable), no effect
    flaky*  UNAVAILABLE while attempt <= input.fail_attempts (default 2), then succeed
    slow*   sleep input.delay_ms (default 1500) first
    hang*   sleep 3 s first (longer than the tests' step timeouts)
    meta*   succeed; the output also holds "metadata" (the request's metadata)
    other   succeed at once
Compensations: cfail* always UNAVAILABLE; cslow* sleep 1500 ms first; others succeed.
Output: {"action", "n" (effect count), "echo" (the input)}.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentmesh.agent.context import ActionContext
from agentmesh.agent.sdk import WILDCARD, Agent
from agentmesh.runtime.deps import create_redis
from agentmesh.runtime.errors import FailedPrecondition, Unavailable

agent = Agent(
    "saga-test-agent",
    agent_type="saga-test",
    version="1.0.0",
    capabilities=["saga_test"],
    service_types=["test"],
)
_redis: Any = None


def _r() -> Any:
    global _redis
    if _redis is None:
        _redis = create_redis(agent.settings.redis_url)
    return _redis


def _prefix() -> str:
    return f"am:saga:test:{agent.agent_id}"


async def _record(kind: str, ctx: ActionContext) -> int:
    async with _r().pipeline(transaction=True) as p:
        p.hincrby(f"{_prefix()}:{kind}", ctx.idempotency_key, 1)
        p.rpush(f"{_prefix()}:log", f"{kind}|{ctx.idempotency_key}")
        n, _ = await p.execute()
    return int(n)


@agent.action(WILDCARD)
async def act(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    a = ctx.action
    await _r().rpush(
        f"{_prefix()}:tries", f"{ctx.idempotency_key}|{ctx.attempt}|{int(time.time() * 1000)}"
    )
    if a.startswith("fail"):
        raise FailedPrecondition(f"action {a} always fails")
    if a.startswith("flaky") and ctx.attempt <= int(inp.get("fail_attempts", 2)):
        raise Unavailable(f"transient failure of attempt {ctx.attempt}")
    if a.startswith("slow"):
        await asyncio.sleep(float(inp.get("delay_ms", 1500)) / 1000.0)
    if a.startswith("hang"):
        await asyncio.sleep(3.0)
    n = await _record("exec", ctx)
    if a.startswith("meta"):
        return {"action": a, "n": n, "echo": inp, "metadata": dict(ctx.metadata)}
    return {"action": a, "n": n, "echo": inp}


@agent.compensation(WILDCARD)
async def undo(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    if ctx.action.startswith("cfail"):
        raise Unavailable(f"compensation {ctx.action} always fails")
    if ctx.action.startswith("cslow"):
        await asyncio.sleep(1.5)
    n = await _record("comp", ctx)
    return {"n": n}


if __name__ == "__main__":
    agent.run()
