"""A subscription's backlog: priority order with per-key order and no starvation.

Classes are served by smooth weighted round-robin (nginx's SWRR: each pick adds
every non-empty class's weight to its credit, takes the class with the most
credit and charges it the sum of the weights in play). Weights CRITICAL 8,
HIGH 4, NORMAL 2, LOW 1: with all four backlogged, each 15 picks hold 8, 4, 2
and 1 of them, CRITICAL first; LOW is never starved.

Per-key order beats priority: only the oldest waiting item of each ordering
key (partition + key) is eligible, so a CRITICAL message waits behind an
earlier LOW message with the same key. Keyless items are each their own key.

Fast path: while every waiting item is of one class and arrived in seq order
(no redelivery among them), the round-robin and the per-key heaps would hand
them out in arrival order, so they wait in a plain FIFO instead; the first
item that breaks that (another class, or an older seq) moves the FIFO into
the heaps, and the FIFO is used again once the heaps are empty.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from agentmesh.runtime.priority import WEIGHTS

# WEIGHTS and priority_class are the mesh-wide scheme (agentmesh.runtime.priority).


@dataclass(slots=True)
class Item:
    """One waiting message.

    Attributes:
        seq: arrival order within the subscription (kept on redelivery, so a
            redelivered item goes back in front of later ones of its key).
        order_key: ordering key; items with equal keys leave in seq order.
        cls: priority class index.
        data: the caller's payload.
    """

    seq: int
    order_key: Hashable
    cls: int
    data: Any
    token: int = field(default=0, compare=False)


class Backlog:
    """Waiting messages of one subscription."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, list[tuple[int, Item]]] = {}
        self._heads: list[list[tuple[int, int, Item]]] = [[] for _ in WEIGHTS]
        self._credit = [0] * len(WEIGHTS)
        self._tokens = itertools.count(1)
        self._counts = [0] * len(WEIGHTS)
        self._size = 0  # items in the heaps
        self._fifo: deque[Item] = deque()  # the fast path (module docstring)

    def __len__(self) -> int:
        return self._size + len(self._fifo)

    def _offer_head(self, key: Hashable) -> None:
        q = self._by_key.get(key)
        if not q:
            return
        head = q[0][1]
        head.token = next(self._tokens)
        heapq.heappush(self._heads[head.cls], (head.seq, head.token, head))

    def push(self, item: Item) -> None:
        """Add an item (new or redelivered)."""
        fifo = self._fifo
        if not self._size:
            if not fifo or (item.cls == fifo[-1].cls and item.seq > fifo[-1].seq):
                fifo.append(item)
                return
        if fifo:
            self._fifo = deque()
            for it in fifo:
                self._push_heaps(it)
        self._push_heaps(item)

    def push_many(self, items: list[Item]) -> None:
        """Add new items in arrival order (seq increasing)."""
        if not self._size and items:
            fifo = self._fifo
            cls = fifo[-1].cls if fifo else items[0].cls
            if all(it.cls == cls for it in items) and (not fifo or items[0].seq > fifo[-1].seq):
                fifo.extend(items)
                return
        for it in items:
            self.push(it)

    def _push_heaps(self, item: Item) -> None:
        q = self._by_key.setdefault(item.order_key, [])
        old_head = q[0][1] if q else None
        heapq.heappush(q, (item.seq, item))
        self._counts[item.cls] += 1
        self._size += 1
        if q[0][1] is not old_head:
            if old_head is not None:
                old_head.token = 0  # its head entry is stale now
            self._offer_head(item.order_key)

    def _eligible(self, cls: int) -> Item | None:
        heap = self._heads[cls]
        while heap:
            _, token, item = heap[0]
            if token == item.token and token != 0:
                return item
            heapq.heappop(heap)
        return None

    def pop(self) -> Item | None:
        """The next item to deliver, or None when nothing is eligible."""
        if not self._size:
            return self._fifo.popleft() if self._fifo else None
        ready = [c for c in range(len(WEIGHTS)) if self._eligible(c) is not None]
        if not ready:
            return None
        total = 0
        for c in ready:
            self._credit[c] += WEIGHTS[c]
            total += WEIGHTS[c]
        best = min(ready, key=lambda c: (-self._credit[c], c))
        self._credit[best] -= total
        for c in range(len(WEIGHTS)):
            if self._counts[c] == 0:
                self._credit[c] = 0
        item = self._eligible(best)
        assert item is not None
        heapq.heappop(self._heads[best])
        item.token = 0
        q = self._by_key[item.order_key]
        heapq.heappop(q)
        if q:
            self._offer_head(item.order_key)
        else:
            del self._by_key[item.order_key]
        self._counts[item.cls] -= 1
        self._size -= 1
        if self._counts[item.cls] == 0:
            self._credit[item.cls] = 0
        return item

    def remove_if(self, pred: Any) -> int:
        """Drop items whose data satisfies `pred` (partition revoked); returns the count."""
        dropped = 0
        if self._fifo:
            keep_fifo = deque(it for it in self._fifo if not pred(it.data))
            dropped += len(self._fifo) - len(keep_fifo)
            self._fifo = keep_fifo
        for key in list(self._by_key):
            q = self._by_key[key]
            keep = [(s, it) for s, it in q if not pred(it.data)]
            if len(keep) == len(q):
                continue
            for _, it in q:
                if pred(it.data):
                    it.token = 0
                    self._counts[it.cls] -= 1
                    self._size -= 1
                    dropped += 1
            if keep:
                heapq.heapify(keep)
                self._by_key[key] = keep
                if keep[0][1].token == 0:
                    self._offer_head(key)
            else:
                del self._by_key[key]
        return dropped
