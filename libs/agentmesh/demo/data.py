"""The demo's data: US EPA supply-chain emission factors and generated suppliers.

Factors. `data/SupplyChainGHGEmissionFactors_v1.2_NAICS_CO2e_USD2021.csv`
(US EPA ORD, "Supply Chain Greenhouse Gas Emission Factors v1.2 by NAICS-6",
https://doi.org/10.23719/1528686; `data/provenance.json` is its catalog
record) holds one row per 2017 NAICS-6 commodity, 1,016 in all. The demo
uses the column "Supply Chain Emission Factors with Margins" (SEF+MEF), in
kg CO2e per 2021 USD at purchaser price, AR4 100-year GWPs.

Suppliers. `generate_suppliers` draws spend records from a numpy Generator
seeded by the caller, so a seed always gives the same file:
  * NAICS code: each commodity gets a popularity weight from a symmetric
    Dirichlet(0.5) draw (a few commodities take much of the spend, as in a
    real purchase ledger), then each supplier picks a commodity by weight;
  * spend: lognormal with median 25,000 USD and sigma 1.2, rounded to cents.
`suppliers.csv` has the header `supplier_id,naics_code,spend_usd`, ids
`S0000001`.., six-digit codes and spend with two decimals.

Method. Spend-based Scope 3 category 1 (GHG Protocol, Technical Guidance for
Calculating Scope 3 Emissions, 2013, ch. 1, "spend-based method"):
emissions_kg = spend_usd x factor_kg_per_usd, summed over suppliers. Sums are
exactly rounded (`math.fsum`, Shewchuk 1997), so totals do not depend on the
order in which partitions finish.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from agentmesh.runtime.files import write_atomic

FACTORS_FILE = "SupplyChainGHGEmissionFactors_v1.2_NAICS_CO2e_USD2021.csv"
PROVENANCE_FILE = "provenance.json"
FACTOR_COLUMN = "Supply Chain Emission Factors with Margins"
CODE_COLUMN = "NAICS Code 2017"
TITLE_COLUMN = "NAICS Title 2017"
UNIT_COLUMN = "Unit"
SUPPLIER_COLUMNS = ("supplier_id", "naics_code", "spend_usd")

#: Spend distribution: lognormal with this median (USD) and sigma.
SPEND_MEDIAN_USD = 25_000.0
SPEND_SIGMA = 1.2
#: Concentration of the Dirichlet draw of commodity popularity.
POPULARITY_ALPHA = 0.5


def data_dir() -> Path:
    """Directory of the packaged data files."""
    return Path(str(resources.files("agentmesh.demo") / "data"))


@dataclass(frozen=True)
class FactorTable:
    """Emission factors by NAICS-6 code.

    Attributes:
        codes: NAICS codes, six-digit strings, sorted ascending; shape (n,).
        titles: NAICS titles, aligned with `codes`.
        factors: kg CO2e per 2021 USD (with margins); float64, shape (n,).
        unit: the unit string of the source file.
        sha256: hex digest of the source CSV bytes.
    """

    codes: tuple[str, ...]
    titles: tuple[str, ...]
    factors: np.ndarray
    unit: str
    sha256: str

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def code_ints(self) -> np.ndarray:
        """Codes as int64, sorted ascending (for searchsorted lookups)."""
        return np.array([int(c) for c in self.codes], dtype=np.int64)

    def by_code(self) -> dict[str, float]:
        """{code: factor}."""
        return {c: float(f) for c, f in zip(self.codes, self.factors, strict=True)}

    def title_of(self, code: str) -> str:
        """Title of `code`, or "" when unknown."""
        i = self.index_of(np.array([int(code)]))[0]
        return self.titles[i] if i >= 0 else ""

    def index_of(self, codes: np.ndarray) -> np.ndarray:
        """Row index of each int code in this table, -1 where unknown; shape of `codes`."""
        ints = self.code_ints
        pos = np.searchsorted(ints, codes)
        pos_c = np.clip(pos, 0, len(ints) - 1)
        return np.where(ints[pos_c] == codes, pos_c, -1)


def load_factors(path: Path | None = None) -> FactorTable:
    """Read the EPA factor CSV.

    Args:
        path: the CSV; default the packaged copy.

    Returns:
        The table, sorted by code.

    Raises:
        ValueError: on a duplicate or malformed code, a missing column, or a
            factor that is not a finite non-negative number.
    """
    raw = (path or data_dir() / FACTORS_FILE).read_bytes()
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
    missing = {CODE_COLUMN, TITLE_COLUMN, FACTOR_COLUMN, UNIT_COLUMN} - set(
        reader.fieldnames or []
    )
    if missing:
        raise ValueError(f"factor file lacks columns {sorted(missing)}")
    rows: dict[str, tuple[str, float]] = {}
    units: set[str] = set()
    for rec in reader:
        code = rec[CODE_COLUMN].strip()
        if len(code) != 6 or not code.isdigit():
            raise ValueError(f"malformed NAICS code {code!r}")
        if code in rows:
            raise ValueError(f"duplicate NAICS code {code}")
        factor = float(rec[FACTOR_COLUMN])
        if not math.isfinite(factor) or factor < 0:
            raise ValueError(f"factor of {code} is {factor}")
        rows[code] = (rec[TITLE_COLUMN].strip(), factor)
        units.add(rec[UNIT_COLUMN].strip())
    codes = tuple(sorted(rows))
    return FactorTable(
        codes=codes,
        titles=tuple(rows[c][0] for c in codes),
        factors=np.array([rows[c][1] for c in codes], dtype=np.float64),
        unit="; ".join(sorted(units)),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def load_provenance() -> dict[str, Any]:
    """The packaged catalog record (data.gov DCAT JSON) of the factor file."""
    doc: dict[str, Any] = json.loads((data_dir() / PROVENANCE_FILE).read_text())
    return doc


@dataclass(frozen=True)
class Suppliers:
    """Supplier spend records.

    Attributes:
        naics: NAICS codes as int64, shape (n,).
        spend_usd: spend in 2021 USD, float64, shape (n,).
    """

    naics: np.ndarray
    spend_usd: np.ndarray

    def __len__(self) -> int:
        return int(self.naics.shape[0])


def generate_suppliers(table: FactorTable, *, count: int, seed: int) -> Suppliers:
    """Draw `count` supplier records over the table's codes; same seed, same records.

    Raises:
        ValueError: when count < 1.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(len(table), POPULARITY_ALPHA))
    idx = rng.choice(len(table), size=count, p=weights)
    spend = rng.lognormal(mean=math.log(SPEND_MEDIAN_USD), sigma=SPEND_SIGMA, size=count)
    # Cents, and never zero: every supplier has some spend.
    spend = np.maximum(np.round(spend, 2), 0.01)
    return Suppliers(naics=table.code_ints[idx], spend_usd=spend)


