"""Request-reply and scatter-gather: waits for replies by correlation id.

One tail per reply topic per gateway reads every new record of that topic and
hands each one whose correlation id someone waits for to that waiter. The
tail is positioned at the end of the topic before the request is written, so
a fast reply is never missed.
"""

from __future__ import annotations

import asyncio
import logging

from agentmesh.bus.v1 import bus_pb2
from agentmesh.server.bus import wire
from agentmesh.server.bus.backend import Backend, Tail

log = logging.getLogger("agentmesh.bus.replies")

DEFAULT_REPLY_TOPIC = "_agentmesh.replies"


class ReplyRouter:
    """Routes reply records to waiters.

    Args:
        backend: storage.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._tails: dict[str, Tail] = {}
        self._starting: dict[str, asyncio.Future[None]] = {}
        self._waiters: dict[str, asyncio.Queue[bus_pb2.Envelope]] = {}

    async def ensure(self, topic: str) -> None:
        """Start tailing `topic` (the topic must exist)."""
        if topic in self._tails:
            return
        fut = self._starting.get(topic)
        if fut is None:
            fut = asyncio.ensure_future(self._start(topic))
            self._starting[topic] = fut
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done():
                self._starting.pop(topic, None)

    async def _start(self, topic: str) -> None:
        tail = self.backend.open_tail(topic, self._on_records)
        await tail.start()
        self._tails[topic] = tail

    def _on_records(self, recs: list[wire.StoredRecord]) -> None:
        for rec in recs:
            corr = rec.header(wire.H_CORRELATION)
            if corr is None:
                continue
            q = self._waiters.get(corr)
            if q is None:
                continue
            try:
                q.put_nowait(wire.to_envelope(rec))
            except Exception as exc:  # a malformed reply must not stop the others
                log.info("undecodable reply", extra={"error": str(exc)})

    def register(self, correlation_id: str) -> asyncio.Queue[bus_pb2.Envelope]:
        """Start collecting replies for `correlation_id`."""
        q: asyncio.Queue[bus_pb2.Envelope] = asyncio.Queue()
        self._waiters[correlation_id] = q
        return q

    def unregister(self, correlation_id: str) -> None:
        """Stop collecting replies for `correlation_id`."""
        self._waiters.pop(correlation_id, None)

    async def close(self) -> None:
        """Stop every tail."""
        for tail in self._tails.values():
            await tail.close()
        self._tails.clear()
