"""The benchmark table: figures, goals, aggregation over runs, and rendering.

Every benchmark under perf/ reports a list of `Figure`s (one measured value
beside a baseline measured in the same run). `perf/run_all.py` runs each
benchmark several times, aggregates each figure over the runs with
`aggregate` (median, min, max), and writes `perf/results/latest.json` and
`latest.md`.

Ratio direction, defined once here for every figure: the ratio says how fast
we are relative to the baseline, so higher is always better.

* `better="higher"` (throughput, rates): ratio = value / baseline_value.
* `better="lower"` (latency, wall time, bytes): ratio = baseline_value / value.

A ratio of 0.8 therefore reads "80 % of the baseline's speed" whichever way
the unit runs.

Goals are text such as ">= 0.8x", "<= 5 ms" or "<= +1.5 ms" (see `Goal`).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]
GoalOn = Literal["value", "ratio", "delta"]

#: Keys every entry of latest.json has (the issue's list plus the spread over runs).
ENTRY_KEYS = (
    "name", "bench", "value", "unit", "baseline_name", "baseline_value", "ratio", "goal",
    "goal_check", "met", "better", "status", "runs", "value_min", "value_max",
    "baseline_min", "baseline_max", "ratio_min", "ratio_max", "samples",
)

_GOAL_RE = re.compile(
    r"^\s*(?P<op>>=|<=)\s*(?P<plus>\+)?\s*(?P<num>-?[0-9][0-9,_]*(?:\.[0-9]+)?(?:e-?[0-9]+)?)"
    r"\s*(?P<unit>x|\S.*)?\s*$"
)


class GoalError(ValueError):
    """A goal text that `Goal.parse` cannot read."""


@dataclass(frozen=True)
class Goal:
    """A machine-checkable goal.

    Text forms (the unit after the number is free text, for the reader):

    * ">= 0.8x": on the ratio (see the module docstring for its direction);
    * "<= 5 ms", ">= 10,000 /s": on the value itself;
    * "<= +1.5 ms": on the delta, value - baseline_value (added latency).

    Attributes:
        text: the goal as written.
        on: "ratio", "value" or "delta".
        op: ">=" or "<=".
        threshold: the number, commas and underscores removed.
    """

    text: str
    on: GoalOn
    op: Literal[">=", "<="]
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Goal:
        """Read a goal text.

        Raises:
            GoalError: the text is not `<op> [+]<number>[x|unit]` with op >= or <=.
        """
        m = _GOAL_RE.match(text)
        if not m:
            raise GoalError(
                f"goal {text!r} is not '>= 0.8x', '<= 5 ms' or '<= +1.5 ms' "
                "(operator >= or <=, a number, then x for a ratio or a unit)"
            )
        unit = (m["unit"] or "").strip()
        on: GoalOn = "delta" if m["plus"] else "ratio" if unit == "x" else "value"
        op: Literal[">=", "<="] = ">=" if m["op"] == ">=" else "<="
        return cls(text=text, on=on, op=op, threshold=float(re.sub(r"[,_]", "", m["num"])))

    def check(
        self, *, value: float | None, baseline_value: float | None, ratio: float | None
    ) -> bool | None:
        """Whether the figures meet the goal; None when the needed figure is missing."""
        if self.on == "ratio":
            x = ratio
        elif self.on == "value":
            x = value
        else:
            x = None if value is None or baseline_value is None else value - baseline_value
        if x is None:
            return None
        return x >= self.threshold if self.op == ">=" else x <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        """{"on", "op", "threshold"}: the form stored in latest.json."""
        return {"on": self.on, "op": self.op, "threshold": self.threshold}


def ratio_of(value: float | None, baseline_value: float | None, better: Better) -> float | None:
    """The ratio in the module's one direction (higher is better); None without a baseline.

    Raises:
        ValueError: `better` is neither "higher" nor "lower".
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    if value is None or baseline_value is None:
        return None
    num, den = (value, baseline_value) if better == "higher" else (baseline_value, value)
    return num / den if den else None


