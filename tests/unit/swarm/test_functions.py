"""Benchmark functions: values against textbook formulas, optima, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentmesh.server.swarm.engine import BENCHMARKS, UnknownNameError, get_benchmark
from agentmesh.server.swarm.engine.arrays import FloatArray
from agentmesh.server.swarm.engine.functions import (
    ackley,
    rastrigin,
    rosenbrock,
    sin_pi_squared,
    sphere,
)


def _rastrigin_textbook(x: FloatArray) -> FloatArray:
    out: FloatArray = 10 * x.shape[1] + np.sum(x**2 - 10 * np.cos(2 * np.pi * x), axis=1)
    return out


def _ackley_textbook(x: FloatArray) -> FloatArray:
    a = -20 * np.exp(-0.2 * np.sqrt(np.mean(x**2, axis=1)))
    out: FloatArray = a - np.exp(np.mean(np.cos(2 * np.pi * x), axis=1)) + 20 + math.e
    return out


def _rosenbrock_textbook(x: FloatArray) -> FloatArray:
    out: FloatArray = np.sum(100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2, axis=1)
    return out


@pytest.mark.parametrize("d", [1, 2, 10, 30])
def test_fast_forms_match_textbook_formulas(d: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-5.12, 5.12, (500, d))
    np.testing.assert_allclose(sphere(x), np.sum(x**2, axis=1), rtol=1e-13)
    np.testing.assert_allclose(rastrigin(x), _rastrigin_textbook(x), rtol=1e-12, atol=1e-11)
    xa = rng.uniform(-32.768, 32.768, (500, d))
    np.testing.assert_allclose(ackley(xa), _ackley_textbook(xa), rtol=1e-12, atol=1e-12)
    if d >= 2:
        xr = rng.uniform(-5, 10, (500, d))
        np.testing.assert_allclose(rosenbrock(xr), _rosenbrock_textbook(xr), rtol=1e-13)


def test_sin_pi_squared_is_accurate_over_a_wide_range() -> None:
    x = np.linspace(-1000.0, 1000.0, 200_001)
    # Reference in extended precision where available, else float64 (period
    # reduction first so np.sin does not lose digits on large arguments).
    r = x - np.rint(x)
    ref = np.sin(np.pi * r) ** 2
    assert np.max(np.abs(sin_pi_squared(x) - ref)) < 1e-15
    assert np.all(sin_pi_squared(np.arange(-50.0, 51.0)) == 0.0)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_optimum_is_exactly_the_documented_value(name: str) -> None:
    b = get_benchmark(name)
    for d in (2, 10, 30):
        x = b.optimum_position(d)[None, :]
        assert b.function(x)[0] == b.optimum_value
        lo, hi = b.bounds()
        assert lo < b.optimum_coordinate < hi


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_optimum_is_a_minimum_nearby(name: str) -> None:
    b = get_benchmark(name)
    rng = np.random.default_rng(1)
    x = b.optimum_position(5) + rng.normal(0.0, 1e-3, (200, 5))
    assert np.all(b.function(x) > b.optimum_value)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        sphere(np.zeros(3))
    with pytest.raises(ValueError, match="d >= 2"):
        rosenbrock(np.zeros((4, 1)))


def test_registry_lookup() -> None:
    assert get_benchmark("Rastrigin").name == "rastrigin"
    with pytest.raises(UnknownNameError, match="unknown benchmark 'griewank'"):
        get_benchmark("griewank")
    with pytest.raises(KeyError):  # also a KeyError for generic callers
        get_benchmark("griewank")
