"""Semantic-version constraints for discovery, on top of the `semver` library.

Grammar: one or more clauses separated by commas or spaces, all of which must
hold (AND). A clause is an operator and a version:

    >=1.2.0   >1.2   =1.0.0   ==1.0.0   <2   <=2.1.0   1.4.2 (same as =)
    ^1.2.3    compatible: >=1.2.3 <2.0.0; ^0.2.3 → <0.3.0; ^0.0.3 → <0.0.4
    ~1.2.3    patch-level: >=1.2.3 <1.3.0; ~1 → <2.0.0

A partial version ("1", "1.4") is padded with zeros. Caret and tilde follow
the npm node-semver rules (https://github.com/npm/node-semver#advanced-range-syntax).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import semver

Predicate = Callable[[semver.Version], bool]

_CLAUSE = re.compile(r"^(>=|<=|==|=|>|<|\^|~)?v?(\d+)(?:\.(\d+))?(?:\.(\d+))?([-+].*)?$")


class ConstraintError(ValueError):
    """A version constraint that does not parse; the message says why."""


def parse_version(text: str) -> semver.Version:
    """Parse a full semantic version such as "2.1.0" or "1.0.0-rc.1".

    Raises:
        ValueError: when `text` is not a semver 2.0.0 version.
    """
    return semver.Version.parse(text)


def _bounds(op: str, parts: tuple[int, int | None, int | None], rest: str) -> list[Predicate]:
    major, minor, patch = parts
    if rest and (minor is None or patch is None):
        raise ConstraintError("a pre-release or build suffix needs a full major.minor.patch")
    base = semver.Version.parse(f"{major}.{minor or 0}.{patch or 0}{rest}")
    if op == "^":
        if major > 0 or minor is None:
            upper = semver.Version(major + 1)
        elif (minor or 0) > 0 or patch is None:
            upper = semver.Version(0, (minor or 0) + 1)
        else:
            upper = semver.Version(0, 0, (patch or 0) + 1)
        return [lambda v: v >= base, lambda v: v < upper]
    if op == "~":
        upper = semver.Version(major + 1) if minor is None else semver.Version(major, minor + 1)
        return [lambda v: v >= base, lambda v: v < upper]
    if op in ("", "=", "=="):
        if minor is None or patch is None:
            # "=1.4" means any 1.4.x, as in node-semver's X-ranges.
            upper = semver.Version(major + 1) if minor is None else semver.Version(major, minor + 1)
            return [lambda v: v >= base, lambda v: v < upper]
        return [lambda v: v == base]
    compare: dict[str, Predicate] = {
        ">=": lambda v: v >= base,
        ">": lambda v: v > base,
        "<=": lambda v: v <= base,
        "<": lambda v: v < base,
    }
    return [compare[op]]


@lru_cache(maxsize=1024)
def parse_constraint(text: str) -> Predicate:
    """Compile a constraint (see the module docstring) to a predicate.

    Args:
        text: the constraint; empty matches every version.

    Returns:
        A function Version → bool. Compiled constraints are cached.

    Raises:
        ConstraintError: when a clause does not parse.
    """
    clauses = [c for c in re.split(r"[,\s]+", text.strip()) if c]
    # Allow ">= 1.2" by gluing a lone operator to the next token.
    merged: list[str] = []
    for c in clauses:
        if merged and merged[-1] in (">=", "<=", "==", "=", ">", "<", "^", "~"):
            merged[-1] += c
        else:
            merged.append(c)
    preds: list[Predicate] = []
    for clause in merged:
        m = _CLAUSE.match(clause)
        if not m:
            raise ConstraintError(f"cannot parse version clause {clause!r}")
        op, major, minor, patch, rest = m.groups()
        try:
            preds.extend(
                _bounds(
                    op or "",
                    (int(major), None if minor is None else int(minor),
                     None if patch is None else int(patch)),
                    rest or "",
                )
            )
        except ValueError as exc:
            raise ConstraintError(f"bad version in clause {clause!r}: {exc}") from exc
    if not preds:
        return lambda v: True
    return lambda v: all(p(v) for p in preds)


@lru_cache(maxsize=65536)
def satisfies(constraint: str, version: str) -> bool:
    """Whether `version` satisfies `constraint`; False for an unparsable version.

    Memoized: fleets run few distinct versions, and semver comparisons in
    Python cost microseconds each, which dominated uncached discovery.

    Raises:
        ConstraintError: when the constraint does not parse.
    """
    pred = parse_constraint(constraint)
    try:
        return pred(parse_version(version))
    except ValueError:
        return False
