"""Noticing that Redis came back without its data, for daemons whose
fencing tokens live there (the saga coordinator's and swarm engine's leases).

A fencing token is only as good as the counter behind it: a Redis that
restarts empty (no `appendonly`, or a failover to a replica without the
data) counts from 1 again, so a token already handed to a driver that is
still running can be issued a second time. The daemon cannot undo that; it
can notice and say so. `DatasetEpoch` writes a random id into Redis once per
dataset (SET NX) and remembers the one it saw; its probe fails once the key
is gone or different, which turns the daemon's health NOT_SERVING with that
reason until it is restarted (README: Redis persistence for fencing). From
then on the process also refuses to take leases (`refuse_if_reset`, called by
every lease grant of the saga, task and swarm stores), so it hands out no
fencing token that may repeat one it issued before.
"""

from __future__ import annotations

import uuid
import weakref

import redis.asyncio as aioredis

from agentmesh.common.v1.common_pb2 import ErrorReason
from agentmesh.runtime.errors import Unavailable

#: The key holding the dataset's epoch id.
EPOCH_KEY = "agentmesh:dataset-epoch"


class DatasetReset(Unavailable):
    """UNAVAILABLE: Redis's dataset is not the one this daemon started on
    (reason REDIS_DOWN), so its fencing tokens may repeat; clients retry on
    another replica."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=ErrorReason.ERROR_REASON_REDIS_DOWN)


#: Every live epoch of this process (a daemon has one per Redis it fences on).
_EPOCHS: weakref.WeakSet[DatasetEpoch] = weakref.WeakSet()


def detected_reset() -> DatasetReset | None:
    """The reset an epoch of this process has seen, if any (background loops
    that take leases check it and skip their pass quietly: health already
    says why)."""
    for epoch in _EPOCHS:
        if epoch.reset is not None:
            return epoch.reset
    return None


def refuse_if_reset() -> None:
    """Call before granting a lease: refuses once any epoch of this process
    has seen its Redis come back without its data.

    Raises:
        DatasetReset: a reset was detected (the daemon must be restarted).
    """
    reset = detected_reset()
    if reset is not None:
        raise reset


class DatasetEpoch:
    """The epoch id of the Redis dataset a daemon started on.

    Args:
        redis: the daemon's client.
        key: the epoch key (one per dataset, shared by every daemon on it).
    """

    def __init__(self, redis: aioredis.Redis, *, key: str = EPOCH_KEY) -> None:
        self._redis = redis
        self._key = key
        self.seen: str | None = None
        #: set for good once the probe saw another dataset
        self.reset: DatasetReset | None = None
        _EPOCHS.add(self)

    async def _ensure(self) -> str:
        await self._redis.set(self._key, uuid.uuid4().hex, nx=True)
        raw = await self._redis.get(self._key)
        return raw.decode() if isinstance(raw, bytes) else str(raw or "")

    async def start(self) -> None:
        """Remember the current epoch, writing one if the dataset has none.

        Raises:
            redis.RedisError: Redis is down (the probe then retries).
        """
        self.seen = await self._ensure()

    async def probe(self) -> None:
        """A health probe: returns while the dataset is the one seen at start.

        Raises:
            DatasetReset: the epoch key is gone or different.
            redis.RedisError: Redis is down.
        """
        if self.seen is None:
            self.seen = await self._ensure()
            return
        raw = await self._redis.get(self._key)
        current = raw.decode() if isinstance(raw, bytes) else raw
        if self.reset is None and current != self.seen:
            self.reset = DatasetReset(
                "Redis came back without its data (its dataset epoch changed): fencing "
                "tokens issued before may be issued again, so this daemon takes no "
                "more leases; run Redis with appendonly yes and restart this daemon"
            )
        if self.reset is not None:
            raise self.reset


__all__ = ["EPOCH_KEY", "DatasetEpoch", "DatasetReset", "detected_reset", "refuse_if_reset"]