@dataclass
class Figure:
    """One figure of one run of one benchmark.

    Attributes:
        name: unique across all benchmarks, e.g. "router: Route RPC/s vs no-op server".
        value: the measured figure, in `unit`.
        unit: e.g. "RPC/s", "ms", "B".
        baseline_name: what the baseline is, or None when the figure has none.
        baseline_value: the baseline measured in the same run, in `unit`.
        better: "higher" or "lower": which way `value` improves; sets the ratio direction.
        goal: goal text (see `Goal`), or None.
        ratio: computed from value, baseline_value and better.
        met: computed from goal; None without a goal.
    """

    name: str
    value: float | None
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    better: Better = "higher"
    goal: str | None = None
    ratio: float | None = field(init=False)
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = ratio_of(self.value, self.baseline_value, self.better)
        self.met = (
            Goal.parse(self.goal).check(
                value=self.value, baseline_value=self.baseline_value, ratio=self.ratio
            )
            if self.goal
            else None
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form a benchmark emits with `--json`."""
        return asdict(self)


def write_figures(path: Path, figures: Sequence[Figure]) -> None:
    """Write one run's figures as a JSON list (what `--json PATH` does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([f.as_dict() for f in figures], indent=1) + "\n")


def read_figures(path: Path) -> list[Figure]:
    """Read what `write_figures` wrote.

    Raises:
        ValueError: the file is not a JSON list of figure objects.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of figures")
    out = []
    for d in data:
        fig = Figure(
            name=d["name"], value=d["value"], unit=d["unit"], baseline_name=d["baseline_name"],
            baseline_value=d["baseline_value"], better=d["better"], goal=d["goal"],
        )
        out.append(fig)
    return out


def _spread(xs: Iterable[float | None]) -> tuple[float | None, float | None, float | None]:
    """(median, min, max) of the non-None xs; Nones when there are none."""
    got = [x for x in xs if x is not None]
    if not got:
        return None, None, None
    return statistics.median(got), min(got), max(got)


def aggregate(bench: str, runs: Sequence[Sequence[Figure] | None]) -> list[dict[str, Any]]:
    """One latest.json entry per figure name, over the runs of one benchmark.

    The ratio is the median of the per-run (paired) ratios, not the ratio of
    the medians; `met` checks the goal against the medians (value, baseline,
    ratio). A run that failed is None: a figure counts the runs that reported
    it in `runs`; if no run at all reported figures, one entry named
    "<bench>: failed" with status "failed" stands for the benchmark.

    Args:
        bench: the benchmark's label, e.g. "router/bench_router".
        runs: per run, its figures, or None if that run failed.

    Returns:
        Entries with the keys in ENTRY_KEYS, in first-seen figure order.
    """
    names: dict[str, Figure] = {}
    for run in runs:
        for f in run or []:
            names.setdefault(f.name, f)
    failed_runs = sum(r is None for r in runs)
    if not names:
        return [_failed_entry(bench)]
    out = []
    for name, first in names.items():
        mine = [f for run in runs if run is not None for f in run if f.name == name]
        value, vmin, vmax = _spread(f.value for f in mine)
        base, bmin, bmax = _spread(f.baseline_value for f in mine)
        ratio, rmin, rmax = _spread(f.ratio for f in mine)
        goal = Goal.parse(first.goal) if first.goal else None
        out.append({
            "name": name,
            "bench": bench,
            "value": value,
            "unit": first.unit,
            "baseline_name": first.baseline_name,
            "baseline_value": base,
            "ratio": ratio,
            "goal": first.goal,
            "goal_check": goal.as_dict() if goal else None,
            "met": goal.check(value=value, baseline_value=base, ratio=ratio) if goal else None,
            "better": first.better,
            "status": "ok" if value is not None and not failed_runs else "failed",
            "runs": len(mine),
            "value_min": vmin,
            "value_max": vmax,
            "baseline_min": bmin,
            "baseline_max": bmax,
            "ratio_min": rmin,
            "ratio_max": rmax,
            "samples": [
                {"value": f.value, "baseline_value": f.baseline_value, "ratio": f.ratio}
                for f in mine
            ],
        })
    return out


def _failed_entry(bench: str) -> dict[str, Any]:
    entry: dict[str, Any] = dict.fromkeys(ENTRY_KEYS)
    entry.update(name=f"{bench}: failed", bench=bench, unit="", status="failed", runs=0,
                 better="higher", samples=[])
    return entry


def fmt_num(x: float | None) -> str:
    """A figure for the table: 3 significant digits, thousands separators."""
    if x is None:
        return "-"
    a = abs(x)
    if a >= 1000 or float(x).is_integer():  # counts read better without decimals
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.2g}" if a >= 0.1 else f"{x:.3g}"


def _range(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or lo == hi else f" ({fmt_num(lo)}-{fmt_num(hi)})"


def table_rows(entries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Cells per entry: figure, value (min-max), baseline, baseline value, ratio (min-max),
    goal, met. Shared by the markdown and the terminal table."""
    rows = []
    for e in entries:
        unit = f" {e['unit']}" if e["unit"] else ""
        if e["status"] == "failed" and e["value"] is None:
            rows.append([e["name"], "FAILED", e["baseline_name"] or "", "-", "-",
                         e["goal"] or "", "failed"])
            continue
        met = {True: "yes", False: "NO", None: ""}[e["met"]]
        if e["status"] == "failed":
            met = (met + " " if met else "") + f"({e['runs']} runs; some failed)"
        rows.append([
            e["name"],
            f"{fmt_num(e['value'])}{unit}{_range(e['value_min'], e['value_max'])}",
            e["baseline_name"] or "",
            f"{fmt_num(e['baseline_value'])}{unit}" if e["baseline_value"] is not None else "-",
            (f"{fmt_num(e['ratio'])}x{_range(e['ratio_min'], e['ratio_max'])}"
             if e["ratio"] is not None else "-"),
            e["goal"] or "",
            met,
        ])
    return rows


TABLE_HEADER = ["figure", "median (min-max)", "baseline", "baseline median", "ratio",
                "goal", "met"]


def markdown_table(entries: Sequence[dict[str, Any]]) -> str:
    """The README-ready markdown table."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |",
             "|---|---:|---|---:|---:|---|---|"]
    for row in table_rows(entries):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"
