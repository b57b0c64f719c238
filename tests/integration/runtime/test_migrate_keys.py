"""Old-layout keys renamed to the Redis Cluster layout on a real Redis: values
and TTLs kept, fencing counters carry on (a lock's next token is the old
counter + 1, a swarm's too), keys that did not move stay, a second run renames
nothing and a taken new name is left alone."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from agentmesh.runtime.migrate_keys import main, migrate
from agentmesh.server.registry.coordination_store import CoordinationStore
from agentmesh.server.swarm.store import SwarmStore

pytestmark = pytest.mark.integration

OLD_TO_NEW = {
    "am:reg:agent:a1": "am:reg:{catalog}:agent:a1",
    "am:reg:reaper:fence": "am:reg:{catalog}:reaper:fence",
    "am:reg:fence:orders": "am:reg:fence:{orders}",
    "am:reg:proposal:p1": "am:reg:proposal:{p1}",
    "am:reg:proposal:p1:votes": "am:reg:proposal:{p1}:votes",
    "am:saga:saga:s1": "am:saga:{sagas}:saga:s1",
    "am:saga:idx:all": "am:saga:{sagas}:idx:all",
    "am:swarm:fence:w1": "am:swarm:{swarms}:fence:w1",
    "am:rt:rules": "am:rt:{cfg}:rules",
    "am:rt:target:ag1": "am:rt:target:{ag1}",
}
UNMOVED = ["am:rt:targets", "am:rt:cb:{b}", "am:task:lease:{t1}", "am:agent:x:idem:k"]


async def test_old_keys_move_with_values_ttls_and_counters(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for key in [*OLD_TO_NEW, *UNMOVED]:
        r.set(key, "7")
    r.pexpire("am:saga:saga:s1", 600_000)

    report = migrate(r)
    assert sorted(report.renamed) == sorted(OLD_TO_NEW.items()) and not report.conflicts
    for old, new in OLD_TO_NEW.items():
        assert r.get(new) == "7" and not r.exists(old)
    assert all(r.get(k) == "7" for k in UNMOVED)
    assert 0 < r.pttl("am:saga:{sagas}:saga:s1") <= 600_000
    assert not migrate(r).renamed  # idempotent

    client: Any = redis.asyncio.Redis.from_url(redis_url)
    try:
        grant = await CoordinationStore(client).acquire("orders", "me", ttl_ms=5000)
        assert grant.acquired and grant.token == 8  # the old counter carried on
        lease = await SwarmStore(client).acquire("w1", owner="me", ttl_ms=5000)
        assert lease is not None and lease.token == 8
    finally:
        await client.aclose()

    # a new name already taken: the old key stays, exit code 1
    r.set("am:rt:gen", "1")
    r.set("am:rt:{cfg}:gen", "2")
    assert main(["--redis-url", redis_url]) == 1
    assert r.get("am:rt:gen") == "1" and r.get("am:rt:{cfg}:gen") == "2"
    r.close()
