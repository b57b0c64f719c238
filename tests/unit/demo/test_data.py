"""Demo data: the packaged EPA factors, supplier generation, the CSV format,
partitioning and exactly rounded summaries."""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from agentmesh.demo import data
from agentmesh.demo.data import (
    FACTOR_COLUMN,
    emissions,
    generate_suppliers,
    load_factors,
    partition_bounds,
    read_suppliers,
    summarize,
    write_suppliers,
)

SHARED = Path("/work/shared/data/useeio")


@pytest.fixture(scope="module")
def table() -> data.FactorTable:
    return load_factors()


def test_factor_table_matches_the_epa_file(table: data.FactorTable) -> None:
    assert len(table) == 1016
    assert all(len(c) == 6 and c.isdigit() for c in table.codes)
    assert list(table.codes) == sorted(set(table.codes))
    assert np.all(np.isfinite(table.factors)) and np.all(table.factors > 0)
    assert table.unit == "kg CO2e/2021 USD, purchaser price"
    by = table.by_code()
    # First rows of the file: soybean 1.326, dry pea and bean 3.007 (with margins).
    assert by["111110"] == 1.326
    assert by["111130"] == 3.007
    assert table.title_of("111110") == "Soybean Farming"
    assert table.title_of("999999") == ""
    raw = (data.data_dir() / data.FACTORS_FILE).read_bytes()
    assert table.sha256 == hashlib.sha256(raw).hexdigest()


def test_factor_column_is_the_with_margins_column(table: data.FactorTable) -> None:
    with (data.data_dir() / data.FACTORS_FILE).open(newline="") as f:
        rows = list(csv.DictReader(f))
    by = table.by_code()
    for r in rows:
        assert by[r["NAICS Code 2017"]] == float(r[FACTOR_COLUMN])
        # SEF + MEF = SEF with margins, to the file's 3 decimals.
        sef = float(r["Supply Chain Emission Factors without Margins"])
        mef = float(r["Margins of Supply Chain Emission Factors"])
        assert abs(sef + mef - by[r["NAICS Code 2017"]]) <= 0.0015


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not on this machine")
def test_packaged_copy_is_byte_identical_to_the_shared_data() -> None:
    for name in (data.FACTORS_FILE, data.PROVENANCE_FILE):
        assert (data.data_dir() / name).read_bytes() == (SHARED / name).read_bytes()


def test_provenance_names_the_dataset() -> None:
    prov = data.load_provenance()
    assert prov["identifier"] == "https://doi.org/10.23719/1528686"
    assert any(d["title"] == data.FACTORS_FILE for d in prov["distribution"])


def test_bad_factor_files_are_refused(tmp_path: Path) -> None:
    header = ('"NAICS Code 2017","NAICS Title 2017","GHG","Unit",'
              f'"{FACTOR_COLUMN}"\n')
    dup = tmp_path / "dup.csv"
    dup.write_text(header + '111110,"A","All GHGs","u",1.0\n111110,"B","All GHGs","u",2.0\n')
    with pytest.raises(ValueError, match="duplicate"):
        load_factors(dup)
    short = tmp_path / "short.csv"
    short.write_text(header + '1111,"A","All GHGs","u",1.0\n')
    with pytest.raises(ValueError, match="malformed"):
        load_factors(short)
    neg = tmp_path / "neg.csv"
    neg.write_text(header + '111110,"A","All GHGs","u",-1.0\n')
    with pytest.raises(ValueError, match="factor"):
        load_factors(neg)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text('"NAICS Code 2017"\n111110\n')
    with pytest.raises(ValueError, match="columns"):
        load_factors(nocol)


def test_generation_is_deterministic_by_seed(table: data.FactorTable) -> None:
    a = generate_suppliers(table, count=5000, seed=7)
    b = generate_suppliers(table, count=5000, seed=7)
    c = generate_suppliers(table, count=5000, seed=8)
    assert np.array_equal(a.naics, b.naics) and np.array_equal(a.spend_usd, b.spend_usd)
    assert not np.array_equal(a.spend_usd, c.spend_usd)
    assert len(a) == 5000


