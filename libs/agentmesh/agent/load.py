"""Load the agent reports in heartbeats: queue size, processing and response
times, error rate, CPU and memory."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import psutil

from agentmesh.common.v1 import common_pb2


@dataclass
class _Outcome:
    processing_ms: float
    response_ms: float
    ok: bool


class LoadTracker:
    """Tracks the calls an agent serves over a sliding window of recent calls.

    Args:
        window: number of recent calls the means and the error rate cover.
        capacity: concurrent calls the agent accepts; 0 means unknown.
    """

    def __init__(self, *, window: int = 200, capacity: int = 0) -> None:
        self._outcomes: collections.deque[_Outcome] = collections.deque(maxlen=window)
        self.in_flight = 0
        self.capacity = capacity
        self.total_calls = 0
        self.total_errors = 0
        self._proc = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        # The first cpu_percent() call only primes the counter and returns 0.
        self._proc.cpu_percent(interval=None)

    def started(self) -> float:
        """Count a call as queued or running; returns its start time (perf_counter s)."""
        self.in_flight += 1
        return time.perf_counter()

    def finished(self, start: float, *, processing_ms: float, ok: bool) -> None:
        """Record the outcome of a call that `started` returned `start` for."""
        self.in_flight = max(0, self.in_flight - 1)
        self.total_calls += 1
        if not ok:
            self.total_errors += 1
        response_ms = (time.perf_counter() - start) * 1000.0
        self._outcomes.append(_Outcome(processing_ms, response_ms, ok))

    def snapshot(self) -> common_pb2.LoadMetrics:
        """Current load as the common LoadMetrics message.

        cpu_percent is this process's CPU since the previous snapshot divided by
        the number of cores (0-100); memory_percent is its RSS as a percent of
        physical memory.
        """
        n = len(self._outcomes)
        errors = sum(1 for o in self._outcomes if not o.ok)
        return common_pb2.LoadMetrics(
            cpu_percent=min(100.0, self._proc.cpu_percent(interval=None) / self._cpus),
            memory_percent=float(self._proc.memory_percent()),
            error_rate=errors / n if n else 0.0,
            response_time_ms=sum(o.response_ms for o in self._outcomes) / n if n else 0.0,
            queue_size=self.in_flight,
            capacity=self.capacity,
            processing_time_ms=sum(o.processing_ms for o in self._outcomes) / n if n else 0.0,
        )
