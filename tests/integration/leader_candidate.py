"""A separate process that campaigns with `client.elect(ROLE)` and, while it
leads, writes its fencing token to a fenced Redis hash every 50 ms.

    python tests/integration/leader_candidate.py REGISTRY_TARGET REDIS_URL ROLE KEY TTL_MS

Logs JSON lines on stdout: `{"msg": "serving", "port": 0, "token": N}` once
elected (the tests.procs readiness line), `{"msg": "refused", "token": N}`
for a write the store refused (a higher token wrote since), and
`{"msg": "lost", "token": N}` when the `async with` raises LockLost; then it
exits 0. The store is examples/coordination_patterns.py's FENCED_SET.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import redis.asyncio as aioredis

from agentmesh.client import Client, LockLost

# The example's fenced store, loaded by path (examples/ is not a package).
_spec = importlib.util.spec_from_file_location(
    "coordination_patterns",
    Path(__file__).resolve().parents[2] / "examples" / "coordination_patterns.py",
)
assert _spec is not None and _spec.loader is not None
_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example)
FENCED_SET: str = _example.FENCED_SET


def log(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(target: str, redis_url: str, role: str, key: str, ttl_ms: int) -> int:
    r = aioredis.Redis.from_url(redis_url)
    fenced_set = r.register_script(FENCED_SET)
    try:
        async with Client(registry=target) as c:
            try:
                async with c.elect(role, ttl_ms=ttl_ms, owner="candidate-proc") as term:
                    log(msg="serving", port=0, token=term.fencing_token)
                    for _ in range(20 * 3600):  # bounded: an hour of writes
                        if not await fenced_set(keys=[key], args=[term.fencing_token, "proc"]):
                            log(msg="refused", token=term.fencing_token)
                        await asyncio.sleep(0.05)
            except LockLost as e:
                log(msg="lost", token=e.fencing_token)
                return 0
    finally:
        await r.aclose()
    return 1


if __name__ == "__main__":
    a = sys.argv
    sys.exit(asyncio.run(main(a[1], a[2], a[3], a[4], int(a[5]))))
