"""Demo agents without the mesh: the calculator's computation (both input
forms), the CSRD saga definition, worker planning and the total check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agentmesh.demo import csrd, data, verify
from agentmesh.demo.calculator import DatasetCache, compute
from agentmesh.demo.fleet import calculator_id, worker_plan
from agentmesh.runtime.errors import FailedPrecondition, InvalidArgument
from agentmesh.saga.v1 import saga_pb2


@pytest.fixture(scope="module")
def table() -> data.FactorTable:
    return data.load_factors()


@pytest.fixture
def suppliers_file(table: data.FactorTable, tmp_path: Path) -> tuple[Path, str, data.Suppliers]:
    s = data.generate_suppliers(table, count=1000, seed=5)
    path = tmp_path / "suppliers.csv"
    sha = data.write_suppliers(s, path)
    return path, sha, s


async def test_reference_and_inline_inputs_give_identical_outputs(
    table: data.FactorTable, suppliers_file: tuple[Path, str, data.Suppliers]
) -> None:
    path, sha, s = suppliers_file
    cache = DatasetCache(table)
    by_ref = await compute({"suppliers_path": str(path), "suppliers_sha256": sha,
                            "partition_index": 3, "partition_count": 10}, cache)
    a, b = data.partition_bounds(1000, 3, 10)
    inline = await compute({"records": [
        {"naics_code": f"{c:06d}", "spend_usd": v}
        for c, v in zip(s.naics[a:b].tolist(), s.spend_usd[a:b].tolist(), strict=True)
    ]}, cache)
    assert by_ref == inline
    kg = s.spend_usd[a:b] * table.factors[table.index_of(s.naics[a:b])]
    assert by_ref["kg_co2e"] == math.fsum(kg.tolist())
    assert by_ref["records"] == 100.0


async def test_partitions_add_up_to_the_whole_file(
    table: data.FactorTable, suppliers_file: tuple[Path, str, data.Suppliers]
) -> None:
    path, sha, s = suppliers_file
    cache = DatasetCache(table)
    outs = [await compute({"suppliers_path": str(path), "suppliers_sha256": sha,
                           "partition_index": i, "partition_count": 7}, cache)
            for i in range(7)]
    assert cache.loads == 1, "the file is read once per process"
    direct = verify.direct_totals(table, s, data.emissions(table, s))
    totals: dict[str, float] = {}
    for k in {k for o in outs for k in o}:
        totals[k] = math.fsum(o.get(k, 0.0) for o in outs)
    cmp = verify.compare_totals(totals, direct)
    assert all(cmp["checks"].values()), cmp
    assert cmp["relative_error"] < 1e-15


async def test_a_changed_file_is_refused(
    table: data.FactorTable, suppliers_file: tuple[Path, str, data.Suppliers]
) -> None:
    path, _sha, _ = suppliers_file
    cache = DatasetCache(table)
    with pytest.raises(FailedPrecondition):
        await compute({"suppliers_path": str(path), "suppliers_sha256": "0" * 64,
                       "partition_index": 0, "partition_count": 2}, cache)


@pytest.mark.parametrize("bad", [
    {"suppliers_path": "relative.csv", "partition_index": 0, "partition_count": 1},
    {"suppliers_path": "/nonexistent/suppliers.csv", "partition_index": 0, "partition_count": 1},
    {"partition_index": 0, "partition_count": 1},
    {"records": [{"naics_code": "999999", "spend_usd": 1.0}]},
    {"records": [{"spend_usd": 1.0}]},
    {"records": "nope"},
])
async def test_bad_input_is_invalid_argument(table: data.FactorTable, bad: dict) -> None:
    with pytest.raises(InvalidArgument):
        await compute(bad, DatasetCache(table))


async def test_partition_out_of_range_is_invalid_argument(
    table: data.FactorTable, suppliers_file: tuple[Path, str, data.Suppliers]
) -> None:
    path, sha, _ = suppliers_file
    with pytest.raises(InvalidArgument):
        await compute({"suppliers_path": str(path), "suppliers_sha256": sha,
                       "partition_index": 4, "partition_count": 4}, DatasetCache(table))
    with pytest.raises(InvalidArgument):
        await compute({"suppliers_path": str(path), "partition_index": 1.5,
                       "partition_count": 4}, DatasetCache(table))


def test_saga_definition_shape() -> None:
    d = csrd.saga_definition()
    assert [s.name for s in d.steps] == list(csrd.STEPS)
    assert d.compensation_strategy == saga_pb2.COMPENSATION_STRATEGY_BACKWARD
    by = {s.name: s for s in d.steps}
    assert [n for n, s in by.items() if s.is_pivot] == ["generate"]
    assert {n for n, s in by.items() if s.compensation_action} == {
        "collect", "validate", "calculate"}
    for prev, step in zip(csrd.STEPS, csrd.STEPS[1:], strict=False):
        assert list(by[step].depends_on) == [prev]
    for s in d.steps:
        assert list(s.selector.capabilities) == [f"csrd_{s.name}"]
    assert by["generate"].input_mapping["total_kg_co2e"] == "steps.calculate.total_kg_co2e"


@pytest.mark.parametrize(("step", "state", "order"), [
    ("collect", "COMPENSATED", ["collect"]),
    ("validate", "COMPENSATED", ["validate", "collect"]),
    ("calculate", "COMPENSATED", ["calculate", "validate", "collect"]),
    ("generate", "COMPENSATED", ["calculate", "validate", "collect"]),
    ("publish", "FAILED", []),
])
def test_expected_failure_outcome(step: str, state: str, order: list[str]) -> None:
    assert csrd.expected_failure_outcome(step) == (state, order)


@pytest.mark.parametrize(("n", "per"), [(100, 25), (10, 25), (101, 25), (7, 3), (1, 1)])
def test_worker_plan_balances_agents(n: int, per: int) -> None:
    plan = worker_plan(n, per)
    assert sum(c for _, c in plan) == n
    assert len(plan) == -(-n // per)
    assert max(c for _, c in plan) - min(c for _, c in plan) <= 1
    assert all(c <= per for _, c in plan)
    starts = [f for f, _ in plan]
    assert starts == sorted(starts) and starts[0] == 0
    assert calculator_id(7) == "agent-calc-007"


def test_compare_totals_catches_a_lost_partition(table: data.FactorTable) -> None:
    s = data.generate_suppliers(table, count=2000, seed=9)
    kg = data.emissions(table, s)
    direct = verify.direct_totals(table, s, kg)
    whole = data.summarize(kg, s.naics, s.spend_usd)
    assert all(verify.compare_totals(whole, direct)["checks"].values())
    _, b = data.partition_bounds(2000, 0, 1000)  # two records missing of 2000
    lost = data.summarize(kg[b:], s.naics[b:], s.spend_usd[b:])
    cmp = verify.compare_totals(lost, direct)
    assert not cmp["checks"]["total"] and not cmp["checks"]["records"]
    # A perturbation just above the tolerance fails, one well below passes.
    for factor, ok in ((1 + 5e-9, False), (1 + 1e-12, True)):
        bumped = {**whole, "kg_co2e": whole["kg_co2e"] * factor}
        assert verify.compare_totals(bumped, direct)["checks"]["total"] is ok
    assert verify.relative_error(1.0, 0.0) > 1e300
    assert np.isfinite(verify.relative_error(0.0, 0.0))
