"""`Client.lock`: a leased lock of the registry's CoordinationService, held while a block runs.

    async with client.lock("invoices/2026-12", ttl_ms=10_000, wait_timeout_s=30) as lease:
        await storage.write(row, fencing_token=lease.fencing_token)

How it behaves:
  * **acquire**: AcquireLock waits up to `wait_timeout_s` for a lock held by
    another owner (the server polls; the RPC deadline is that wait plus the
    client's default timeout). Not granted in time: `LockNotAcquired`.
  * **renew**: a background task calls RenewLock every `ttl_ms / 3` (the
    lease survives two lost renewals in a row). A transient failure
    (UNAVAILABLE, DEADLINE_EXCEEDED) is retried until the lease's TTL,
    counted locally from the last successful renewal, has run out.
  * **lost**: a renewal refused by the registry (ABORTED: another owner or
    another fencing token holds it; NOT_FOUND: it expired, e.g. after the
    process was paused past the TTL) or a TTL run out without a successful
    renewal marks the lease lost. The renewal task then cancels the task that
    entered the block (`Task.cancel`, as `asyncio.timeout` does), so the body
    sees `CancelledError` at its next `await`, and the `async with` raises
    `LockLost` in its place (`__cause__` is that CancelledError). A body that
    swallows the cancellation still gets `LockLost` from the `async with` when
    it exits. A cancellation from outside (another `task.cancel()`) is never
    turned into `LockLost`: it propagates. Code that blocks the event loop
    sees the loss only once it awaits again, which is why writes must carry
    `lease.fencing_token` and the resource must refuse older tokens
    (Kleppmann 2016, "How to do distributed locking").
  * **release**: on exit (normal or by an exception) ReleaseLock with the
    owner and token, best effort (the TTL frees it anyway); not after a loss.

Owners: each `lock()` call uses a fresh owner `<host>/<pid>/<random>` unless
`owner` is given. AcquireLock is reentrant per owner (the same owner gets the
same token back), so two blocks that pass the same `owner` share one lock;
with bearer auth on the registry requires `owner` to be the caller's identity
(or the caller to be an admin), so pass it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from agentmesh.runtime.errors import (
    Aborted,
    AgentMeshError,
    DeadlineExceeded,
    NotFound,
    Unavailable,
)

if TYPE_CHECKING:
    from agentmesh.client.services_gen import ServiceMethods

__all__ = ["Lease", "LockLost", "LockNotAcquired", "default_owner"]

#: Longest wait for ReleaseLock on exit, s (the TTL frees the lock anyway).
RELEASE_TIMEOUT_S = 2.0


class LockNotAcquired(Aborted):
    """ABORTED: another owner held the lock for the whole `wait_timeout_s`.

    Attributes:
        name: the lock (the CoordinationService `resource`).
        holder: the owner holding it when the wait ended.
    """

    def __init__(self, name: str, holder: str, wait_timeout_s: float) -> None:
        super().__init__(
            f"lock {name!r} is held by {holder!r}; not acquired within {wait_timeout_s:g} s"
        )
        self.name = name
        self.holder = holder


class LockLost(Aborted):
    """ABORTED: a held lock was lost while its block ran; stop using it.

    Raised by the `async with client.lock(...)` block (see the module docstring).

    Attributes:
        name: the lock.
        fencing_token: the token the block held; a newer holder has a larger one.
        cause: what happened: the refused renewal's error (`Aborted`: held by
            another owner or token; `NotFound`: expired), or None when the
            TTL ran out while renewals failed transiently.
    """

    def __init__(self, lease: Lease, cause: AgentMeshError | None) -> None:
        why = (f"renewal refused: {type(cause).__name__}: {cause.message}" if cause
               else f"no renewal succeeded within the {lease.ttl_ms} ms TTL")
        super().__init__(
            f"lock {lease.name!r} (fencing token {lease.fencing_token}) was lost; {why}"
        )
        self.name = lease.name
        self.fencing_token = lease.fencing_token
        self.cause = cause


def default_owner() -> str:
    """A fresh owner name, `<host>/<pid>/<12 hex chars>`."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


