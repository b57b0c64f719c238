"""Choice of the gateway's per-record loops: compiled or Python.

Subscribe: `deliveries` (Python) and `_deliveries` (its Cython twin) have the
same functions and effects. PublishStream: `_intake` (Cython) turns a
request's bytes into records; its Python form is the message path
(`Publisher.submit` on decoded Envelopes), which it falls back to for
anything it does not take. Both are built by `make ext`. `load` picks the
loops for the bus setting `--hot-path`:

- `auto` (default): the compiled ones when they are built from the current
  sources, else the Python ones (with a warning saying how to build them);
- `compiled`: the compiled ones, or a startup error that says what to run;
- `python`: always the Python loops (to compare, or where nothing can be compiled).

A stale build (its compiled-in sha256 differs from its `.pyx`) is never
used: its loops would not be the ones the source and the tests describe.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agentmesh.server.bus import deliveries

log = logging.getLogger("agentmesh.bus.hot_path")

#: Values of `--hot-path`.
MODES = ("auto", "compiled", "python")
_HERE = Path(__file__).parent


class HotPathUnavailable(RuntimeError):
    """`--hot-path compiled` was asked for and no fresh build exists."""


@dataclass(frozen=True)
class HotPath:
    """The loops in use.

    Attributes:
        name: `compiled` or `python`.
        reason: why this one (for the startup log and /metrics readers).
        arrive_run / encode_run / ack_up_to: the Subscribe loops (deliveries'
            docstrings).
        publish_run: `_intake.publish_run`, or None for the message path only.
        encode_reports: `_intake.encode_reports`, or None for its Python twin
            (publisher.encode_reports).
    """

    name: str
    reason: str
    arrive_run: Any
    encode_run: Any
    ack_up_to: Any
    publish_run: Any = None
    encode_reports: Any = None


def _of(module: ModuleType, reason: str, intake: ModuleType | None = None) -> HotPath:
    return HotPath(module.IMPLEMENTATION, reason, module.arrive_run, module.encode_run,
                   module.ack_up_to, intake.publish_run if intake is not None else None,
                   intake.encode_reports if intake is not None else None)


def _fresh(name: str) -> tuple[ModuleType | None, str]:
    """Compiled module `name` (agentmesh.server.bus.<name>, source <name>.pyx)
    if it is importable and built from the current source, else (None, why not)."""
    try:
        module = importlib.import_module(f"agentmesh.server.bus.{name}")
    except ImportError as exc:
        return None, f"not built ({exc}); run `make ext`"
    try:
        current = hashlib.sha256((_HERE / f"{name}.pyx").read_bytes()).hexdigest()
    except OSError:
        current = ""  # installed without sources: the build is all there is
    built = getattr(module, "SOURCE_SHA256", "")
    if current and built != current:
        return None, f"stale ({name}.pyx changed since they were built); run `make ext`"
    return module, "built from the current source"


def _compiled() -> tuple[tuple[ModuleType, ModuleType] | None, str]:
    """Both compiled modules if they are fresh, else (None, why not)."""
    deliveries_c, why = _fresh("_deliveries")
    if deliveries_c is None:
        return None, why
    intake, why = _fresh("_intake")
    if intake is None:
        return None, why
    return (deliveries_c, intake), why


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
    modules, why = _compiled()
    if modules is not None:
        return _of(modules[0], why, modules[1])
    if mode == "compiled":
        raise HotPathUnavailable(f"--hot-path compiled: the compiled loops are {why}")
    log.warning("bus hot path: Python loops; the compiled ones are %s", why)
    return _of(deliveries, f"compiled loops {why}")
