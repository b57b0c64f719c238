"""Swarm engine benchmark: our PSO against pyswarms, fitness throughput, and
the partition scheduler.

Usage: python perf/swarm/bench_pso.py [--seeds 100] [--iterations 1000]
       [--particles 50] [--partitions 100000] [--agents 100]
       [--behaviour-seeds 5] [--skip-behaviours] [--skip-ablation] [--no-write]
       [--json PATH]

1. PSO, side by side in this process with pyswarms' GlobalBestPSO on Sphere,
   Rastrigin and Rosenbrock in 10 and 30 dimensions: same particle count,
   iterations, seeds, w/c1/c2, velocity clamp and clipping at the bounds, same
   fitness callable. Our engine runs plain PSO (behaviour SWARMING, every
   particle a Worker) with early stopping disabled so both do exactly
   ``--iterations`` iterations. Runs alternate between the two libraries (and
   which goes first) so load from other processes hits both alike. Our
   initial velocities are the engine default (half-diff, Standard PSO 2006);
   an ablation run with zero initial velocities (the engine's previous
   default) is reported next to it, untimed.
   Reported: wall-time ratio ours/pyswarms (goal <= 1.0), the same for the
   optimiser's own time (wall minus time inside the fitness function), and
   the median final best cost of each (goal: ours no worse; both at or below
   1e-12 counts as equal), with one-sided Mann-Whitney U tests both ways
   because medians of a few dozen runs on multi-modal functions are noisy.
2. Fitness evaluations per second for every built-in function with 1,000
   particles (goal >= 5,000,000/s), next to a textbook numpy expression of the
   same function timed the same way.
3. Partition scheduler: 100 simulated agents of log-normally spread speeds,
   some too slow for their lease, some removed mid-run while their results
   still arrive late; decisions (assignments) per second of scheduler time,
   and a check that the total is exact.
4. Quality of each behaviour on the four functions (10-D, 40 particles, up to
   1000 iterations with convergence detection on), engine only.

Prints the tables and (unless --no-write) replaces the "## Engine: ..."
sections of perf/swarm/RESULTS.md, leaving other benchmarks' sections alone.
`--json PATH` writes the figures for perf/run_all.py.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agentmesh.server.swarm.engine import (  # noqa: E402
    BENCHMARKS,
    Behaviour,
    BoundaryMode,
    PartitionScheduler,
    SwarmConfig,
    SwarmOptimizer,
    VelocityInit,
    get_benchmark,
)
from agentmesh.server.swarm.engine.arrays import FloatArray  # noqa: E402
from agentmesh.server.swarm.engine.pso import DEFAULT_C1, DEFAULT_C2, DEFAULT_W  # noqa: E402
from perf.common import emit_figures  # noqa: E402
from perf.table import Figure  # noqa: E402

V_CLAMP_FRACTION = 0.2
AT_OPTIMUM = 1e-12
EVALS_GOAL = 5_000_000
SIGNIFICANCE = 0.05
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# This script owns the RESULTS.md sections whose heading starts with this;
# other benchmarks (bench_partitions.py) own theirs.
SECTION_PREFIX = "## Engine: "


def _silence_pyswarms() -> None:
    # pyswarms' Reporter runs logging.config.dictConfig on every optimiser it
    # builds, adding a console handler and a file handler on ./report.log,
    # unless $LOG_CFG names a YAML config. Hand it an empty one.
    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="pyswarms-log-")
    with os.fdopen(fd, "w") as f:
        f.write("version: 1\ndisable_existing_loggers: false\n")
    os.environ["LOG_CFG"] = path
    logging.getLogger("pyswarms").setLevel(logging.ERROR)


_silence_pyswarms()
import pyswarms  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402


class TimedFitness:
    """Wraps a fitness function and accumulates the time spent inside it."""

    def __init__(self, fn: Callable[[FloatArray], FloatArray]) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, x: FloatArray) -> FloatArray:
        t0 = time.perf_counter()
        out = self.fn(x)
        self.seconds += time.perf_counter() - t0
        return out


@dataclass
class PsoRow:
    function: str
    dimensions: int
    ours_s: float
    theirs_s: float
    ours_fit_s: float
    theirs_fit_s: float
    ours_best: list[float]
    theirs_best: list[float]
    ours_cpu_s: float = 0.0
    theirs_cpu_s: float = 0.0
    zero_init_best: list[float] | None = None

    @property
    def ratio(self) -> float:
        return self.ours_s / self.theirs_s

    @property
    def cpu_ratio(self) -> float:
        return self.ours_cpu_s / self.theirs_cpu_s

    @property
    def overhead_ratio(self) -> float:
        return (self.ours_s - self.ours_fit_s) / (self.theirs_s - self.theirs_fit_s)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours_best)

    @property
    def theirs_median(self) -> float:
        return statistics.median(self.theirs_best)

    @property
    def no_worse(self) -> bool:
        """Median at least as good (or both at the optimum)."""
        o, t = self.ours_median, self.theirs_median
        return o <= t or (o <= AT_OPTIMUM and t <= AT_OPTIMUM)

    @property
    def p_worse(self) -> float:
        """One-sided Mann-Whitney U p-value for "ours tends to be worse"."""
        if self.no_worse and self.ours_median <= AT_OPTIMUM:
            return 1.0
        return float(mannwhitneyu(self.ours_best, self.theirs_best, alternative="greater").pvalue)

    @property
    def p_better(self) -> float:
        """One-sided Mann-Whitney U p-value for "ours tends to be better"."""
        if self.ours_median <= AT_OPTIMUM and self.theirs_median <= AT_OPTIMUM:
            return 1.0
        return float(mannwhitneyu(self.ours_best, self.theirs_best, alternative="less").pvalue)

    @property
    def zero_init_median(self) -> float:
        return statistics.median(self.zero_init_best or [math.nan])


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    fitness_s: float
    best: float


def run_ours(
    name: str,
    d: int,
    n: int,
    iters: int,
    seed: int,
    velocity_init: VelocityInit = VelocityInit.HALF_DIFF,
) -> Run:
    bench = get_benchmark(name)
    fit = TimedFitness(bench.function)
    c0 = time.process_time()
    t0 = time.perf_counter()
    cfg = SwarmConfig(
        n_particles=n,
        dimensions=d,
        bounds=bench.bounds(),
        behaviour=Behaviour.SWARMING,
        seed=seed,
        max_iterations=iters,
        w=DEFAULT_W,
        c1=DEFAULT_C1,
        c2=DEFAULT_C2,
        v_max_fraction=V_CLAMP_FRACTION,
        boundary=BoundaryMode.CLIP,
        velocity_init=velocity_init,
        # No early stop: both libraries run exactly `iters` iterations.
        convergence_threshold=1e-300,
        spread_threshold=1e-300,
    )
    st = SwarmOptimizer(cfg, fitness=fit).run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if st.iteration != iters:
        raise RuntimeError(f"engine stopped after {st.iteration} iterations")
    return Run(wall, cpu, fit.seconds, st.best_fitness)


def run_pyswarms(name: str, d: int, n: int, iters: int, seed: int) -> Run:
    bench = get_benchmark(name)
    fit = TimedFitness(bench.function)
    lo, hi = np.full(d, bench.lower), np.full(d, bench.upper)
    v_max = V_CLAMP_FRACTION * (bench.upper - bench.lower)
    np.random.seed(seed)  # pyswarms draws from numpy's global generator
    c0 = time.process_time()
    t0 = time.perf_counter()
    opt = pyswarms.single.GlobalBestPSO(
        n_particles=n,
        dimensions=d,
        options={"c1": DEFAULT_C1, "c2": DEFAULT_C2, "w": DEFAULT_W},
        bounds=(lo, hi),
        velocity_clamp=(-v_max, v_max),
        bh_strategy="nearest",  # clip to the bounds, as our CLIP
    )
    cost, _ = opt.optimize(fit, iters=iters, verbose=False)
    wall = time.perf_counter() - t0
    return Run(wall, time.process_time() - c0, fit.seconds, float(cost))


def bench_pso(seeds: int, iters: int, n: int, *, ablation: bool = True) -> list[PsoRow]:
    rows = []
    for name in ("sphere", "rastrigin", "rosenbrock"):
        for d in (10, 30):
            row = PsoRow(name, d, 0.0, 0.0, 0.0, 0.0, [], [], zero_init_best=[])
            for seed in range(seeds):
                pair = [("ours", run_ours), ("theirs", run_pyswarms)]
                if seed % 2:
                    pair.reverse()
                for who, fn in pair:
                    run = fn(name, d, n, iters, seed)
                    if who == "ours":
                        row.ours_s += run.wall_s
                        row.ours_cpu_s += run.cpu_s
                        row.ours_fit_s += run.fitness_s
                        row.ours_best.append(run.best)
                    else:
                        row.theirs_s += run.wall_s
                        row.theirs_cpu_s += run.cpu_s
                        row.theirs_fit_s += run.fitness_s
                        row.theirs_best.append(run.best)
            for seed in range(seeds if ablation else 0):  # ablation, untimed
                zero = run_ours(name, d, n, iters, seed, VelocityInit.ZERO)
                assert row.zero_init_best is not None
                row.zero_init_best.append(zero.best)
            rows.append(row)
            print(
                f"  {name:10s} d={d:2d}  wall ours/pyswarms {row.ours_s:6.2f}/{row.theirs_s:6.2f} s"
                f" = {row.ratio:.2f} (CPU {row.cpu_ratio:.2f})"
                f"  median best {row.ours_median:.4g} vs {row.theirs_median:.4g}"
                f" (v0=0: {row.zero_init_median:.4g})"
                f"  p(worse) {row.p_worse:.2f} p(better) {row.p_better:.2f}",
                flush=True,
            )
    return rows


# Textbook numpy forms, as one would write them without tuning.
TEXTBOOK: dict[str, Callable[[FloatArray], FloatArray]] = {
    "sphere": lambda x: np.sum(x**2, axis=1),
    "rastrigin": lambda x: 10 * x.shape[1] + np.sum(x**2 - 10 * np.cos(2 * np.pi * x), axis=1),
    "rosenbrock": lambda x: np.sum(
        100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2, axis=1
    ),
    "ackley": lambda x: (
        -20 * np.exp(-0.2 * np.sqrt(np.mean(x**2, axis=1)))
        - np.exp(np.mean(np.cos(2 * np.pi * x), axis=1))
        + 20
        + np.e
    ),
}


def _evals_per_s(fn: Callable[[FloatArray], FloatArray], x: FloatArray) -> float:
    calls = 20
    best = math.inf
    for _ in range(30):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x)
        best = min(best, (time.perf_counter() - t0) / calls)
    return int(x.shape[0]) / best


@dataclass
class EvalRow:
    function: str
    dimensions: int
    ours: float
    textbook: float


def bench_evals() -> list[EvalRow]:
    rows = []
    rng = np.random.default_rng(0)
    for name, bench in BENCHMARKS.items():
        for d in (10, 30):
            x = rng.uniform(bench.lower, bench.upper, (1000, d))
            np.testing.assert_allclose(bench.function(x), TEXTBOOK[name](x), rtol=1e-9, atol=1e-9)
            ours = _evals_per_s(bench.function, x)
            base = _evals_per_s(TEXTBOOK[name], x)
            rows.append(EvalRow(name, d, ours, base))
            print(
                f"  {name:10s} d={d:2d}  {ours / 1e6:6.1f} M/s"
                f"  (textbook numpy {base / 1e6:5.1f} M/s)",
                flush=True,
            )
    return rows


@dataclass
class SchedResult:
    agents: int
    partitions: int
    decisions: int
    assign_s: float
    complete_s: float
    expire_s: float
    timeouts: int
    duplicates: int
    removed: int
    exact: bool
    fastest_decile_share: float


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bench_partitions(n_agents: int, n_partitions: int) -> SchedResult:
    rng = np.random.default_rng(0)
    clock = _Clock()
    lease_s = 5.0
    sched = PartitionScheduler(
        [f"p{i}" for i in range(n_partitions)], lease_s=lease_s, clock=clock, seed=0
    )
    # Seconds per partition: log-normal around 1 s; 3 agents need 8 s and
    # always overrun their 5 s lease; 5 agents are removed at t=200 s.
    speed = {f"agent-{i:03d}": float(s) for i, s in enumerate(rng.lognormal(0.0, 0.5, n_agents))}
    for i in range(3):
        speed[f"agent-{i:03d}"] = 8.0
    doomed = [f"agent-{i:03d}" for i in range(3, 8)]
    values = rng.lognormal(0.0, 2.0, n_partitions)
    for agent in speed:
        sched.add_agent(agent, max_in_flight=2)
    events: list[tuple[float, int, int]] = []
    t_assign = t_complete = t_expire = 0.0
    killed = False
    while not sched.finished:
        if not killed and clock.now >= 200.0:
            for agent in doomed:
                sched.remove_agent(agent)
            killed = True
        t0 = time.perf_counter()
        sched.expire()
        t1 = time.perf_counter()
        leases = sched.assign_all()
        t2 = time.perf_counter()
        t_expire += t1 - t0
        t_assign += t2 - t1
        for le in leases:
            work = speed[le.agent_id] * float(rng.uniform(0.8, 1.2))
            heapq.heappush(events, (clock.now + work, le.lease_id, int(le.partition_id[1:])))
        when, lease_id, p = heapq.heappop(events)
        clock.now = when
        t0 = time.perf_counter()
        sched.complete(lease_id, records=1000, value=float(values[p]))
        t_complete += time.perf_counter() - t0
    while events:  # late results of reclaimed leases: all duplicates
        when, lease_id, p = heapq.heappop(events)
        clock.now = when
        sched.complete(lease_id, records=1000, value=float(values[p]))
    st = sched.stats()
    ranked = sorted(speed, key=speed.__getitem__)
    fastest = ranked[: n_agents // 10]
    share = sum(st.agents[a].counted for a in fastest) / st.done
    return SchedResult(
        agents=n_agents,
        partitions=n_partitions,
        decisions=st.decisions,
        assign_s=t_assign,
        complete_s=t_complete,
        expire_s=t_expire,
        timeouts=sum(a.timeouts for a in st.agents.values()),
        duplicates=sum(a.duplicates for a in st.agents.values()),
        removed=len(doomed),
        exact=st.done == n_partitions and st.value_total == math.fsum(values.tolist()),
        fastest_decile_share=share,
    )


@dataclass
class BehaviourRow:
    behaviour: str
    cells: dict[str, tuple[float, float]]  # function -> (median best, median iterations)
    seconds: float


def bench_behaviours(seeds: int) -> list[BehaviourRow]:
    rows = []
    for b in Behaviour:
        t0 = time.perf_counter()
        cells: dict[str, tuple[float, float]] = {}
        for name in ("rastrigin", "sphere", "rosenbrock", "ackley"):
            bench = get_benchmark(name)
            best, its = [], []
            for seed in range(seeds):
                cfg = SwarmConfig(
                    n_particles=40,
                    dimensions=10,
                    bounds=bench.bounds(),
                    behaviour=b,
                    seed=seed,
                    max_iterations=1000,
                )
                st = SwarmOptimizer(cfg, fitness=bench.function).run()
                best.append(st.best_fitness)
                its.append(st.iteration)
            cells[name] = (statistics.median(best), statistics.median(its))
        rows.append(BehaviourRow(b.value, cells, time.perf_counter() - t0))
        print(
            f"  {b.value:11s} " + "  ".join(f"{k} {v[0]:.3g}@{v[1]:.0f}" for k, v in cells.items()),
            flush=True,
        )
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(
    args: argparse.Namespace,
    pso: list[PsoRow],
    evals: list[EvalRow],
    sched: SchedResult,
    behaviours: list[BehaviourRow],
    load_before: tuple[float, float, float],
    seconds: float,
) -> list[str]:
    """This script's RESULTS.md sections, each starting with SECTION_PREFIX."""
    cmd = "python perf/swarm/bench_pso.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--no-write"
    )
    total_ours = sum(r.ours_s for r in pso)
    total_theirs = sum(r.theirs_s for r in pso)
    cpu_ratio = sum(r.ours_cpu_s for r in pso) / sum(r.theirs_cpu_s for r in pso)
    significant = [r for r in pso if r.p_worse < SIGNIFICANCE]
    pso_lines = [
        f"{SECTION_PREFIX}PSO against pyswarms GlobalBestPSO",
        "",
        f"Reproduce: `{cmd}` (all four engine sections; about {seconds / 60:.1f} minutes "
        f"here, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"Machine: {os.cpu_count()} CPUs ({_cpu_model()}), shared with other work "
        f"(load average {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f} "
        f"at the start); Python {platform.python_version()}, numpy {np.__version__}, "
        f"pyswarms {pyswarms.__version__}.",
        "",
        f"{args.particles} particles, {args.iterations} iterations, seeds 0-{args.seeds - 1}, "
        f"w = {DEFAULT_W}, c1 = c2 = {DEFAULT_C1}, velocity clamp ±{V_CLAMP_FRACTION} of the "
        "range, positions clipped to the bounds (our CLIP, the absorbing wall, also zeroes "
        "the clipped velocity component; pyswarms `nearest` keeps it), standard bounds of "
        "each function, the same fitness callable for both. Initial velocities: ours "
        "half-diff, `v(0) = (U[lower, upper] - x(0)) / 2` (Standard PSO 2006; Helwig & "
        "Wanka 2008; the engine default), pyswarms' uniform within the clamp; *v(0) = 0* "
        "is an untimed ablation of ours with zero initial velocities (Engelbrecht 2012; the "
        "engine's default before). Ours: behaviour SWARMING (plain gbest PSO), early "
        "stopping off, "
        "so both run every iteration. Runs alternate between the libraries. *Optimiser-only* "
        "is wall time minus time inside the fitness function. *CPU ratio* uses process CPU "
        "time instead of wall time, which other processes on this shared machine disturb "
        "less. *p(worse)* is the one-sided "
        "Mann-Whitney U p-value for ours having larger (worse) final costs; below "
        f"{SIGNIFICANCE} would mean ours is significantly worse; *p(better)* the same the "
        "other way.",
        "",
        "| function | d | wall ours / pyswarms (s) | wall ratio (goal <= 1.0) | CPU ratio "
        "| optimiser-only ratio | median best ours | median best pyswarms "
        "| median no worse | p(worse) | p(better) | median ours, v(0) = 0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in pso:
        pso_lines.append(
            f"| {r.function} | {r.dimensions} | {r.ours_s:.2f} / {r.theirs_s:.2f} "
            f"| **{r.ratio:.2f}** | {r.cpu_ratio:.2f} | {r.overhead_ratio:.2f} "
            f"| {r.ours_median:.4g} | {r.theirs_median:.4g} "
            f"| {'yes' if r.no_worse else 'no'} | {r.p_worse:.2f} | {r.p_better:.2f} "
            f"| {r.zero_init_median:.4g} |"
        )
    pso_lines += [
        f"| **all** | | {total_ours:.2f} / {total_theirs:.2f} "
        f"| **{total_ours / total_theirs:.2f}** | {cpu_ratio:.2f} | | | "
        f"| {sum(r.no_worse for r in pso)}/{len(pso)} "
        f"| {len(significant)} significantly worse "
        f"| {sum(r.p_better < SIGNIFICANCE for r in pso)} significantly better | |",
        "",
        "Final best cost per seed (ours | pyswarms):",
        "",
    ]
    for r in pso:
        pso_lines.append(
            f"- {r.function} {r.dimensions}-D: "
            + ", ".join(f"{v:.3g}" for v in r.ours_best)
            + " | "
            + ", ".join(f"{v:.3g}" for v in r.theirs_best)
        )
    eval_lines = [
        f"{SECTION_PREFIX}fitness evaluations per second, 1,000 particles",
        "",
        "Best of 30 timings of 20 calls on a (1000, d) batch (the minimum is the figure "
        "least disturbed by other processes). *Textbook* is the usual "
        "one-line numpy expression of the same function (e.g. "
        "`10*d + sum(x**2 - 10*cos(2*pi*x))`), checked equal to ours to 1e-9. Rastrigin and "
        "Ackley use an exact `sin²(πx)` rewrite with a polynomial kernel "
        "(services/swarm/engine/functions.py) because numpy's float64 `cos` has no SIMD "
        "path here.",
        "",
        "| function | d | ours (evals/s) | textbook numpy (evals/s) | ours / textbook "
        "| goal >= 5,000,000/s |",
        "|---|---|---|---|---|---|",
    ]
    for e in evals:
        eval_lines.append(
            f"| {e.function} | {e.dimensions} | {e.ours:,.0f} | {e.textbook:,.0f} "
            f"| {e.ours / e.textbook:.1f}x | {_met(e.ours >= EVALS_GOAL)} |"
        )
    decisions_per_s = sched.decisions / sched.assign_s
    loop_per_s = sched.partitions / (sched.assign_s + sched.complete_s + sched.expire_s)
    sched_lines = [
        f"{SECTION_PREFIX}partition scheduler, in process",
        "",
        f"`PartitionScheduler` alone (no gRPC, no Redis): {sched.agents} simulated agents "
        f"(2 slots each) on {sched.partitions:,} partitions in simulated time: seconds per "
        "partition log-normal around 1 s; 3 agents need 8 s on a 5 s lease (they always "
        f"time out); {sched.removed} agents removed at t = 200 s, whose results still arrive "
        "later. Only time inside scheduler calls counts. The daemon end to end is measured "
        "by bench_partitions.py.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| assignment decisions | {sched.decisions:,} |",
        f"| decisions per second (time in `assign_all`) | **{decisions_per_s:,.0f}** |",
        "| partitions per second over all scheduler calls (assign + complete + expire) "
        f"| {loop_per_s:,.0f} |",
        f"| lease timeouts reclaimed | {sched.timeouts:,} |",
        f"| late duplicate results ignored | {sched.duplicates:,} |",
        "| share of partitions done by the fastest 10 % of agents "
        f"| {sched.fastest_decile_share:.1%} |",
        "| every partition counted once, total exact (`math.fsum`) "
        f"| {'yes' if sched.exact else 'NO'} |",
    ]
    sections = [pso_lines, eval_lines, sched_lines]
    if behaviours:
        beh_lines = [
            f"{SECTION_PREFIX}behaviours",
            "",
            "Engine only. 10-D, 40 particles, up to 1000 iterations with convergence "
            "detection on (defaults: relative improvement < 1e-8 over 25 iterations and "
            f"spread < 1e-3), seeds 0-{args.behaviour_seeds - 1}; median best fitness @ median "
            "iterations run (1000 = did not converge).",
            "",
            "| behaviour | rastrigin | sphere | rosenbrock | ackley | time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for b in behaviours:
            cells = " | ".join(f"{v[0]:.3g} @ {v[1]:.0f}" for v in b.cells.values())
            beh_lines.append(f"| {b.behaviour} | {cells} | {b.seconds:.1f} |")
        sections.append(beh_lines)
    return ["\n".join(lines) + "\n" for lines in sections]


def merge_results(existing: str, mine: list[str]) -> str:
    """Replaces this script's sections of RESULTS.md, keeping everyone else's."""
    parts = re.split(r"(?m)^(?=## )", existing)
    preamble, others = parts[0], [p for p in parts[1:] if not p.startswith(SECTION_PREFIX)]
    if not preamble.strip():
        preamble = "# Swarm benchmarks\n"
    body = [preamble.rstrip("\n") + "\n", *mine, *others]
    return "\n".join(b.rstrip("\n") + "\n" for b in body)


def figures(pso: list[PsoRow], evals: list[EvalRow], sched: SchedResult) -> list[Figure]:
    """The figures of one run for the benchmark table (perf/table.py)."""
    slowest = min(evals, key=lambda e: e.ours)
    return [
        Figure(name=f"swarm: PSO wall time, {len(pso)} problems (sphere/rastrigin/rosenbrock, "
                    "10 and 30-D)",
               value=sum(r.ours_s for r in pso), unit="s",
               baseline_name="pyswarms GlobalBestPSO, same runs",
               baseline_value=sum(r.theirs_s for r in pso), better="lower", goal=">= 1.0x"),
        Figure(name=f"swarm: PSO problems with final cost significantly worse than pyswarms "
                    f"(of {len(pso)}, Mann-Whitney p < {SIGNIFICANCE})",
               value=float(sum(r.p_worse < SIGNIFICANCE for r in pso)), unit="",
               better="lower", goal="<= 0"),
        Figure(name=f"swarm: fitness evaluations/s, 1,000 particles, slowest function "
                    f"({slowest.function} {slowest.dimensions}-D)",
               value=slowest.ours, unit="/s",
               baseline_name="textbook numpy expression, same function",
               baseline_value=slowest.textbook, goal=">= 5,000,000 /s"),
        Figure(name=f"swarm: partition scheduler decisions/s, in process "
                    f"({sched.agents} agents)",
               value=sched.decisions / sched.assign_s, unit="/s"),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--particles", type=int, default=50)
    p.add_argument("--partitions", type=int, default=100_000)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--behaviour-seeds", type=int, default=5)
    p.add_argument("--skip-behaviours", action="store_true")
    p.add_argument("--skip-ablation", action="store_true",
                   help="leave out the untimed v(0) = 0 runs of ours")
    p.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write this run's figures as a JSON list (used by perf/run_all.py)")
    args = p.parse_args()
    load = os.getloadavg()
    t0 = time.perf_counter()
    print("PSO vs pyswarms GlobalBestPSO", flush=True)
    pso = bench_pso(args.seeds, args.iterations, args.particles, ablation=not args.skip_ablation)
    print("Fitness evaluations per second (1000 particles)", flush=True)
    evals = bench_evals()
    print(f"Partition scheduler ({args.agents} agents, {args.partitions:,} partitions)", flush=True)
    sched = bench_partitions(args.agents, args.partitions)
    print(f"  {sched.decisions / sched.assign_s:,.0f} decisions/s, exact={sched.exact}", flush=True)
    behaviours: list[BehaviourRow] = []
    if not args.skip_behaviours:
        print("Behaviours", flush=True)
        behaviours = bench_behaviours(args.behaviour_seeds)
    mine = render(args, pso, evals, sched, behaviours, load, time.perf_counter() - t0)
    print()
    print("\n".join(mine))
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else ""
        RESULTS.write_text(merge_results(old, mine))
        print(f"updated the engine sections of {RESULTS.relative_to(ROOT)}")
    emit_figures(figures(pso, evals, sched), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
