"""The Scope 3 demo: `agentmesh demo` (and `make demo`) runs the mesh end to end.

    from agentmesh.demo import run_demo
    raise SystemExit(run_demo(["--suppliers", "5000", "--agents", "10", "--partitions", "50"]))

Modules: `data` (EPA factors, supplier generation), `calculator` and `csrd`
(the agents), `fleet` (worker processes hosting many agents), `scenario`
(calls to the mesh), `report` (report.json, charts, console), `runner`
(`run_demo`: start, run, stop, verify).
"""

from __future__ import annotations

from collections.abc import Sequence


def run_demo(argv: Sequence[str] | None = None, *, output: str = "table") -> int:
    """Run the demo; see `agentmesh.demo.runner.run_demo`."""
    from agentmesh.demo.runner import run_demo as _run

    return _run(argv, output=output)


__all__ = ["run_demo"]
