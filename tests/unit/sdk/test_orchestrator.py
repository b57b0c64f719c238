"""Orchestrator.execute without mesh calls: results, the recover hook, metrics
and the provenance hash recomputed from the Result (the mesh operations
themselves are exercised in tests/integration/test_coordination_patterns.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from agentmesh.agent.orchestrator import Orchestrator, canonical_json
from agentmesh.client import Client


@dataclass(frozen=True)
class In:
    x: float


class Halver(Orchestrator[In, dict[str, float]]):
    """Halves x; fails on negatives, and recovers them to 0 when `forgiving`."""

    forgiving = False

    async def run(self, input: In) -> dict[str, float]:
        if input.x < 0:
            raise ValueError("negative")
        return {"half": input.x / 2}

    async def recover(self, input: In, error: BaseException) -> dict[str, float]:
        if self.forgiving:
            return {"half": 0.0}
        raise error


async def test_results_metrics_and_provenance() -> None:
    h = Halver(Client(), name="halver")
    with pytest.raises(RuntimeError, match="not started"):
        await h.execute(In(1))
    async with h:
        ok = await h.execute(In(3))
        bad = await h.execute(In(-1))
        h.forgiving = True
        saved = await h.execute(In(-1))
    assert ok.success and ok.output == {"half": 1.5} and ok.error == ""
    assert not bad.success and bad.output is None and bad.error == "ValueError: negative"
    assert saved.success and saved.output == {"half": 0.0}
    m = h.metrics
    assert (m.executions, m.successes, m.failures, m.recovered) == (3, 2, 1, 1)
    assert m.success_rate == pytest.approx(2 / 3) and m.mean_duration_ms >= 0
    for r, inp in ((ok, In(3)), (bad, In(-1))):
        doc = {"orchestrator": "halver", "execution_id": r.execution_id, "input": inp,
               "output": r.output, "error": r.error, "operations": []}
        assert r.provenance_hash == hashlib.sha256(canonical_json(doc)).hexdigest()
    assert ok.execution_id != saved.execution_id


def test_canonical_json_is_order_free_and_strict() -> None:
    assert canonical_json({"b": 1, "a": [In(2.5)]}) == b'{"a":[{"x":2.5}],"b":1}'
    assert canonical_json({"a": [In(2.5)], "b": 1}) == canonical_json({"b": 1, "a": [In(2.5)]})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_json({"x": object()})
