"""report.json, the two PNG charts and the short console report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agentmesh.runtime.files import write_atomic

TOP_CHART = "top_naics.png"
SPREAD_CHART = "load_spread.png"


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write report.json atomically; returns its path."""
    path = out_dir / "report.json"
    write_atomic(path, json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_charts(out_dir: Path, report: dict[str, Any]) -> dict[str, str]:
    """PNG charts of the top 10 commodities and of the partitions per agent.

    Returns:
        {"top_naics": path, "load_spread": path}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    top = report["top_naics"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    labels = [f"{t['naics_code']} {t['title'][:38]}" for t in top][::-1]
    values = [t["kg_co2e"] / 1e6 for t in top][::-1]  # kt CO2e
    ax.barh(labels, values, color="#2e7d32")
    ax.set_xlabel("kt CO2e (spend x EPA supply-chain factor with margins)")
    total_t = report["total_kg_co2e"] / 1e3
    ax.set_title(f"Scope 3 category 1: top {len(top)} NAICS commodities\n"
                 f"total {total_t:,.0f} t CO2e over {report['scenario']['suppliers']:,} suppliers")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.1f}", va="center", fontsize=8)
    fig.tight_layout()
    top_path = out_dir / TOP_CHART
    fig.savefig(top_path, dpi=110)
    plt.close(fig)

    counts: dict[str, int] = report["swarm"]["partitions_by_agent"]
    ids = sorted(counts)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    xs = list(range(len(ids)))
    # Colour by worker process: agents sharing a process share its CPU time.
    process_of = {a: f["process"] for f in report.get("fleet", []) for a in f["agents"]}
    palette = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e"]
    procs = sorted({process_of.get(i, "?") for i in ids})
    colour = {p: palette[n % len(palette)] for n, p in enumerate(procs)}
    for p in procs:
        px = [x for x, i in zip(xs, ids, strict=True) if process_of.get(i, "?") == p]
        ax1.bar(px, [counts[ids[x]] for x in px], color=colour[p], width=0.85, label=p)
    mean = report["swarm"]["spread"]["mean"]
    ax1.axhline(mean, color="#c62828", linestyle="--", linewidth=1, label=f"mean {mean:.1f}")
    ax1.set_xlabel("calculator agent (by id)")
    ax1.set_ylabel("partitions computed")
    ax1.set_title(f"Swarm foraging: {report['swarm']['partitions_done']} partitions over "
                  f"{len(ids)} agents")
    ax1.set_ylim(0, max(counts.values(), default=1) * 1.3)
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize=7, loc="upper right", ncol=min(4, len(procs) + 1))
    # How many agents computed k partitions, for each k.
    per_k: dict[int, int] = {}
    for c in counts.values():
        per_k[c] = per_k.get(c, 0) + 1
    ax2.barh(list(per_k), list(per_k.values()), color="#1565c0")
    ax2.set_ylim(ax1.get_ylim())
    ax2.set_xlabel("agents")
    ax2.set_ylabel("partitions computed")
    ax2.set_title("spread")
    fig.tight_layout()
    spread_path = out_dir / SPREAD_CHART
    fig.savefig(spread_path, dpi=110)
    plt.close(fig)
    return {"top_naics": str(top_path), "load_spread": str(spread_path)}


def print_report(console: Console, report: dict[str, Any]) -> None:
    """The short human report."""
    sc = report["scenario"]
    v = report["verification"]
    sw = report["swarm"]
    console.rule("[bold]AgentMesh demo: spend-based Scope 3 category 1")
    console.print(
        f"{sc['suppliers']:,} suppliers over {report['data']['factor_count']:,} EPA NAICS-6 "
        f"factors (seed {sc['seed']}), {sc['agents']} calculator agents in "
        f"{sc['calculator_processes']} worker process(es) + 5 CSRD agents, bus on "
        f"[bold]{sc['bus_backend']}[/]."
    )
    ok = "[green]OK[/]" if v["ok"] else "[red]MISMATCH[/]"
    console.print(
        f"Total: [bold]{report['total_kg_co2e'] / 1e3:,.1f} t CO2e[/] "
        f"({report['total_kg_co2e']:,.3f} kg) on {report['data']['spend_usd_total']:,.2f} USD "
        f"spend. Direct numpy check: relative error {v['relative_error']:.2e} "
        f"(tolerance {v['tolerance']:.0e}) {ok}"
    )
    t = Table(title="Top 10 NAICS by emissions", show_lines=False)
    t.add_column("#", justify="right")
    t.add_column("NAICS")
    t.add_column("title", max_width=44, no_wrap=True, overflow="ellipsis")
    t.add_column("t CO2e", justify="right")
    t.add_column("share", justify="right")
    for row in report["top_naics"]:
        t.add_row(str(row["rank"]), row["naics_code"], row["title"],
                  f"{row['kg_co2e'] / 1e3:,.1f}", f"{row['share'] * 100:.1f}%")
    console.print(t)
    cc = report["cross_check"]
    console.print(
        f"Swarm: {sw['partitions_done']}/{sw['partitions_total']} partitions over "
        f"{sw['agents_used']} agents (min {sw['spread']['min']}, max {sw['spread']['max']}, "
        f"mean {sw['spread']['mean']:.1f}), {sw['reassignments']} reassignments. "
        f"Router cross-check: {cc['unanimous']}/{cc['samples']} sampled partitions unanimous "
        f"over {cc['agents_per_sample']} agents, {cc['matches_direct']} equal to the direct value."
    )
    for s in report["sagas"]:
        comp = " → ".join(s["compensation_order"]) or "none"
        console.print(
            f"Saga [bold]{s['name']}[/]: {s['state']} in {s['duration_ms']:.0f} ms; "
            f"compensated: {comp}" + (f"; cause {s['error']}" if s["error"] else "")
        )
    bus = report.get("bus") or {}
    if bus:
        console.print(
            f"Bus: report published to {bus.get('topic')} "
            f"(partition {bus.get('partition')}, offset {bus.get('offset')}), hash chain "
            f"{'valid' if bus.get('chain_valid') else 'INVALID'}."
        )
    tm = report["timings_s"]
    console.print("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in tm.items()))
    console.print(f"Wrote {report['paths']['report']}, {report['paths']['suppliers']}, "
                  f"{report['paths']['charts']['top_naics']}, "
                  f"{report['paths']['charts']['load_spread']}")
