"""tune_collector: startup garbage is collected, survivors frozen, threshold set.

Each case runs in a fresh interpreter: freezing and thresholds are process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from agentmesh.runtime.collector import tune_collector
from agentmesh.runtime.config import load_config


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


def test_startup_cycles_are_freed_survivors_frozen_and_threshold_raised() -> None:
    out = _run("""
        import gc, weakref
        from agentmesh.runtime.collector import tune_collector

        class Node:
            pass

        dead = Node(); dead.me = dead          # an unreachable cycle at startup
        ref_dead = weakref.ref(dead); del dead
        alive = Node(); alive.me = alive       # a cycle still referenced
        frozen = tune_collector(5000)
        assert ref_dead() is None, "startup garbage was frozen instead of freed"
        assert frozen == gc.get_freeze_count() > 1000, frozen
        assert gc.get_threshold() == (5000, 10, 10), gc.get_threshold()

        later = Node(); later.me = later       # a cycle made after startup
        ref_later = weakref.ref(later); del later
        gc.collect()
        assert ref_later() is None, "a cycle made after startup was not collected"
        print("ok", frozen)
    """)
    assert out.startswith("ok ")


def test_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold0 must be >= 1"):
        tune_collector(0)


def test_daemon_flag_and_env_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config("bus", []).gc_threshold == 10_000
    assert load_config("bus", ["--gc-threshold", "2500"]).gc_threshold == 2500
    monkeypatch.setenv("AGENTMESH_GC_THRESHOLD", "40000")
    assert load_config("bus", []).gc_threshold == 40_000
    with pytest.raises(SystemExit):
        load_config("bus", ["--gc-threshold", "0"])
