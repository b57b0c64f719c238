"""The carbon-calculator agent: spend-based Scope 3 category 1 for one partition.

Action `scope3_partition` takes its records in one of two forms:

  * by reference (what the swarm engine sends):
        {"suppliers_path": "/abs/demo-out/suppliers.csv",
         "suppliers_sha256": "<hex>",           # the file the caller means
         "partition_index": 7, "partition_count": 1000}
    The agent reads the CSV once per process (every agent of a worker process
    shares the cache), checks its sha256 (FAILED_PRECONDITION when the file
    changed under the caller), and takes rows `partition_bounds(rows, index,
    count)`. Only the reference travels through the swarm engine and Redis,
    never 100,000 records.
  * inline (what the router's ScatterGather cross-check sends):
        {"records": [{"naics_code": "311111", "spend_usd": 1234.56}, ...]}

Output (numbers are exactly rounded sums, so every agent returns bit-identical
values for the same records, which is what a majority vote needs):
    {"kg_co2e": float, "spend_usd": float, "records": n,
     "naics_<code>": kg CO2e of that commodity, ...}
The swarm engine sums every numeric field over all partitions, so the mesh
returns the per-commodity totals as well as the grand total.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentmesh.agent import ActionContext, Agent
from agentmesh.demo.data import (
    FactorTable,
    Suppliers,
    emissions,
    partition_bounds,
    read_suppliers,
    summarize,
)
from agentmesh.runtime.errors import FailedPrecondition, InvalidArgument

ACTION = "scope3_partition"
CAPABILITY = "carbon_calculation"
AGENT_TYPE = "carbon-calculator"
VERSION = "1.2.0"


@dataclass
class _Dataset:
    sha256: str
    suppliers: Suppliers
    kg: np.ndarray


@dataclass
class DatasetCache:
    """Supplier files read by this process, shared by all its agents.

    Attributes:
        table: the emission factors.
    """

    table: FactorTable
    _sets: dict[str, _Dataset] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loads: int = 0

    async def get(self, path: str, sha256: str) -> _Dataset:
        """The dataset at `path`, read once; its sha256 must equal `sha256` when given.

        Raises:
            InvalidArgument: when the path is not absolute or the file is unreadable.
            FailedPrecondition: when the file's sha256 differs from `sha256`.
        """
        if not Path(path).is_absolute():
            raise InvalidArgument(
                f"suppliers_path must be absolute, not {path!r}",
                field_violations={"suppliers_path": "not absolute"},
            )
        ds = self._sets.get(path)
        if ds is None or (sha256 and ds.sha256 != sha256):
            async with self._lock:
                ds = self._sets.get(path)
                if ds is None or (sha256 and ds.sha256 != sha256):
                    try:
                        suppliers, digest = await asyncio.to_thread(read_suppliers, Path(path))
                        kg = emissions(self.table, suppliers)
                    except (OSError, ValueError) as e:
                        raise InvalidArgument(
                            f"cannot read suppliers file {path}: {e}",
                            field_violations={"suppliers_path": str(e)},
                        ) from e
                    ds = _Dataset(digest, suppliers, kg)
                    self._sets[path] = ds
                    self.loads += 1
        if sha256 and ds.sha256 != sha256:
            raise FailedPrecondition(
                f"{path} has sha256 {ds.sha256[:12]}…, the caller expects {sha256[:12]}…"
            )
        return ds


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InvalidArgument(f"{name} must be an integer", field_violations={name: repr(value)})
    return int(value)


def inline_records(records: Any, table: FactorTable) -> dict[str, float]:
    """Summaries of inline records `[{"naics_code", "spend_usd"}, ...]`.

    Raises:
        InvalidArgument: on a malformed record or an unknown NAICS code.
    """
    if not isinstance(records, list):
        raise InvalidArgument("records must be a list", field_violations={"records": "not a list"})
    try:
        naics = np.array([int(r["naics_code"]) for r in records], dtype=np.int64)
        spend = np.array([float(r["spend_usd"]) for r in records], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidArgument(
            f"each record needs naics_code and spend_usd: {e}",
            field_violations={"records": str(e)},
        ) from e
    sup = Suppliers(naics, spend)
    try:
        kg = emissions(table, sup)
    except ValueError as e:
        raise InvalidArgument(str(e), field_violations={"records": str(e)}) from e
    return summarize(kg, naics, spend)


async def compute(input: dict[str, Any], cache: DatasetCache) -> dict[str, float]:
    """The output of `scope3_partition` for `input` (see the module docstring).

    Raises:
        InvalidArgument: bad input.
        FailedPrecondition: the referenced file changed.
    """
    if "records" in input:
        return inline_records(input["records"], cache.table)
    path = input.get("suppliers_path")
    if not isinstance(path, str) or not path:
        raise InvalidArgument(
            "give records inline or suppliers_path with partition_index/partition_count",
            field_violations={"suppliers_path": "missing"},
        )
    index = _int(input.get("partition_index"), "partition_index")
    count = _int(input.get("partition_count"), "partition_count")
    ds = await cache.get(path, str(input.get("suppliers_sha256") or ""))
    try:
        a, b = partition_bounds(len(ds.suppliers), index, count)
    except ValueError as e:
        raise InvalidArgument(str(e), field_violations={"partition_index": str(e)}) from e
    return summarize(ds.kg[a:b], ds.suppliers.naics[a:b], ds.suppliers.spend_usd[a:b])


def build_calculator(agent_id: str, cache: DatasetCache, **settings: Any) -> Agent:
    """A carbon-calculator Agent (capability `carbon_calculation`).

    Args:
        agent_id: registry id, e.g. "agent-calc-007".
        cache: the process-wide dataset cache.
        settings: AgentSettings overrides (registry_target, heartbeat_interval_s, ...).
    """
    agent = Agent(
        agent_id,
        agent_type=AGENT_TYPE,
        version=VERSION,
        capabilities=[CAPABILITY],
        service_types=["scope3"],
        tags=["demo", "epa-useeio-v1.2"],
        metadata={"method": "spend-based", "factors": "EPA USEEIO v1.2 NAICS-6 with margins"},
        **settings,
    )

    @agent.action(ACTION)
    async def scope3_partition(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return await compute(input, cache)

    return agent
