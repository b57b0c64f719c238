"""The cyclic garbage collector's settings for a long-running daemon.

CPython frees almost every object by reference counting; the cyclic collector
only finds reference cycles. It runs a young-generation pass every
`threshold0` net allocations (700 by default) and, every tenth of those, an
older one; a full pass walks every tracked object of the process. A daemon
holds a large, long-lived heap from the moment it has started (modules,
protobuf descriptors, gRPC and Kafka clients, caches) and allocates several
objects per message on its hot paths, so with the defaults the collector
walks the same long-lived objects again and again: a py-spy profile of the
bus gateway's Subscribe path showed about a fifth of its busy samples in
`gc_collect_main` (perf/bus/RESULTS.md).

`tune_collector` applies the remedy CPython documents for this (the `gc`
module's `freeze()`, added for pre-fork servers, and `set_threshold`) and
which Instagram described for its Django fleet ("Dismissing Python Garbage
Collection at Instagram", 2017): after startup, move every object alive into
the permanent generation, which no pass walks, and raise the young
generation's threshold so that passes run less often. Cycles are still
collected; they live at most `threshold0` allocations longer. The price: an
object alive at startup that later becomes part of an unreachable cycle is
never freed, so the memory that can leak is bounded by the startup heap
(tens of MB at most; `gc_frozen_objects` in the daemon's `serving` log line
says how many objects that is).
"""

from __future__ import annotations

import gc

#: Default young-generation threshold for daemons (CPython's own is 700).
DEFAULT_THRESHOLD0 = 10_000


def tune_collector(threshold0: int = DEFAULT_THRESHOLD0) -> int:
    """Freeze the objects alive now and set the young generation's threshold.

    Call once the process has started (modules imported, servers built);
    objects created later are collected as usual. The older generations keep
    CPython's multipliers (10 and 10).

    Args:
        threshold0: net allocations between young-generation passes, >= 1.

    Returns:
        How many objects were moved to the permanent generation (gc.get_freeze_count()).

    Raises:
        ValueError: threshold0 < 1 (0 would turn the collector off; that is
            not offered, a cycle-heavy workload would grow without bound).
    """
    if threshold0 < 1:
        raise ValueError(f"threshold0 must be >= 1, got {threshold0}")
    # Collect first: garbage frozen now would never be freed.
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(threshold0, t1, t2)
    return gc.get_freeze_count()
