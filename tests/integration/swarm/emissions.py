"""The seeds' scenario in small: Scope 3 emissions of synthetic suppliers
with the EPA USEEIO v1.2 supply-chain factors (shared/data/useeio).

Supplier ``s`` buys from NAICS row ``s mod 1016`` and spends
``1000 + (s * 7919 mod 100000)`` USD; its emissions are spend times the
"with margins" factor (kg CO2e per 2021 USD). Partition ``i`` of ``P`` covers
suppliers ``[i*N//P, (i+1)*N//P)``. Agents and the test compute partitions
with the same function, so their totals must agree bit for bit.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

DATA = (
    Path(__file__).resolve().parents[3].parent
    / "shared/data/useeio/SupplyChainGHGEmissionFactors_v1.2_NAICS_CO2e_USD2021.csv"
)
if not DATA.exists():  # the repo may live elsewhere than /work/main
    DATA = Path("/work/shared/data/useeio") / DATA.name


@functools.cache
def factors() -> tuple[float, ...]:
    """kg CO2e per USD (with margins), one per NAICS row, in file order."""
    with DATA.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple(float(r["Supply Chain Emission Factors with Margins"]) for r in rows)


def partition(index: int, count: int, suppliers: int) -> dict[str, float]:
    """Emissions of one partition: {"kg_co2e": ..., "suppliers": ..., "spend_usd": ...}."""
    f = factors()
    lo, hi = index * suppliers // count, (index + 1) * suppliers // count
    kg = [(1000 + (s * 7919) % 100_000) * f[s % len(f)] for s in range(lo, hi)]
    spend = sum(1000 + (s * 7919) % 100_000 for s in range(lo, hi))
    return {"kg_co2e": math.fsum(kg), "suppliers": float(hi - lo), "spend_usd": float(spend)}


def direct_total(count: int, suppliers: int) -> dict[str, float]:
    """The aggregate the swarm must return: fsum over partitions of each field."""
    parts = [partition(i, count, suppliers) for i in range(count)]
    return {k: math.fsum(p[k] for p in parts) for k in parts[0]}