class Lease:
    """A held lock, the value of `async with client.lock(...) as lease`.

    Attributes:
        name: the lock (CoordinationService `resource`).
        owner: who holds it.
        ttl_ms: TTL of each grant and renewal, ms.
        fencing_token: strictly increasing per lock across acquisitions; pass
            it with every write the lock protects.
        expire_time: when the lease expires unless renewed (UTC, from the registry).
        renewals: successful renewals so far.
        lost: True once the lease was lost (the block then raises LockLost).
    """

    def __init__(
        self,
        client: ServiceMethods,
        name: str,
        *,
        ttl_ms: int,
        wait_timeout_s: float,
        owner: str,
        renew_interval_ms: int | None,
    ) -> None:
        if ttl_ms < 10:
            raise ValueError("ttl_ms must be at least 10 ms (the registry's minimum)")
        if wait_timeout_s < 0:
            raise ValueError("wait_timeout_s must not be negative")
        self._client = client
        self.name = name
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.wait_timeout_s = wait_timeout_s
        self.renew_interval_s = (renew_interval_ms or max(1, ttl_ms // 3)) / 1000.0
        self.fencing_token = 0
        self.expire_time: datetime | None = None
        self.renewals = 0
        self.lost = False
        self._cause: AgentMeshError | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lease:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("client.lock() must be used inside an asyncio task")
        resp = await self._client.acquire_lock(
            resource=self.name,
            owner=self.owner,
            ttl=self.ttl_ms / 1000.0,
            wait_timeout=self.wait_timeout_s,
            timeout_s=self.wait_timeout_s + self._client.default_timeout_s,
        )
        if not resp.acquired:
            raise LockNotAcquired(self.name, resp.holder, self.wait_timeout_s)
        self.fencing_token = resp.fencing_token
        self.expire_time = resp.expire_time.ToDatetime()
        self._task = task
        self._cancelling = task.cancelling()
        self._renewer = asyncio.create_task(
            self._renew_loop(time.monotonic()), name=f"lock-renew:{self.name}"
        )
        return self

    async def _renew_loop(self, granted_at: float) -> None:
        """Renew every `renew_interval_s`; on a refusal or an expiry, mark lost and
        cancel the block's task."""
        last_ok = granted_at
        while True:
            await asyncio.sleep(max(0.0, last_ok + self.renew_interval_s - time.monotonic()))
            while True:
                left_s = last_ok + self.ttl_ms / 1000.0 - time.monotonic()
                try:
                    resp = await self._client.renew_lock(
                        resource=self.name,
                        owner=self.owner,
                        fencing_token=self.fencing_token,
                        ttl=self.ttl_ms / 1000.0,
                        timeout_s=max(0.05, min(self.renew_interval_s, left_s)),
                    )
                except (Aborted, NotFound) as e:
                    self._lose(e)
                    return
                except (Unavailable, DeadlineExceeded):
                    if time.monotonic() >= last_ok + self.ttl_ms / 1000.0:
                        self._lose(None)
                        return
                    await asyncio.sleep(min(0.1, self.renew_interval_s / 4))
                    continue
                last_ok = time.monotonic()
                self.renewals += 1
                self.expire_time = resp.expire_time.ToDatetime()
                break

    def _lose(self, cause: AgentMeshError | None) -> None:
        self.lost = True
        self._cause = cause
        if self._task is not None and not self._task.done():
            self._task.cancel(f"lock {self.name!r} lost")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and not renewer.done():
            renewer.cancel()
            try:
                await renewer
            except asyncio.CancelledError:
                pass
        if self.lost:
            assert self._task is not None
            # Ours was the cancellation when the count falls back to where it
            # was on entry; a cancellation from outside still propagates.
            if self._task.uncancel() > self._cancelling and isinstance(
                exc, asyncio.CancelledError
            ):
                return
            raise LockLost(self, self._cause) from exc
        try:
            await self._client.release_lock(
                resource=self.name, owner=self.owner, fencing_token=self.fencing_token,
                timeout_s=RELEASE_TIMEOUT_S,
            )
        except AgentMeshError:
            pass  # best effort: the TTL frees the lock
