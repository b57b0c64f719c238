"""Map Redis connection failures to UNAVAILABLE, as the contracts promise."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions

from agentmesh.runtime.errors import Unavailable

T = TypeVar("T")

_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _unavailable(exc: Exception) -> Unavailable:
    return Unavailable(f"Redis is unreachable: {exc}; retry later", reason="REDIS_DOWN",
                       retry_after_s=1.0)


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a unary servicer method: Redis connection errors become UNAVAILABLE."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except _DOWN as exc:
            raise _unavailable(exc) from exc

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """Wrap a streaming servicer method: Redis connection errors become UNAVAILABLE."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
        try:
            async for item in fn(*args, **kwargs):
                yield item
        except _DOWN as exc:
            raise _unavailable(exc) from exc

    return wrapper
