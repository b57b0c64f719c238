"""Fan-out of catalog events to WatchAgents streams and the discovery mirror.

One tailer task per replica blocks on the Redis event stream (XREAD) and
wakes waiting watchers when new events land; each watcher then reads the
events it has not sent yet with XRANGE from its own position. A watcher is
therefore never overrun: it reads at its own pace and resumes by revision.
Listeners (the discovery mirror) get every batch the tailer reads, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from agentmesh.runtime.redis_errors import RedisDownLog, is_redis_down
from agentmesh.runtime.tasks import cancel_and_wait
from agentmesh.server.registry import metrics
from agentmesh.server.registry.store import RegistryStore, StoredEvent

log = logging.getLogger("agentmesh.registry.watch")
_redis_down_log = RedisDownLog(log, "event tailer cannot read the event stream")


class WatchHub:
    """Wakes watchers when the event stream grows.

    Args:
        store: the Redis catalog.
        block_ms: how long one XREAD waits, ms (must stay under the Redis socket timeout).
    """

    def __init__(self, store: RegistryStore, *, block_ms: int = 1000) -> None:
        self.store = store
        self.block_ms = block_ms
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_ok = 0.0
        self.listeners: list[Callable[[list[StoredEvent]], None]] = []
        #: Called when the tailer finds the dataset reset (see check_reset).
        self.reset_listeners: list[Callable[[], None]] = []
        #: The dataset epoch this replica has seen (RegistryStore.epoch).
        self.epoch: str | None = None

    def fresh(self) -> bool:
        """True while the tailer is running and its last read succeeded recently."""
        return (
            self._task is not None and not self._task.done()
            and time.monotonic() - self._last_ok < self.block_ms / 1000.0 + 1.0
        )

    def start(self) -> None:
        """Start the tailer if it is not running."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._tail(), name="registry-watch-tailer")

    async def stop(self) -> None:
        """Stop the tailer."""
        if self._task is not None:
            # Not a single cancel(): redis-py's wait_for can swallow it on 3.11
            # and the tailer would run on, hanging the SIGTERM shutdown.
            await cancel_and_wait(self._task)

    def token(self) -> asyncio.Event:
        """Take before reading events; `wait_change(token)` then cannot miss a wake-up."""
        self.start()
        return self._changed

    async def wait_change(self, token: asyncio.Event, *, timeout_s: float) -> None:
        """Return when events arrived after `token` was taken, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), timeout_s)

    async def check_reset(self) -> bool:
        """Compare Redis's dataset epoch with the one seen before; on a
        change (Redis came back empty), log it, count it, tell the reset
        listeners (the discovery mirror) and return True.

        The catalog revision alone cannot tell: after a reset it restarts
        at 0, and new registrations may carry it past the old value before
        anyone looks.
        """
        current = await self.store.epoch()
        if current is not None and current == self.epoch:
            return False
        seen, self.epoch = self.epoch, await self.store.ensure_epoch()
        if seen is None:
            return False  # first look: nothing to compare with
        log.warning(
            "redis catalog reset detected (its epoch changed); rebuilding the discovery mirror",
            extra={"previous_epoch": seen, "epoch": self.epoch},
        )
        metrics.CATALOG_RESETS.inc()
        for listener in self.reset_listeners:
            listener()
        return True

    async def _tail(self) -> None:
        last = -1
        while True:
            try:
                if await self.check_reset() or last < 0:
                    last = await self.store.revision()
                events = await self.store.read_events(
                    after=last, block_ms=self.block_ms, count=1000
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a background loop: keep trying, watchers poll on
                # their timeout. An outage logs once per interval, without a traceback.
                if is_redis_down(e):
                    _redis_down_log.warn(e)
                else:
                    log.warning("event tailer cannot read the event stream", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            self._last_ok = time.monotonic()
            if events:
                last = events[-1].revision
                for listener in self.listeners:
                    listener(events)
                woke, self._changed = self._changed, asyncio.Event()
                woke.set()
