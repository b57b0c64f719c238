"""Vectorised benchmark objective functions (minimisation).

Every function maps positions of shape ``(n, d)`` to fitness values of shape
``(n,)``; lower is better. Definitions and standard bounds follow the Virtual
Library of Simulation Experiments (Surjanovic & Bingham, Simon Fraser
University, https://www.sfu.ca/~ssurjano/optimization.html):

* sphere      ``f(x) = Σ x_j²``                                  on [-5.12, 5.12]^d
* rastrigin   ``f(x) = 10 d + Σ (x_j² - 10 cos(2π x_j))``        on [-5.12, 5.12]^d
  (Rastrigin 1974; Mühlenbein et al. 1991)
* rosenbrock  ``f(x) = Σ 100 (x_{j+1} - x_j²)² + (1 - x_j)²``    on [-5, 10]^d
  (Rosenbrock 1960)
* ackley      ``f(x) = -20 exp(-0.2 √(mean x_j²)) - exp(mean cos(2π x_j)) + 20 + e``
  on [-32.768, 32.768]^d (Ackley 1987)

Speed: numpy's float64 ``cos`` has no SIMD path on common x86 builds and costs
10-20 ns per element, which caps a textbook Rastrigin at well under a million
evaluations per second in 30-D. Rastrigin and Ackley are therefore rewritten
with the exact identity ``1 - cos(2πx) = 2 sin²(πx)`` and ``sin²(πx)`` is
computed after an exact reduction to ``[-π/2, π/2]`` with a degree-19 Taylor
polynomial (truncation error < 2e-16 relative). That is several times faster,
and more accurate near the optimum because no ``10 - 10 cos`` cancellation
happens: ``rastrigin(0) == 0`` and ``ackley(0) == 0`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .arrays import FloatArray
from .errors import UnknownNameError

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "FitnessFunction",
    "ackley",
    "get_benchmark",
    "rastrigin",
    "rosenbrock",
    "sin_pi_squared",
    "sphere",
]

FitnessFunction = Callable[[FloatArray], FloatArray]
"""``fitness(positions (n, d)) -> (n,)``; lower is better."""

# Coefficients of sin(θ)/θ = Σ_k (-1)^k θ^{2k} / (2k+1)! in t = θ², highest
# power first for Horner. Ten terms reach θ^19; on |θ| <= π/2 the first omitted
# term is (π/2)^20 / 21! < 2e-16, i.e. below double-precision rounding.
_SINC_COEFFS: tuple[float, ...] = tuple(
    (-1.0) ** k / math.factorial(2 * k + 1) for k in reversed(range(10))
)


def _check_2d(positions: FloatArray, name: str) -> None:
    if positions.ndim != 2:
        raise ValueError(f"{name}: positions must have shape (n, d), got {positions.shape}")


def _row_sum(a: FloatArray) -> FloatArray:
    # A BLAS mat-vec is 3-5x faster than a.sum(axis=1) for a C-ordered (n, d)
    # array with small d, and each row still reduces in one fixed order.
    out: FloatArray = a @ np.ones(a.shape[1])
    return out


def _row_sq_norm(a: FloatArray) -> FloatArray:
    # Σ_j a_ij² without materialising a*a.
    out: FloatArray = np.einsum("ij,ij->i", a, a)
    return out


def _sin_pi_squared_into(x: FloatArray, work: FloatArray) -> FloatArray:
    # Computes sin²(πx) using work (shape (2, *x.shape)) as the only scratch
    # space and returns the view work[1]. Why one (2, n, d) block instead of
    # two arrays: a second array above glibc's mmap threshold (128 KiB) that
    # is alive at the same time tends to come back as freshly faulted pages,
    # which cost twice as much as the whole polynomial (measured ~170 µs vs
    # ~90 µs for n=1000, d=30).
    t: FloatArray = work[0]
    p: FloatArray = work[1]
    np.rint(x, out=t)
    np.subtract(x, t, out=t)  # r = x - rint(x), exact
    t *= math.pi  # θ in [-π/2, π/2]
    t *= t  # t = θ²
    np.multiply(t, _SINC_COEFFS[0], out=p)
    p += _SINC_COEFFS[1]
    for c in _SINC_COEFFS[2:]:
        p *= t
        p += c
    p *= p  # (sin θ / θ)²
    p *= t
    return p


def sin_pi_squared(x: FloatArray) -> FloatArray:
    """Elementwise ``sin²(π x)``, fast and accurate.

    ``sin²(πx)`` has period 1, so ``r = x - rint(x)`` (exact in float64 for
    ``|x| < 2^52``) lies in ``[-0.5, 0.5]`` and ``θ = π r`` in ``[-π/2, π/2]``,
    where the Taylor polynomial of ``sin θ / θ`` to degree 18 is exact to
    double precision. Then ``sin²θ = θ² · (sin θ / θ)²``.

    Args:
        x: Any float64 array.

    Returns:
        Array of the same shape with values in ``[0, 1]``. Non-finite inputs
        give NaN.
    """
    work = np.empty((2, *x.shape), dtype=np.float64)
    return _sin_pi_squared_into(np.asarray(x, dtype=np.float64), work).copy()


def _row_sum_sin_pi_squared(positions: FloatArray) -> FloatArray:
    # Σ_j sin²(π x_ij); the scratch block dies before returning.
    work = np.empty((2, *positions.shape), dtype=np.float64)
    return _row_sum(_sin_pi_squared_into(positions, work))


def sphere(positions: FloatArray) -> FloatArray:
    """Sphere (De Jong F1): ``Σ_j x_j²``.

    Args:
        positions: Shape ``(n, d)``.

    Returns:
        Shape ``(n,)``. Global minimum 0 at the origin.

    Raises:
        ValueError: If ``positions`` is not 2-D.
    """
    _check_2d(positions, "sphere")
    return _row_sq_norm(positions)


def rastrigin(positions: FloatArray) -> FloatArray:
    """Rastrigin: ``10 d + Σ_j (x_j² - 10 cos(2π x_j))``.

    Evaluated as ``Σ_j (x_j² + 20 sin²(π x_j))``, which is the same function
    (``1 - cos 2a = 2 sin² a``) without cancellation near the optimum.

    Args:
        positions: Shape ``(n, d)``.

    Returns:
        Shape ``(n,)``. Global minimum 0 at the origin; about 10^d local
        minima on the standard box.

    Raises:
        ValueError: If ``positions`` is not 2-D.
    """
    _check_2d(positions, "rastrigin")
    out = _row_sum_sin_pi_squared(positions)
    out *= 20.0
    out += _row_sq_norm(positions)
    return out


def rosenbrock(positions: FloatArray) -> FloatArray:
    """Rosenbrock valley: ``Σ_{j<d} 100 (x_{j+1} - x_j²)² + (1 - x_j)²``.

    Args:
        positions: Shape ``(n, d)`` with ``d >= 2``.

    Returns:
        Shape ``(n,)``. Global minimum 0 at ``(1, …, 1)``.

    Raises:
        ValueError: If ``positions`` is not 2-D or ``d < 2``.
    """
    _check_2d(positions, "rosenbrock")
    if positions.shape[1] < 2:
        raise ValueError("rosenbrock: needs d >= 2")
    head = positions[:, :-1]
    valley = np.square(head)
    np.subtract(positions[:, 1:], valley, out=valley)
    out = _row_sq_norm(valley)
    out *= 100.0
    slope = np.subtract(1.0, head, out=valley)  # reuse the buffer
    out += _row_sq_norm(slope)
    return out


def ackley(positions: FloatArray) -> FloatArray:
    """Ackley with ``a = 20, b = 0.2, c = 2π``.

    Evaluated as ``-20 expm1(-0.2 √m) - e · expm1(-2 q)`` with
    ``m = mean x_j²`` and ``q = mean sin²(π x_j)``, algebraically equal to the
    textbook form (``mean cos(2πx) = 1 - 2q``) but exact at the optimum.

    Args:
        positions: Shape ``(n, d)``.

    Returns:
        Shape ``(n,)``. Global minimum 0 at the origin.

    Raises:
        ValueError: If ``positions`` is not 2-D.
    """
    _check_2d(positions, "ackley")
    d = positions.shape[1]
    m = _row_sq_norm(positions) / d
    q = _row_sum_sin_pi_squared(positions) / d
    out: FloatArray = -20.0 * np.expm1(-0.2 * np.sqrt(m)) - math.e * np.expm1(-2.0 * q)
    return out


@dataclass(frozen=True, slots=True)
class Benchmark:
    """A benchmark function with its standard box and known optimum.

    Attributes:
        name: Registry key.
        function: ``(n, d) -> (n,)`` callable.
        lower: Standard lower bound, the same in every dimension.
        upper: Standard upper bound, the same in every dimension.
        optimum_value: Global minimum value.
        optimum_coordinate: Every coordinate of the global minimiser.
        min_dimensions: Smallest ``d`` the function is defined for.
    """

    name: str
    function: FitnessFunction
    lower: float
    upper: float
    optimum_value: float
    optimum_coordinate: float
    min_dimensions: int = 1

    def bounds(self) -> tuple[float, float]:
        """Returns the standard ``(lower, upper)`` box, usable as config bounds."""
        return (self.lower, self.upper)

    def optimum_position(self, dimensions: int) -> FloatArray:
        """Returns the global minimiser, shape ``(dimensions,)``."""
        return np.full(dimensions, self.optimum_coordinate, dtype=np.float64)


BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        "sphere": Benchmark("sphere", sphere, -5.12, 5.12, 0.0, 0.0),
        "rastrigin": Benchmark("rastrigin", rastrigin, -5.12, 5.12, 0.0, 0.0),
        "rosenbrock": Benchmark("rosenbrock", rosenbrock, -5.0, 10.0, 0.0, 1.0, 2),
        "ackley": Benchmark("ackley", ackley, -32.768, 32.768, 0.0, 0.0),
    }
)
"""Read-only registry of the built-in benchmarks by name."""


def get_benchmark(name: str) -> Benchmark:
    """Looks up a built-in benchmark by name (case-insensitive).

    Raises:
        UnknownNameError: If ``name`` is not in :data:`BENCHMARKS`.
    """
    try:
        return BENCHMARKS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(BENCHMARKS))
        raise UnknownNameError(f"unknown benchmark {name!r}; known: {known}") from None
