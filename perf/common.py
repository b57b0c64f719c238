"""Helpers shared by the benchmark scripts under perf/.

The benchmarks run as files (`python perf/<area>/bench_<x>.py` from the
repository root), so each one puts the root on `sys.path` before importing
from it:

    ROOT = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(ROOT))
    from perf.common import closed_loop, percentile  # noqa: E402

Every benchmark also exposes `figures(...) -> list[perf.table.Figure]` (its
headline figures, each beside the baseline measured in the same run) and takes
`--json PATH` (`add_json`, `emit_figures`); perf/run_all.py (`make bench`)
runs each one three times and aggregates those files into perf/results/.

Processes and servers come from the same helpers the integration tests use:
`tests.procs.DaemonProcess` (waits for the `serving` log line; the baselines
in perf/noop_servers.py log it too) and `tests.infra.RedisServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from perf.table import Figure, write_figures

ROOT = Path(__file__).resolve().parent.parent
#: `python perf/noop_servers.py registry|router|agent`: the no-op gRPC baselines.
NOOP_SERVERS = ROOT / "perf" / "noop_servers.py"


def percentile(xs: Sequence[float], q: float) -> float:
    """The value at rank floor(q * n) + 1 of the sorted xs (capped at the largest).

    Args:
        xs: samples (any order), at least one.
        q: quantile in [0, 1], e.g. 0.99.
    """
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class LoopResult:
    """What a `closed_loop` run did.

    Attributes:
        latencies_ms: one per completed call, in completion order.
        wall_s: seconds from the first call to the last completion.
        errors: calls that raised one of the tolerated exceptions (not timed).
    """

    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0

    @property
    def calls(self) -> int:
        """Completed calls."""
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        """Completed calls per second."""
        return self.calls / self.wall_s if self.wall_s else 0.0


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    seconds: float,
    limit: int | None = None,
    tolerate: tuple[type[BaseException], ...] = (),
) -> LoopResult:
    """Keep `concurrency` calls in flight until `seconds` pass or `limit` calls started.

    Args:
        call: `call(i)` makes call number i (0, 1, 2, ... across all workers),
            e.g. `lambda i: stub.Route(reqs[i % len(reqs)])`.
        concurrency: workers, each with one call in flight.
        seconds: no worker starts a call after this long.
        limit: at most this many calls are started (None: no limit).
        tolerate: exceptions counted in `errors` instead of ending the run.
    """
    res = LoopResult()
    started = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal started
        while time.perf_counter() < stop_at and (limit is None or started < limit):
            i = started
            started += 1
            t0 = time.perf_counter()
            try:
                await call(i)
            except tolerate:
                res.errors += 1
                continue
            res.latencies_ms.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.wall_s = time.perf_counter() - t0
    return res


async def sequential_ms(call: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    """Latency in ms of `call(0)`, ..., `call(n - 1)`, one at a time."""
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def add_no_write(ap: argparse.ArgumentParser) -> None:
    """Add `--no-write`: print the figures without touching RESULTS.md (short trial runs)."""
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")


def write_results(path: Path, text: str, ns: argparse.Namespace) -> None:
    """Print `text` and, unless `--no-write` was given (see `add_no_write`), write it to `path`."""
    print(text)
    if getattr(ns, "no_write", False):
        print(f"(--no-write: {path.relative_to(ROOT)} left as it was)")
        return
    path.write_text(text)


def add_json(ap: argparse.ArgumentParser) -> None:
    """Add `--json PATH`: write this run's figures (perf/table.py `Figure`) as JSON.

    perf/run_all.py passes it on each run and aggregates the files into
    perf/results/latest.json.
    """
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write this run's figures as a JSON list (used by perf/run_all.py)")


def emit_figures(figures: Sequence[Figure], ns: argparse.Namespace) -> None:
    """Print one line per figure and, if `--json PATH` was given (see `add_json`), write them."""
    for f in figures:
        ratio = f" ratio {f.ratio:.2f}" if f.ratio is not None else ""
        goal = f" goal {f.goal}: {'met' if f.met else 'NOT met'}" if f.goal else ""
        print(f"figure: {f.name}: {f.value:.6g} {f.unit}{ratio}{goal}" if f.value is not None
              else f"figure: {f.name}: no value")
    path = getattr(ns, "json", None)
    if path:
        write_figures(path, figures)
