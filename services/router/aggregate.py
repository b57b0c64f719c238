"""ScatterGather aggregations over the successful outputs, as plain dicts.

Every function takes `outputs`: (agent_id, output dict) pairs sorted by agent
id, so results are deterministic whatever order the agents answered in.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmesh.runtime.cel import REPLY_VARIABLES, CelError, CelEvalError, Expression
from agentmesh.runtime.errors import InvalidArgument

Outputs = Sequence[tuple[str, dict[str, Any]]]
_MISSING = object()


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces; equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def at_path(doc: Any, path: str) -> Any:
    """The value at a dotted path ("a.b.0.c"), or `_MISSING`."""
    if not path:
        return doc
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def aggregate_all(outputs: Outputs) -> dict[str, Any]:
    """{"results": [{"agent_id", "output"}...]} in agent-id order."""
    return {"results": [{"agent_id": a, "output": o} for a, o in outputs]}


@dataclass
class Vote:
    """A MAJORITY_VOTE outcome.

    Attributes:
        result: {"value": winner, "votes": n}, or {} when nobody voted.
        winner_votes: votes for the winner.
        majority: winner has more than half of the votes cast.
        tie: several values share the top count.
        tied: canonical JSON of the values with the top count, sorted.
    """

    result: dict[str, Any]
    winner_votes: int = 0
    majority: bool = False
    tie: bool = False
    tied: list[str] = field(default_factory=list)


def majority_vote(outputs: Outputs, path: str) -> Vote:
    """Plurality vote on the value at `path`; outputs without it do not vote.
    Ties go to the smallest canonical JSON, so every replica picks the same."""
    counts: Counter[str] = Counter()
    values: dict[str, Any] = {}
    for _, out in outputs:
        v = at_path(out, path)
        if v is _MISSING:
            continue
        key = canonical(v)
        counts[key] += 1
        values[key] = v
    if not counts:
        return Vote(result={})
    top = max(counts.values())
    tied = sorted(k for k, c in counts.items() if c == top)
    cast = sum(counts.values())
    return Vote(
        result={"value": values[tied[0]], "votes": top},
        winner_votes=top,
        majority=top * 2 > cast,
        tie=len(tied) > 1,
        tied=tied,
    )


def average(outputs: Outputs, path: str) -> dict[str, Any]:
    """{"average": mean, "count": n} of finite numbers at `path` (bools excluded)."""
    nums = [
        float(v)
        for _, out in outputs
        if isinstance(v := at_path(out, path), int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    ]
    if not nums:
        return {"average": None, "count": 0}
    return {"average": math.fsum(nums) / len(nums), "count": len(nums)}


def merge(outputs: Outputs) -> tuple[dict[str, Any], list[str]]:
    """Deep merge in agent-id order; returns (merged, conflicting key paths).
    Nested dicts merge; any other differing value is a conflict that the later
    agent wins."""
    merged: dict[str, Any] = {}
    conflicts: set[str] = set()

    def into(dst: dict[str, Any], src: dict[str, Any], prefix: str) -> None:
        for k, v in src.items():
            path = f"{prefix}{k}"
            if k in dst and isinstance(dst[k], dict) and isinstance(v, dict):
                into(dst[k], v, path + ".")
            else:
                if k in dst and dst[k] != v:
                    conflicts.add(path)
                dst[k] = json.loads(json.dumps(v)) if isinstance(v, dict | list) else v

    for _, out in outputs:
        into(merged, out, "")
    return merged, sorted(conflicts)


def compile_reduce(source: str) -> Expression:
    """Compile a CUSTOM reduce over `replies` and `agent_ids` (the mesh's CEL dialect).

    Raises:
        InvalidArgument: empty, or the CEL does not compile; names field `reduce`.
    """
    if not source:
        raise InvalidArgument(
            "CUSTOM aggregation needs reduce, a CEL expression over replies",
            field_violations={"reduce": "empty"},
        )
    try:
        return Expression(source, variables=REPLY_VARIABLES)
    except CelError as e:
        raise InvalidArgument(
            f"invalid reduce: {e}", field_violations={"reduce": str(e)}
        ) from e


def custom(expr: Expression, outputs: Outputs) -> dict[str, Any]:
    """{"value": <the reduce's result>} over the outputs in agent-id order.

    Raises:
        InvalidArgument: the reduce failed to evaluate on these replies (a
            missing field, a type mismatch, max() of no replies); field `reduce`.
    """
    try:
        value = expr.evaluate(
            {"replies": [o for _, o in outputs], "agent_ids": [a for a, _ in outputs]}
        )
    except CelEvalError as e:
        raise InvalidArgument(
            f"reduce failed on the replies: {e}", field_violations={"reduce": str(e)}
        ) from e
    return {"value": value}
