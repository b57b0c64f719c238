"""Guards on the test tree itself: pytest imports test modules by basename
under rootdir, so two `test_x.py` in different folders shadow each other and
the second one silently loses its folder's conftest fixtures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
