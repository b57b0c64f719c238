"""Bounded reads of Watch streams, for pages that show a history.

WatchAgents, WaitTask and WatchSwarm replay what is stored, then wait for new
items; for a live object they never end by themselves. A page reads what the
replay gives and stops when the stream is idle, so a request always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


async def drain(
    stream: AsyncIterator[T],
    *,
    idle_s: float,
    total_s: float,
    max_items: int,
    keep: Callable[[T], bool] = lambda _: True,
) -> tuple[list[T], bool]:
    """Items of `stream` until it ends, is idle, or a bound is reached.

    Args:
        stream: an async iterator of stream messages (a generated Watch method).
        idle_s: stop after this long without an item (after the first), seconds.
        total_s: stop after this long in all, seconds.
        max_items: stop after this many kept items.
        keep: which items to keep (others still count as activity).

    Returns:
        (kept items in stream order, True when the stream ended by itself).

    Raises:
        AgentMeshError: the stream's error (NOT_FOUND, PERMISSION_DENIED, ...).
    """
    out: list[T] = []
    deadline = time.monotonic() + total_s
    ended = False
    seen = False  # the first item may wait for the connection: up to total_s
    try:
        while len(out) < max_items:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                wait_s = min(idle_s, left) if seen else left
                item = await asyncio.wait_for(anext(stream), timeout=wait_s)
            except StopAsyncIteration:
                ended = True
                break
            except TimeoutError:
                break
            seen = True
            if keep(item):
                out.append(item)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    return out, ended
