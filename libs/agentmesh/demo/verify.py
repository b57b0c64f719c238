"""The demo's own check: the mesh's totals against a direct computation.

The direct figures come straight from suppliers.csv in the demo process:
per-record kg = spend x factor (numpy), summed with `math.fsum`, which is
exactly rounded (Shewchuk 1997). The mesh sums exactly rounded per-partition
sums with `math.fsum` again, so the two differ by at most one rounding per
partition; the tolerance (relative 1e-9) is many orders of magnitude above
that and far below any real error such as a lost or doubled partition
(relative ~1e-3 at 1,000 partitions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from agentmesh.demo.data import FactorTable, Suppliers, summarize

#: Relative tolerance of the totals against the direct computation.
TOLERANCE = 1e-9


def relative_error(a: float, b: float) -> float:
    """|a - b| / |b| (|b| floored at the smallest positive float)."""
    return abs(a - b) / max(abs(b), math.ulp(0.0))


def direct_totals(table: FactorTable, suppliers: Suppliers, kg: np.ndarray) -> dict[str, Any]:
    """The check figures, computed in this process from the records.

    Args:
        table: the factors (unused beyond documenting the source of `kg`).
        suppliers: the records read back from suppliers.csv.
        kg: `emissions(table, suppliers)`, shape (n,).

    Returns:
        {"kg_co2e": fsum, "kg_co2e_numpy_sum": np.sum (pairwise, for comparison),
         "spend_usd": fsum, "records": n, "by_naics": {"311111": kg, ...}}.
    """
    by = summarize(kg, suppliers.naics, suppliers.spend_usd)
    return {
        "kg_co2e": by["kg_co2e"],
        "kg_co2e_numpy_sum": float(np.sum(kg)),
        "spend_usd": by["spend_usd"],
        "records": len(suppliers),
        "by_naics": {k[len("naics_"):]: v for k, v in by.items() if k.startswith("naics_")},
    }


def top_naics(by_naics: Mapping[str, float], n: int = 10) -> list[tuple[str, float]]:
    """The `n` largest `(code, kg)` pairs; ties by code."""
    return sorted(by_naics.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def compare_totals(
    mesh_totals: Mapping[str, float], direct: Mapping[str, Any], *, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """Compare the swarm's PartitionResult.totals with `direct_totals`.

    Args:
        mesh_totals: {"kg_co2e", "spend_usd", "records", "naics_<code>", ...}.
        direct: what `direct_totals` returned.
        tolerance: largest relative error accepted.

    Returns:
        {"relative_error", "max_relative_error_by_naics", "checks": {"total",
         "spend", "records", "by_naics", "top_naics": bool}}.
    """
    mesh_by = {k[len("naics_"):]: v for k, v in mesh_totals.items() if k.startswith("naics_")}
    rel = relative_error(float(mesh_totals.get("kg_co2e", math.nan)), direct["kg_co2e"])
    naics_rel = max(
        (relative_error(mesh_by.get(c, 0.0), v) for c, v in direct["by_naics"].items()),
        default=0.0,
    )
    spend_rel = relative_error(float(mesh_totals.get("spend_usd", math.nan)), direct["spend_usd"])
    checks = {
        "total": rel <= tolerance,
        "spend": spend_rel <= tolerance,
        "records": mesh_totals.get("records") == float(direct["records"]),
        "by_naics": naics_rel <= tolerance and set(mesh_by) == set(direct["by_naics"]),
        "top_naics": [c for c, _ in top_naics(mesh_by)] == [c for c, _ in
                                                              top_naics(direct["by_naics"])],
    }
    return {"relative_error": rel, "max_relative_error_by_naics": naics_rel,
            "spend_relative_error": spend_rel, "checks": checks}
