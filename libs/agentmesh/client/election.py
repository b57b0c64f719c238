"""Leader election on a CoordinationService lock: the seeds' MASTER_SLAVE.

    async with client.elect("scheduler", ttl_ms=3000) as term:
        # only the leader runs this block
        await store.write(row, fencing_token=term.fencing_token)

`elect` campaigns until this candidate holds the role's lock (every candidate
waits on the same lock, so exactly one leads at a time), then runs the block
as leader while the lease is renewed in the background. A leader that stops
renewing (crashed, paused by SIGSTOP, partitioned) loses the lock after
`ttl_ms`; the next candidate is elected with a larger fencing token, and the
old leader's block is cancelled with LockLost when it notices. Because a paused
leader may still write before it notices, the resource it writes must refuse
tokens lower than the highest it has seen (Kleppmann 2016, "How to do
distributed locking"); `examples/coordination_patterns.py` shows such a store.
To stand for re-election after losing, wrap the block in a loop.
"""

from __future__ import annotations

import time
from types import TracebackType

from agentmesh.client.lock import Lease, LockNotAcquired, default_owner
from agentmesh.client.services_gen import ServiceMethods
from agentmesh.runtime.errors import DeadlineExceeded

#: Longest single AcquireLock wait of a campaign, s; the campaign repeats it.
CAMPAIGN_ROUND_S = 30.0


class Election:
    """The value of `client.elect(...)`: an async context manager that enters
    once this candidate leads and yields its term (a held `Lease`).

    Args:
        client: the client.
        role: the role's lock name (CoordinationService `resource`).
        ttl_ms: lease TTL, ms; a silent leader is replaced after it.
        owner: this candidate's name; default `<host>/<pid>/<random>`.
        campaign_timeout_s: longest wait to become leader, s; None waits forever.
    """

    def __init__(
        self,
        client: ServiceMethods,
        role: str,
        *,
        ttl_ms: int,
        owner: str | None,
        campaign_timeout_s: float | None,
    ) -> None:
        self._client = client
        self.role = role
        self.ttl_ms = ttl_ms
        self.owner = owner or default_owner()
        self.campaign_timeout_s = campaign_timeout_s
        self.term: Lease | None = None

    async def __aenter__(self) -> Lease:
        """Campaign; returns the term once elected.

        Raises:
            DeadlineExceeded: not elected within `campaign_timeout_s`.
            InvalidArgument / PermissionDenied / Unavailable: from the registry.
        """
        deadline = (
            None if self.campaign_timeout_s is None
            else time.monotonic() + self.campaign_timeout_s
        )
        while True:
            left = CAMPAIGN_ROUND_S if deadline is None else deadline - time.monotonic()
            if left < 0:
                raise DeadlineExceeded(
                    f"not elected {self.role!r} within {self.campaign_timeout_s:g} s"
                )
            term = Lease(
                self._client, self.role, ttl_ms=self.ttl_ms,
                wait_timeout_s=min(CAMPAIGN_ROUND_S, max(0.0, left)),
                owner=self.owner, renew_interval_ms=None,
            )
            try:
                self.term = await term.__aenter__()
                return self.term
            except LockNotAcquired:
                continue  # another candidate still leads: campaign again

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Step down (release the lock), or raise LockLost if the term was lost."""
        term, self.term = self.term, None
        if term is not None:
            await term.__aexit__(exc_type, exc, tb)
