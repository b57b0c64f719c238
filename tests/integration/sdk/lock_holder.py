"""A separate process that holds `client.lock(NAME)` until it loses it.

    python tests/integration/sdk/lock_holder.py REGISTRY_TARGET NAME TTL_MS

Logs one JSON line per event on stdout: `{"msg": "serving", "port": 0,
"token": N}` once the lock is held (the tests.procs readiness line), then
`{"msg": "lost", "token": N, "cause": "<error type>", "cancelled_body": bool}`
when the `async with` raises LockLost, and exits 0; it exits 1 if the body
ever ends without a LockLost.
"""

from __future__ import annotations

import asyncio
import json
import sys

from agentmesh.client import Client, LockLost


def log(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(target: str, name: str, ttl_ms: int) -> int:
    cancelled = False
    async with Client(registry=target) as c:
        try:
            async with c.lock(name, ttl_ms=ttl_ms, wait_timeout_s=10) as lease:
                log(msg="serving", port=0, token=lease.fencing_token)
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
        except LockLost as e:
            log(msg="lost", token=e.fencing_token, cause=type(e.cause).__name__,
                cancelled_body=cancelled)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
