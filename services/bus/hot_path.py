"""Choice of the Subscribe path's per-record loops: compiled or Python.

`deliveries` (Python) and `_deliveries` (its Cython twin, built by
`make ext`) have the same functions and effects. `load` picks one for the
bus setting `--hot-path`:

- `auto` (default): the compiled twin when it is built from the current
  source, else the Python one (with a warning saying how to build it);
- `compiled`: the compiled twin, or a startup error that says what to run;
- `python`: always the Python loops (to compare, or where nothing can be compiled).

A stale build (its compiled-in sha256 differs from `_deliveries.pyx`) is
never used: its loops would not be the ones the source and the tests describe.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agentmesh.server.bus import deliveries

log = logging.getLogger("agentmesh.bus.hot_path")

#: Values of `--hot-path`.
MODES = ("auto", "compiled", "python")
_SOURCE = Path(__file__).with_name("_deliveries.pyx")


class HotPathUnavailable(RuntimeError):
    """`--hot-path compiled` was asked for and no fresh build exists."""


@dataclass(frozen=True)
class HotPath:
    """The loops in use.

    Attributes:
        name: `compiled` or `python`.
        reason: why this one (for the startup log and /metrics readers).
        arrive_run / encode_run / ack_up_to: the functions (deliveries' docstrings).
    """

    name: str
    reason: str
    arrive_run: Any
    encode_run: Any
    ack_up_to: Any


def _of(module: ModuleType, reason: str) -> HotPath:
    return HotPath(module.IMPLEMENTATION, reason, module.arrive_run, module.encode_run,
                   module.ack_up_to)


def _compiled() -> tuple[ModuleType | None, str]:
    """The compiled twin if it is importable and fresh, else (None, why not)."""
    try:
        from agentmesh.server.bus import _deliveries  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"not built ({exc}); run `make ext`"
    try:
        current = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()
    except OSError:
        current = ""  # installed without sources: the build is all there is
    built = getattr(_deliveries, "SOURCE_SHA256", "")
    if current and built != current:
        return None, "stale build (its source changed since); run `make ext`"
    return _deliveries, "built from the current source"


@functools.cache
def load(mode: str = "auto") -> HotPath:
    """The loops for `mode` (one of MODES), chosen once per process and mode.

    Raises:
        HotPathUnavailable: mode `compiled` without a fresh build.
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"hot path must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "python":
        return _of(deliveries, "--hot-path python")
    module, why = _compiled()
    if module is not None:
        return _of(module, why)
    if mode == "compiled":
        raise HotPathUnavailable(f"--hot-path compiled: the compiled loops are {why}")
    log.warning("bus hot path: Python loops; the compiled ones are %s", why)
    return _of(deliveries, f"compiled loops {why}")
