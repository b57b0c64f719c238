"""Convergence detection: stalled global best AND collapsed swarm.

Definition. Let ``g_t`` be the best fitness found up to iteration ``t``
(non-increasing), ``W`` the window, and

    rel_t = (g_{t-W} - g_t) / max(|g_{t-W}|, |g_t|, 1)

the relative improvement over the last ``W`` iterations (the scale-safe form
of scipy's L-BFGS-B ``ftol`` test: relative for large values, absolute for
values below 1 so it still terminates when the optimum is 0). Let

    spread_t = mean_i ‖x_i - x̄‖ / ‖u - l‖

be the mean distance of the exploiting particles' evaluated positions to their
centroid, divided by the diagonal of the bounds box (0 = a point; about 0.27
for a uniform cloud over a 2-D box, tending to 1/√12 ≈ 0.289 as d grows). With
iterations counted from 1, the swarm is converged at iteration ``t`` iff

    t > W  and  rel_t < convergence_threshold  and  spread_t < spread_threshold

Both conditions are needed: a stalled best alone also happens while the swarm
still roams (premature plateau), a small spread alone also happens while it
is still sliding down a valley.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .arrays import FloatArray
from .errors import InvalidConfigError

__all__ = [
    "ConvergenceCriterion",
    "ConvergenceMonitor",
    "normalised_spread",
    "relative_improvement",
]


def relative_improvement(old: float, new: float) -> float:
    """``(old - new) / max(|old|, |new|, 1)``; ``inf`` if ``old`` is not finite.

    Args:
        old: Best fitness ``W`` iterations ago.
        new: Best fitness now (``<= old``).

    Returns:
        A value >= 0 for a non-increasing best; ``inf`` while the old best is
        still infinite (nothing finite found yet).
    """
    if not math.isfinite(old):
        return math.inf
    if not math.isfinite(new):
        return math.inf
    return (old - new) / max(abs(old), abs(new), 1.0)


def normalised_spread(positions: FloatArray, diagonal: float) -> float:
    """Mean distance to the centroid divided by the box diagonal.

    Args:
        positions: Shape ``(m, d)``, ``m >= 1``.
        diagonal: ``‖u - l‖`` (> 0).

    Returns:
        Non-negative float; 0.0 for ``m == 0``.
    """
    m = positions.shape[0]
    if m == 0:
        return 0.0
    # ufunc reductions directly: ndarray.mean() adds ~10 µs of Python-level
    # overhead per call, which matters when this runs every iteration.
    centred = positions - np.add.reduce(positions, axis=0) / m
    dist = np.sqrt(np.einsum("ij,ij->i", centred, centred))
    return float(np.add.reduce(dist) / m / diagonal)


@dataclass(frozen=True, slots=True)
class ConvergenceCriterion:
    """Thresholds of the convergence test (see the module docstring).

    Attributes:
        threshold: ``convergence_threshold`` on ``rel_t`` (> 0).
        window: ``W`` in iterations (>= 1).
        spread_threshold: Bound on ``spread_t`` (> 0; use a value > 1 to
            ignore the spread).
    """

    threshold: float = 1e-8
    window: int = 25
    spread_threshold: float = 1e-3

    def validate(self) -> None:
        """Raises InvalidConfigError on out-of-range values."""
        if not self.threshold > 0.0:
            raise InvalidConfigError("convergence_threshold", "must be > 0")
        if self.window < 1:
            raise InvalidConfigError("convergence_window", "must be >= 1")
        if not self.spread_threshold > 0.0:
            raise InvalidConfigError("spread_threshold", "must be > 0")


class ConvergenceMonitor:
    """Keeps the last ``W + 1`` best values and applies the test each iteration."""

    def __init__(self, criterion: ConvergenceCriterion, history: Iterable[float] = ()) -> None:
        """Creates a monitor.

        Args:
            criterion: Thresholds and window.
            history: Previous best values, oldest first (from a snapshot).
        """
        self.criterion = criterion
        self._history: deque[float] = deque(history, maxlen=criterion.window + 1)
        self.last_relative_improvement = math.inf

    @property
    def history(self) -> list[float]:
        """The retained best values, oldest first (at most ``W + 1``)."""
        return list(self._history)

    def update(self, best: float, spread: float) -> bool:
        """Records this iteration's best and tells whether the swarm converged.

        Args:
            best: ``g_t``, the best fitness so far.
            spread: ``spread_t`` of this iteration.

        Returns:
            True iff the definition in the module docstring holds at ``t``.
        """
        self._history.append(best)
        if len(self._history) <= self.criterion.window:
            self.last_relative_improvement = math.inf
            return False
        rel = relative_improvement(self._history[0], best)
        self.last_relative_improvement = rel
        return rel < self.criterion.threshold and spread < self.criterion.spread_threshold
