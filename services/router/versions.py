"""Semantic-version constraints of AgentSelector.version_constraint, on top of
the `semver` library: ">=1.2.0", "<2.0.0", "=1.0.0", "^1.4" (same major),
"~2.0.1" (same minor), comma-separated for AND. Same meaning as npm's ranges."""

from __future__ import annotations

import semver


def _parse(text: str) -> semver.Version:
    parts = text.strip().lstrip("v").split(".")
    while len(parts) < 3:
        parts.append("0")
    return semver.Version.parse(".".join(parts))


def version_matches(version: str, constraint: str) -> bool:
    """True when `version` satisfies `constraint`; an unparsable version never does."""
    try:
        v = _parse(version)
        for raw in constraint.split(","):
            c = raw.strip()
            if not c:
                continue
            if c.startswith("^"):
                lo = _parse(c[1:])
                hi = lo.bump_major() if lo.major else lo.bump_minor()
                ok = lo <= v < hi
            elif c.startswith("~"):
                lo = _parse(c[1:])
                ok = lo <= v < lo.bump_minor()
            else:
                ops = (">=", "<=", "==", "!=", ">", "<", "=")
                op = next((o for o in ops if c.startswith(o)), "")
                target = _parse(c[len(op) :])
                ok = {
                    ">=": v >= target,
                    "<=": v <= target,
                    ">": v > target,
                    "<": v < target,
                    "!=": v != target,
                    "==": v == target,
                    "=": v == target,
                    "": v == target,
                }[op]
            if not ok:
                return False
        return True
    except ValueError:
        return False
