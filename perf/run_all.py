"""Run every benchmark under perf/ one after another and print where each
wrote its figures (perf/<area>/RESULTS.md).

Usage: python perf/run_all.py [area ...]    e.g. python perf/run_all.py registry router
Benchmarks that need Redis or Kafka start their own on free loopback ports.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent


def main() -> int:
    """Run the selected (default: all) benchmark scripts; returns the failure count."""
    wanted = set(sys.argv[1:])
    scripts = sorted(
        p for p in PERF.glob("*/bench_*.py") if not wanted or p.parent.name in wanted
    )
    failed = 0
    for script in scripts:
        print(f"\n=== {script.relative_to(PERF.parent)}", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=PERF.parent)
        print(f"=== exit {rc} after {time.monotonic() - start:.0f}s", flush=True)
        failed += rc != 0
    return failed


if __name__ == "__main__":
    sys.exit(main())
