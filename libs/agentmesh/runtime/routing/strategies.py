"""The strategies, as in-process picks over eligible candidates.

Nothing here does I/O (AFFINITY's Redis binding is in `affinity.py`, and
takes its proposal from `least_loaded`), so the decision rate is bounded only
by Python. Orders and weights derived from an eligible set are memoised on it
(`Eligible.memo`) and recomputed when eligibility or load figures change, so a
pick over 1,000 targets costs O(log n) or O(1), not O(n).
"""

from __future__ import annotations

import bisect
import math
import random
from itertools import accumulate

from uhashring import HashRing

from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.routing.candidates import Candidate, Eligible

#: Load-factor weights: queue utilisation, processing time, error rate.
W_QUEUE, W_TIME, W_ERRORS = 0.5, 0.2, 0.3
#: Capacity assumed when an agent reports none.
DEFAULT_CAPACITY = 10.0
#: Processing time that counts as fully loaded on the time term, ms.
TIME_SCALE_MS = 1000.0
#: Hash rings kept (one per pool in use).
MAX_RINGS = 256
#: Round-robin positions kept, one per pool (selector); the oldest is dropped.
MAX_RR_POOLS = 10_000


class Picker:
    """Stateful parts of the strategies: round-robin counters, hash rings,
    in-flight counts and the random source.

    Args:
        vnodes: virtual nodes per target on the consistent-hash ring.
        seed: random seed, for reproducible tests; None seeds from the OS.
    """

    def __init__(self, *, vnodes: int = 160, seed: int | None = None) -> None:
        self.vnodes = vnodes
        self.rng = random.Random(seed)
        self._rr: dict[str, int] = {}
        self._rings: dict[str, tuple[frozenset[str], HashRing]] = {}
        #: Calls this replica has in flight per agent; part of the load factor.
        self.inflight: dict[str, int] = {}

    # ---- load ----------------------------------------------------------
    def load_factor(self, c: Candidate) -> float:
        """Weighted load, 0 when idle: W_QUEUE·(queue + in-flight)/capacity +
        W_TIME·min(processing_ms / TIME_SCALE_MS, 1) + W_ERRORS·error_rate."""
        cap = c.capacity if c.capacity > 0 else DEFAULT_CAPACITY
        base = c.base_load
        if base < 0:  # the reported part changes only with a new snapshot
            base = c.base_load = (
                W_QUEUE * c.queue_size / cap
                + W_TIME * min(c.processing_time_ms / TIME_SCALE_MS, 1.0)
                + W_ERRORS * min(max(c.error_rate, 0.0), 1.0)
            )
        inflight = self.inflight.get(c.agent_id)
        return base + W_QUEUE * inflight / cap if inflight else base

    def by_load(self, el: Eligible) -> list[Candidate]:
        """Eligible candidates by load factor, then id (fresh: includes in-flight)."""
        return sorted(el.candidates, key=lambda c: (self.load_factor(c), c.agent_id))

    # ---- strategies ------------------------------------------------------
    def round_robin(self, pool_key: str, el: Eligible) -> Candidate:
        """Next candidate in rotation: even within ±1 over any cycle."""
        i = self._rr.get(pool_key, 0)
        self._rr[pool_key] = i + 1
        if len(self._rr) > MAX_RR_POOLS:  # pool keys come from requests' selectors
            del self._rr[next(iter(self._rr))]
        return el.candidates[i % len(el.candidates)]

    def least_loaded(self, el: Eligible) -> Candidate:
        """Power of two choices (Mitzenmacher 2001; Envoy LEAST_REQUEST): the
        less loaded of two distinct random candidates."""
        cands = el.candidates
        n = len(cands)
        if n == 1:
            return cands[0]
        a = self.rng.randrange(n)
        b = self.rng.randrange(n - 1)
        if b >= a:
            b += 1
        ca, cb = cands[a], cands[b]
        return ca if self.load_factor(ca) <= self.load_factor(cb) else cb

    def weighted_random(self, el: Eligible) -> Candidate:
        """Random with weight 1 / (0.05 + load factor); weights are memoised
        per snapshot, so in-flight calls of this replica are not counted."""
        cum = el.memo.get("wr")
        if cum is None:
            cum = el.memo["wr"] = list(
                accumulate(1.0 / (0.05 + self.load_factor(c)) for c in el.candidates)
            )
        x = self.rng.random() * cum[-1]
        return el.candidates[min(bisect.bisect_right(cum, x), len(cum) - 1)]

    def priority(self, el: Eligible, prio: common_pb2.Priority.ValueType) -> Candidate:
        """CRITICAL and HIGH: least loaded within the healthiest quarter (at
        least one candidate; ties at the cut are included). Others: least loaded."""
        if prio not in (common_pb2.PRIORITY_CRITICAL, common_pb2.PRIORITY_HIGH):
            return self.least_loaded(el)
        top = el.memo.get("healthiest")
        if top is None:
            ranked = self.by_health(el)
            cut = ranked[max(1, math.ceil(len(ranked) / 4)) - 1].health
            top = el.memo["healthiest"] = Eligible(
                [c for c in ranked if c.health >= cut], el.panic, el.total
            )
        return self.least_loaded(top)

    @staticmethod
    def by_health(el: Eligible) -> list[Candidate]:
        """Eligible candidates by health descending, then id (memoised)."""
        got = el.memo.get("by_health")
        if got is None:
            got = el.memo["by_health"] = sorted(
                el.candidates, key=lambda c: (-c.health, c.agent_id)
            )
        return got

    def ordered(self, el: Eligible, *, explicit: bool) -> list[Candidate]:
        """FAILOVER and CONTENT_BASED order: the explicit id order of the pool
        when it has one (kept by the snapshot), else health descending."""
        return el.candidates if explicit else self.by_health(el)

    def consistent_hash(self, pool_key: str, el: Eligible, key: str) -> Candidate:
        """The ring owner of `key`. The ring is kept per pool and updated by
        adding and removing nodes, so a change of one of N targets moves
        about 1/N of the keys (Karger et al. 1997)."""
        ring = self.ring(pool_key, el.ids())
        owner = ring.get_node(key)
        by_id = el.memo.get("by_id")
        if by_id is None:
            by_id = el.memo["by_id"] = {c.agent_id: c for c in el.candidates}
        return by_id[owner]

    def ring(self, pool_key: str, ids: frozenset[str]) -> HashRing:
        """The hash ring of a pool over `ids`, updated in place when they change."""
        have = self._rings.get(pool_key)
        if have is None:
            ring = HashRing(nodes=sorted(ids), vnodes=self.vnodes)
        else:
            nodes, ring = have
            if nodes is ids or nodes == ids:  # identity first: the set is memoised
                return ring
            for gone in sorted(nodes - ids):
                ring.remove_node(gone)
            for new in sorted(ids - nodes):
                ring.add_node(new, {"vnodes": self.vnodes})
        self._rings[pool_key] = (ids, ring)
        if len(self._rings) > MAX_RINGS:  # rings are large: forget the oldest pool's
            del self._rings[next(iter(self._rings))]
        return ring
