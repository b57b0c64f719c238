"""A test agent for the TaskService tests, built on the agent SDK.

    python tests/integration/tasks/task_agent.py --agent-id A --port 0 --redis-url URL

It checks its own concurrency and counts effects in Redis (the SDK dedupes by
idempotency key through the same Redis, so a count above 1 means an effect
happened twice):
    HASH   am:tasktest:{agent_id}:exec  field = idempotency key, value = times run
    LIST   am:tasktest:log              "<agent_id>|<key>|<input.tag>" in the order runs began
    STRING am:tasktest:{agent_id}:cur   runs in progress now
    STRING am:tasktest:{agent_id}:max   most runs ever in progress at once
    LIST   am:tasktest:cancelled        "<agent_id>|<key>" of runs whose call was cancelled

Actions (prefix of the action name):
    fail*   FAILED_PRECONDITION (non-retryable), no effect
    flaky*  UNAVAILABLE while attempt <= input.fail_attempts (default 2), then succeed
    slow*   sleep input.delay_ms (default 1000) before the effect
    other   succeed at once
Output: {"agent": agent id, "n": effect count, "echo": the input}.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentmesh.agent.context import ActionContext
from agentmesh.agent.sdk import WILDCARD, Agent
from agentmesh.runtime.deps import create_redis
from agentmesh.runtime.errors import FailedPrecondition, Unavailable

agent = Agent(
    "task-test-agent",
    agent_type="task-test",
    version="1.0.0",
    capabilities=["task_test"],
    service_types=["test"],
)
_redis: Any = None

# Lua: one more run in progress; raise the high-water mark.
_ENTER = """
local n = redis.call('INCR', KEYS[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if n > m then redis.call('SET', KEYS[2], n) end
return n
"""


def _r() -> Any:
    global _redis
    if _redis is None:
        _redis = create_redis(agent.settings.redis_url)
    return _redis


@agent.action(WILDCARD)
async def act(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    a = ctx.action
    p = f"am:tasktest:{agent.agent_id}"
    if a.startswith("fail"):
        raise FailedPrecondition(f"action {a} always fails")
    if a.startswith("flaky") and ctx.attempt <= int(inp.get("fail_attempts", 2)):
        raise Unavailable(f"transient failure of attempt {ctx.attempt}")
    r = _r()
    await r.eval(_ENTER, 2, f"{p}:cur", f"{p}:max")
    await r.rpush("am:tasktest:log", f"{agent.agent_id}|{ctx.idempotency_key}|{inp.get('tag', '')}")
    try:
        if a.startswith("slow"):
            await asyncio.sleep(float(inp.get("delay_ms", 1000)) / 1000.0)
        n = int(await r.hincrby(f"{p}:exec", ctx.idempotency_key, 1))
    except asyncio.CancelledError:
        await r.rpush("am:tasktest:cancelled", f"{agent.agent_id}|{ctx.idempotency_key}")
        raise
    finally:
        await r.decr(f"{p}:cur")
    return {"agent": agent.agent_id, "n": n, "echo": inp}


if __name__ == "__main__":
    agent.run()
