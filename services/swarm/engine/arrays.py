"""Array type aliases and bound handling shared by the engine modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .errors import InvalidConfigError

__all__ = [
    "BoolArray",
    "Bounds",
    "FloatArray",
    "IntArray",
    "bounds_arrays",
]

FloatArray = npt.NDArray[np.float64]
"""A float64 array; shapes are given where it is used."""

IntArray = npt.NDArray[np.int64]
"""An int64 array (indices, counters)."""

BoolArray = npt.NDArray[np.bool_]
"""A boolean mask."""

Bounds = tuple[float, float] | Sequence[tuple[float, float]]
"""Search-space box: one ``(low, high)`` pair for every dimension, or one
``(low, high)`` pair per dimension."""


def bounds_arrays(bounds: Bounds, dimensions: int) -> tuple[FloatArray, FloatArray]:
    """Expands ``bounds`` into per-dimension lower and upper arrays.

    Args:
        bounds: ``(low, high)`` applied to every dimension, or a sequence of
            ``dimensions`` such pairs.
        dimensions: Number of dimensions ``d`` (>= 1).

    Returns:
        ``(lower, upper)``, each of shape ``(d,)``, float64, fresh copies.

    Raises:
        InvalidConfigError: (field ``bounds``) if the shape is wrong, a value is
            not finite, or ``low >= high`` in some dimension.
    """
    if dimensions < 1:
        raise InvalidConfigError("dimensions", f"must be >= 1, got {dimensions}")
    try:
        arr = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidConfigError("bounds", f"not numeric: {exc}") from exc
    if arr.shape == (2,):
        lower = np.full(dimensions, arr[0])
        upper = np.full(dimensions, arr[1])
    elif arr.shape == (dimensions, 2):
        lower = arr[:, 0].copy()
        upper = arr[:, 1].copy()
    else:
        raise InvalidConfigError(
            "bounds",
            f"expected (low, high) or {dimensions} such pairs, got shape {arr.shape}",
        )
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise InvalidConfigError("bounds", "values must be finite")
    if np.any(lower >= upper):
        raise InvalidConfigError("bounds", "low must be < high in every dimension")
    return lower, upper