def write_suppliers(suppliers: Suppliers, path: Path) -> str:
    """Write `supplier_id,naics_code,spend_usd` (atomically); returns the file's sha256."""
    lines = [",".join(SUPPLIER_COLUMNS)]
    lines.extend(
        f"S{i + 1:07d},{code:06d},{spend:.2f}"
        for i, (code, spend) in enumerate(
            zip(suppliers.naics.tolist(), suppliers.spend_usd.tolist(), strict=True)
        )
    )
    data = ("\n".join(lines) + "\n").encode()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_suppliers(path: Path) -> tuple[Suppliers, str]:
    """Read suppliers.csv.

    Returns:
        (records, sha256 of the file).

    Raises:
        ValueError: on a wrong header or a malformed row.
    """
    raw = path.read_bytes()
    reader = csv.reader(io.StringIO(raw.decode()))
    header = next(reader, None)
    if header is None or tuple(header) != SUPPLIER_COLUMNS:
        raise ValueError(f"{path}: header must be {','.join(SUPPLIER_COLUMNS)}, not {header}")
    codes: list[int] = []
    spend: list[float] = []
    for n, row in enumerate(reader, start=2):
        if len(row) != 3:
            raise ValueError(f"{path}:{n}: expected 3 fields, got {len(row)}")
        codes.append(int(row[1]))
        spend.append(float(row[2]))
    return (
        Suppliers(np.array(codes, dtype=np.int64), np.array(spend, dtype=np.float64)),
        hashlib.sha256(raw).hexdigest(),
    )


def emissions(table: FactorTable, suppliers: Suppliers) -> np.ndarray:
    """kg CO2e of each record: spend_usd x factor; float64, shape (n,).

    Raises:
        ValueError: when a record's NAICS code is not in the table.
    """
    idx = table.index_of(suppliers.naics)
    if (idx < 0).any():
        bad = sorted(set(suppliers.naics[idx < 0].tolist()))[:5]
        raise ValueError(f"NAICS codes not in the factor table: {bad}")
    out: np.ndarray = suppliers.spend_usd * table.factors[idx]
    return out


def partition_bounds(rows: int, index: int, count: int) -> tuple[int, int]:
    """Row range [start, stop) of partition `index` of `count` over `rows` rows.

    Partitions are contiguous and differ in size by at most one row.

    Raises:
        ValueError: when index is not in [0, count).
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"partition {index} of {count} does not exist")
    return rows * index // count, rows * (index + 1) // count


def naics_key(code: int | str) -> str:
    """Output field name of a per-commodity total, e.g. "naics_311111"."""
    return f"naics_{int(code):06d}"


def summarize(kg: np.ndarray, naics: np.ndarray, spend: np.ndarray) -> dict[str, float]:
    """Exactly rounded sums of one slice of records.

    Args:
        kg: kg CO2e per record, shape (n,).
        naics: int codes, shape (n,).
        spend: spend in USD, shape (n,).

    Returns:
        {"kg_co2e": .., "spend_usd": .., "records": n, "naics_<code>": kg, ...}.
    """
    out: dict[str, float] = {
        "kg_co2e": math.fsum(kg.tolist()),
        "spend_usd": math.fsum(spend.tolist()),
        "records": float(kg.shape[0]),
    }
    if kg.shape[0]:
        order = np.argsort(naics, kind="stable")
        codes_sorted = naics[order]
        kg_sorted = kg[order]
        starts = np.flatnonzero(np.r_[True, codes_sorted[1:] != codes_sorted[:-1]])
        stops = np.r_[starts[1:], codes_sorted.shape[0]]
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            out[naics_key(int(codes_sorted[a]))] = math.fsum(kg_sorted[a:b].tolist())
    return out
