"""Rename the keys of a Redis written before the Redis Cluster key layout.

The Cluster layout (issue 21) put hash tags into key names: the registry's
catalog moved from `am:reg:<x>` to `am:reg:{catalog}:<x>`, locks and proposals
to `am:reg:lock:{<resource>}` / `am:reg:fence:{<resource>}` /
`am:reg:proposal:{<id>}[:votes|:voters]`, the saga store to
`am:saga:{sagas}:<x>`, the swarm store to `am:swarm:{swarms}:<x>`, the
router's rules to `am:rt:{cfg}:<x>` and its target states to
`am:rt:target:{<agent id>}`. A daemon of the new layout does not see keys of
the old one, so without this step an upgrade would lose running sagas and
swarms, and fencing counters (lock tokens, saga and swarm tokens, the reaper's)
would restart at 1.

Run it once, offline, against the single Redis or Sentinel master the old
version used (Redis Cluster was not supported before, so it has nothing to
rename), with every daemon scaled to 0:

    python -m agentmesh.runtime.migrate_keys --redis-url redis://host:6379/0 [--dry-run]

RENAMENX keeps each value and its TTL and never overwrites a key of the new
layout; a key whose new name exists is reported and left alone (a daemon of the
new version already wrote it). Running it again renames nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

#: Old prefix -> new prefix of the stores that moved whole into one slot.
_WHOLE = {
    "am:saga:": "am:saga:{sagas}:",
    "am:swarm:": "am:swarm:{swarms}:",
}
_REG = "am:reg:"
_CATALOG = _REG + "{catalog}:"
_RT = "am:rt:"
_RT_CONFIG = ("rules", "safety", "gen")


def _tagged(rest: str) -> bool:
    return rest.startswith("{") and rest.endswith("}")


def new_name(key: str) -> str | None:
    """The key's name in the Cluster layout; None when it keeps its name.

    Args:
        key: a key name of the old (or new) layout.

    Returns:
        The new name, or None for keys of the new layout and keys that did
        not move (task store, agent SDK, the router's named breakers,
        limiters, buckets, affinity and its target index).
    """
    for old, new in _WHOLE.items():
        if key.startswith(old):
            return None if key.startswith(new) else new + key[len(old):]
    if key.startswith(_REG):
        rest = key[len(_REG):]
        if rest.startswith("{catalog}:"):
            return None
        for kind in ("lock:", "fence:"):
            if rest.startswith(kind):
                name = rest[len(kind):]
                return None if _tagged(name) else f"{_REG}{kind}{{{name}}}"
        if rest.startswith("proposal:"):
            pid = rest[len("proposal:"):]
            suffix = ""
            for s in (":votes", ":voters"):
                if pid.endswith(s):
                    pid, suffix = pid[: -len(s)], s
            return None if _tagged(pid) else f"{_REG}proposal:{{{pid}}}{suffix}"
        return _CATALOG + rest
    if key.startswith(_RT):
        rest = key[len(_RT):]
        if rest in _RT_CONFIG:
            return f"{_RT}{{cfg}}:{rest}"
        if rest.startswith("target:"):
            aid = rest[len("target:"):]
            return None if _tagged(aid) else f"{_RT}target:{{{aid}}}"
    return None


@dataclass
class Report:
    """What a run did: old -> new names renamed, and old names left alone
    because their new name was taken."""

    renamed: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def _candidates(client: redis.Redis) -> Iterator[str]:
    for pattern in ("am:reg:*", "am:saga:*", "am:swarm:*", "am:rt:*"):
        for raw in client.scan_iter(match=pattern, count=1000):
            yield raw.decode() if isinstance(raw, bytes) else str(raw)


def migrate(client: redis.Redis, *, dry_run: bool = False) -> Report:
    """Rename every old-layout key of the daemons to its Cluster-layout name.

    Args:
        client: a synchronous client on the single Redis / Sentinel master.
        dry_run: only report what would be renamed.

    Returns:
        The report.

    Raises:
        redis.RedisError: Redis failed; keys renamed so far stay renamed
            (running again carries on).
    """
    report = Report()
    # SCAN first, rename after: renaming during a SCAN could return a key twice.
    moves = [(k, n) for k in _candidates(client) if (n := new_name(k)) is not None]
    for old, new in moves:
        if dry_run:
            report.renamed.append((old, new))
        elif client.renamenx(old, new):
            report.renamed.append((old, new))
        else:
            report.conflicts.append((old, new))
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 when everything moved, 1 when some new names were taken."""
    ap = argparse.ArgumentParser(prog="python -m agentmesh.runtime.migrate_keys",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", required=True, help="the old version's Redis (not a cluster)")
    ap.add_argument("--dry-run", action="store_true", help="print the renames, change nothing")
    ns = ap.parse_args(argv)
    client = redis.Redis.from_url(ns.redis_url)
    try:
        report = migrate(client, dry_run=ns.dry_run)
    finally:
        client.close()
    for old, new in report.renamed:
        print(f"{'would rename' if ns.dry_run else 'renamed'} {old} -> {new}")
    for old, new in report.conflicts:
        print(f"left {old}: {new} exists", file=sys.stderr)
    print(f"{len(report.renamed)} renamed, {len(report.conflicts)} left", file=sys.stderr)
    return 1 if report.conflicts else 0


if __name__ == "__main__":
    raise SystemExit(main())
