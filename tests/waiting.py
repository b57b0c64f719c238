"""Wait for a condition in tests without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    pred: Callable[[], Any | Awaitable[Any]],
    *,
    timeout_s: float = 10.0,
    every_s: float = 0.01,
    what: str = "condition",
) -> Any:
    """Poll `pred` (plain or async) until it returns a truthy value; returns that value.

    Raises:
        AssertionError: `<what> not reached in <timeout_s>s` when time runs out.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s}s")
        await asyncio.sleep(every_s)
