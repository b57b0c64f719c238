"""The benchmark table (perf/table.py, perf/run_all.py): goals, ratio direction,
aggregation over runs, the latest.json entry schema, and that every benchmark
script exposes the figure interface. Pure and fast: nothing here runs a benchmark."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from perf import run_all
from perf.table import (
    ENTRY_KEYS,
    Figure,
    Goal,
    GoalError,
    aggregate,
    fmt_num,
    markdown_table,
    ratio_of,
    read_figures,
    write_figures,
)

PERF = Path(run_all.__file__).resolve().parent


# ---- goals -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "on", "op", "threshold"),
    [
        (">= 0.8x", "ratio", ">=", 0.8),
        ("<= 5 ms", "value", "<=", 5.0),
        (">= 10,000 /s", "value", ">=", 10_000.0),
        ("<= +1.5 ms", "delta", "<=", 1.5),
        ("<= 0", "value", "<=", 0.0),
        (">= 5_000_000 /s", "value", ">=", 5_000_000.0),
    ],
)
def test_goal_parse_reads_the_three_forms(text: str, on: str, op: str, threshold: float) -> None:
    g = Goal.parse(text)
    assert (g.on, g.op, g.threshold, g.text) == (on, op, threshold, text)
    assert g.as_dict() == {"on": on, "op": op, "threshold": threshold}


@pytest.mark.parametrize("text", ["", "fast", "> 0.8x", "== 1", "0.8x", ">= x"])
def test_goal_parse_rejects_what_it_cannot_check(text: str) -> None:
    with pytest.raises(GoalError, match="operator >= or <="):
        Goal.parse(text)


def test_goal_check_uses_ratio_value_or_delta() -> None:
    assert Goal.parse(">= 0.8x").check(value=1, baseline_value=2, ratio=0.8) is True
    assert Goal.parse(">= 0.8x").check(value=1, baseline_value=2, ratio=0.79) is False
    assert Goal.parse("<= 5 ms").check(value=5.0, baseline_value=None, ratio=None) is True
    assert Goal.parse("<= 5 ms").check(value=5.01, baseline_value=None, ratio=None) is False
    # delta: 2.4 - 1.0 = 1.4 added, within 1.5; 2.6 - 1.0 is not
    assert Goal.parse("<= +1.5 ms").check(value=2.4, baseline_value=1.0, ratio=None) is True
    assert Goal.parse("<= +1.5 ms").check(value=2.6, baseline_value=1.0, ratio=None) is False
    assert Goal.parse("<= +1.5 ms").check(value=2.6, baseline_value=None, ratio=None) is None
    assert Goal.parse(">= 0.8x").check(value=1, baseline_value=None, ratio=None) is None


# ---- ratio direction -----------------------------------------------------------------
def test_ratio_is_higher_is_better_in_both_directions() -> None:
    # throughput: 800/s against a 1000/s baseline is 0.8 of its speed
    assert ratio_of(800.0, 1000.0, "higher") == pytest.approx(0.8)
    # latency: 2 ms against a 1 ms baseline is half its speed
    assert ratio_of(2.0, 1.0, "lower") == pytest.approx(0.5)
    assert ratio_of(2.0, None, "lower") is None
    assert ratio_of(0.0, 1.0, "lower") is None  # no division by zero
    with pytest.raises(ValueError, match="higher' or 'lower"):
        ratio_of(1.0, 1.0, "up")  # type: ignore[arg-type]


def test_figure_computes_ratio_and_met() -> None:
    f = Figure(name="x", value=900.0, unit="/s", baseline_name="b", baseline_value=1000.0,
               goal=">= 0.8x")
    assert (f.ratio, f.met) == (pytest.approx(0.9), True)
    lat = Figure(name="y", value=3.0, unit="ms", baseline_name="b", baseline_value=1.0,
                 better="lower", goal="<= +1.5 ms")
    assert (lat.ratio, lat.met) == (pytest.approx(1 / 3), False)
    bare = Figure(name="z", value=1.0, unit="s")
    assert (bare.ratio, bare.met) == (None, None)


def test_figures_round_trip_through_json(tmp_path: Path) -> None:
    figs = [Figure(name="a", value=1.5, unit="ms", baseline_name="b", baseline_value=1.0,
                   better="lower", goal="<= 2 ms"),
            Figure(name="c", value=10.0, unit="/s")]
    write_figures(tmp_path / "f.json", figs)
    assert read_figures(tmp_path / "f.json") == figs


def test_read_figures_refuses_a_non_list(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text('{"name": "a"}')
    with pytest.raises(ValueError, match="JSON list"):
        read_figures(tmp_path / "f.json")


# ---- aggregation -----------------------------------------------------------------
def _run(value: float, base: float) -> list[Figure]:
    return [
        Figure(name="rps", value=value, unit="RPC/s", baseline_name="noop",
               baseline_value=base, goal=">= 0.8x"),
        Figure(name="p99", value=value / 1000, unit="ms", baseline_name="noop p99",
               baseline_value=base / 1000, better="lower", goal="<= +0.5 ms"),
    ]


def test_aggregate_takes_median_min_max_and_paired_ratios() -> None:
    runs = [_run(700, 1000), _run(900, 1000), _run(1200, 1600)]
    rps, p99 = aggregate("router/bench_router", runs)
    assert rps["name"] == "rps" and rps["bench"] == "router/bench_router"
    assert (rps["value"], rps["value_min"], rps["value_max"]) == (900, 700, 1200)
    assert (rps["baseline_value"], rps["baseline_min"], rps["baseline_max"]) == (1000, 1000, 1600)
    # median of the per-run ratios 0.7, 0.9, 0.75, not 900 / 1000
    assert rps["ratio"] == pytest.approx(0.75)
    assert (rps["ratio_min"], rps["ratio_max"]) == (pytest.approx(0.7), pytest.approx(0.9))
    assert rps["met"] is False and rps["runs"] == 3 and rps["status"] == "ok"
    assert rps["goal_check"] == {"on": "ratio", "op": ">=", "threshold": 0.8}
    assert [s["value"] for s in rps["samples"]] == [700, 900, 1200]
    # latency: ratio is baseline / value; delta goal on the medians 0.9 - 1.0 ms
    assert p99["ratio"] == pytest.approx(1 / 0.75)
    assert p99["met"] is True


def test_aggregate_marks_failed_runs_and_keeps_the_rest() -> None:
    (rps, _p99) = aggregate("b", [_run(800, 1000), None, _run(1000, 1000)])
    assert rps["status"] == "failed" and rps["runs"] == 2
    assert rps["value"] == 900  # median of the runs that reported


def test_aggregate_with_every_run_failed_gives_one_failed_entry() -> None:
    (entry,) = aggregate("bus/bench_bus", [None, None, None])
    assert entry["name"] == "bus/bench_bus: failed"
    assert entry["status"] == "failed" and entry["value"] is None
    assert set(entry) == set(ENTRY_KEYS)
    assert "FAILED" in markdown_table([entry])


def test_latest_json_entries_have_the_required_keys_and_types() -> None:
    entries = aggregate("b", [_run(800, 1000), _run(850, 1000), _run(900, 1000)])
    required = {"name", "value", "unit", "baseline_name", "baseline_value", "ratio", "goal",
                "met"}
    for e in json.loads(json.dumps(entries)):
        assert required <= set(e) and set(e) == set(ENTRY_KEYS)
        assert isinstance(e["name"], str) and isinstance(e["unit"], str)
        for k in ("value", "baseline_value", "ratio", "value_min", "value_max", "ratio_min",
                  "ratio_max", "baseline_min", "baseline_max"):
            assert isinstance(e[k], (int, float)), k
        assert isinstance(e["met"], bool) and e["runs"] == 3
        assert e["value_min"] <= e["value"] <= e["value_max"]


@pytest.mark.parametrize(
    ("x", "text"),
    [(None, "-"), (0.0, "0"), (3.0, "3"), (1234.5, "1,234"), (123.4, "123"), (12.34, "12.3"),
     (1.234, "1.23"), (0.7345, "0.73"), (0.03163, "0.0316")],
)
def test_fmt_num_keeps_about_three_significant_digits(x: float | None, text: str) -> None:
    assert fmt_num(x) == text


def test_markdown_table_has_one_row_per_entry() -> None:
    entries = aggregate("b", [_run(800, 1000), _run(900, 1000), _run(1000, 1000)])
    lines = markdown_table(entries).splitlines()
    assert len(lines) == 2 + len(entries)
    assert lines[2].startswith("| rps | 900 RPC/s (800-1,000) | noop | 1,000 RPC/s | 0.9x (0.8-1)")
    assert lines[2].endswith("| >= 0.8x | yes |")


def test_markdown_report_names_the_command_and_machine() -> None:
    entries = aggregate("b", [_run(800, 1000)] * 3)
    report = {"command": "make bench", "runs_per_bench": 3, "wall_s": 600.0, "figures": entries,
              "host": {"date": "2026-11-21T08:00:00Z", "cores": 2, "cpu": "AMD EPYC",
                       "python": "3.11.7", "git_commit": "0123456789abcdef",
                       "load_average_start": [1.0, 2.0, 3.0]}}
    text = run_all.markdown_report(report)
    assert text.startswith("`make bench` on 2026-11-21 (2 cores, AMD EPYC")
    assert "median of 3 runs" in text and "10.0 minutes" in text


# ---- every benchmark exposes the figure interface ----------------------------------
def _load(script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_run_all_plan_covers_every_bench_script() -> None:
    scripts = sorted(str(p.relative_to(PERF)) for p in PERF.glob("*/bench_*.py"))
    assert sorted(b.script for b in run_all.PLAN) == scripts
    assert len({b.area + b.label for b in run_all.PLAN}) == len(run_all.PLAN)


@pytest.mark.parametrize("bench", run_all.PLAN, ids=lambda b: b.label)
def test_bench_module_has_figures_and_json_flag(bench: run_all.Bench) -> None:
    script = PERF / bench.script
    mod = _load(script)
    assert callable(getattr(mod, "figures", None)), f"{bench.script} has no figures()"
    assert inspect.signature(mod.figures).return_annotation in ("list[Figure]", list)
    assert "--json" in script.read_text(), f"{bench.script} takes no --json PATH"


def test_run_all_rejects_an_unknown_area(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nosuch", "--quick"])
    assert "unknown area" in capsys.readouterr().err


# ---- run_all's bookkeeping around a run (tiny stand-in scripts, no benchmark) ------------
_OK_SCRIPT = """
import json, sys
out = sys.argv[sys.argv.index("--json") + 1]
json.dump([{"name": "t", "value": float(sys.argv[1]), "unit": "s", "baseline_name": "b",
            "baseline_value": 2.0, "better": "lower", "goal": "<= 1.5 s",
            "ratio": None, "met": None}], open(out, "w"))
"""


def test_run_bench_aggregates_runs_and_reports_failed_ones(tmp_path: Path) -> None:
    ok, bad = tmp_path / "bench_ok.py", tmp_path / "bench_bad.py"
    ok.write_text(_OK_SCRIPT)
    bad.write_text("import sys; sys.exit(3)\n")
    good = run_all.Bench(str(ok), ("1.0",), ("1.0",), no_write=())
    entries, summary = run_all.run_bench(good, runs=2, quick=False, work=tmp_path,
                                         bootstrap=None)
    (e,) = entries
    assert (e["name"], e["value"], e["ratio"], e["met"], e["runs"]) == ("t", 1.0, 2.0, True, 2)
    assert summary["failed_runs"] == 0 and summary["runs"] == 2
    failing = run_all.Bench(str(bad), (), (), no_write=())
    entries, summary = run_all.run_bench(failing, runs=1, quick=True, work=tmp_path,
                                         bootstrap=None)
    assert summary["failed_runs"] == 1
    assert entries[0]["status"] == "failed" and entries[0]["value"] is None