def test_generated_records_are_valid(table: data.FactorTable) -> None:
    s = generate_suppliers(table, count=20_000, seed=1)
    assert (table.index_of(s.naics) >= 0).all(), "every code is in the factor table"
    assert (s.spend_usd >= 0.01).all()
    cents = np.round(s.spend_usd * 100)
    assert np.allclose(cents / 100, s.spend_usd, rtol=0, atol=1e-9)
    # Many commodities are used, and popularity is skewed (Dirichlet weights).
    uniq, counts = np.unique(s.naics, return_counts=True)
    assert len(uniq) > 500
    assert counts.max() > 5 * np.median(counts)
    # Lognormal spend: the median is near 25,000 USD.
    assert 20_000 < float(np.median(s.spend_usd)) < 30_000


def test_count_must_be_positive(table: data.FactorTable) -> None:
    with pytest.raises(ValueError):
        generate_suppliers(table, count=0, seed=1)


def test_csv_round_trip(table: data.FactorTable, tmp_path: Path) -> None:
    s = generate_suppliers(table, count=3000, seed=3)
    path = tmp_path / "out" / "suppliers.csv"
    sha = write_suppliers(s, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "supplier_id,naics_code,spend_usd"
    assert lines[1].startswith("S0000001,")
    assert len(lines) == 3001
    first = lines[1].split(",")
    assert len(first[1]) == 6 and "." in first[2] and len(first[2].split(".")[1]) == 2
    back, sha_back = read_suppliers(path)
    assert sha_back == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(back.naics, s.naics)
    assert np.array_equal(back.spend_usd, s.spend_usd), "spend survives the text round trip"
    ids = [line.split(",")[0] for line in lines[1:]]
    assert len(set(ids)) == len(ids)


def test_read_refuses_a_wrong_header(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("id,code,spend\nS1,111110,1.00\n")
    with pytest.raises(ValueError, match="header"):
        read_suppliers(p)


def test_emissions_refuse_unknown_codes(table: data.FactorTable) -> None:
    s = data.Suppliers(np.array([111110, 999999]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="999999"):
        emissions(table, s)
    ok = data.Suppliers(np.array([111110, 111130]), np.array([10.0, 100.0]))
    assert emissions(table, ok).tolist() == [10.0 * 1.326, 100.0 * 3.007]


@pytest.mark.parametrize(("rows", "count"), [(100_000, 1000), (5000, 50), (1003, 7), (5, 5)])
def test_partitions_cover_every_row_once(rows: int, count: int) -> None:
    bounds = [partition_bounds(rows, i, count) for i in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = {b - a for a, b in bounds}
    assert max(sizes) - min(sizes) <= 1


def test_partition_index_out_of_range() -> None:
    for index, count in ((5, 5), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            partition_bounds(10, index, count)


def test_summary_sums_are_exactly_rounded_and_consistent(table: data.FactorTable) -> None:
    s = generate_suppliers(table, count=4000, seed=11)
    kg = emissions(table, s)
    out = summarize(kg, s.naics, s.spend_usd)
    assert out["kg_co2e"] == math.fsum(kg.tolist())
    assert out["spend_usd"] == math.fsum(s.spend_usd.tolist())
    assert out["records"] == 4000.0
    per = {k: v for k, v in out.items() if k.startswith("naics_")}
    assert set(per) == {data.naics_key(c) for c in set(s.naics.tolist())}
    assert math.isclose(math.fsum(per.values()), out["kg_co2e"], rel_tol=1e-14)
    code = int(s.naics[0])
    assert per[data.naics_key(code)] == math.fsum(kg[s.naics == code].tolist())
    # Summing partition summaries with fsum gives the whole within one rounding each.
    parts = [summarize(kg[a:b], s.naics[a:b], s.spend_usd[a:b])
             for a, b in (partition_bounds(4000, i, 40) for i in range(40))]
    whole = math.fsum(p["kg_co2e"] for p in parts)
    assert abs(whole - out["kg_co2e"]) / out["kg_co2e"] < 1e-14


def test_empty_summary() -> None:
    empty = np.array([], dtype=np.float64)
    out = summarize(empty, np.array([], dtype=np.int64), empty)
    assert out == {"kg_co2e": 0.0, "spend_usd": 0.0, "records": 0.0}
