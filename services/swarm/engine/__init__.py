"""Pure-numpy engine of the AgentMesh swarm daemon (no I/O, no gRPC).

Public API (everything else is internal):

* :class:`SwarmConfig`, :class:`SwarmOptimizer`, :class:`IterationStats` —
  ask/tell swarm optimisation with exact JSON snapshots.
* :class:`Behaviour`, :class:`Role`, :class:`RoleFractions`,
  :class:`Topology`, :class:`BoundaryMode`, :class:`VelocityInit` —
  configuration vocabulary.
* :class:`PartitionScheduler` and its records — partitioned work spread over
  agents by pheromone (ant-colony) choice, with leases.
* :data:`BENCHMARKS`, :func:`get_benchmark` — vectorised test functions.
* The error hierarchy rooted at :class:`SwarmEngineError`.
"""

from __future__ import annotations

from .behaviours import PROFILES, Behaviour, BehaviourProfile
from .config import SwarmConfig
from .convergence import ConvergenceCriterion
from .errors import (
    InvalidConfigError,
    InvalidStateError,
    SnapshotError,
    SwarmEngineError,
    UnknownNameError,
)
from .functions import BENCHMARKS, Benchmark, FitnessFunction, get_benchmark
from .optimizer import SNAPSHOT_FORMAT, IterationStats, SwarmOptimizer
from .partitions import (
    SCHEDULER_SNAPSHOT_FORMAT,
    AgentStats,
    Completion,
    CompletionStatus,
    Lease,
    PartitionScheduler,
    PartitionState,
    SchedulerStats,
)
from .pso import BoundaryMode, Topology, VelocityInit
from .roles import Role, RoleFractions

__all__ = [
    "BENCHMARKS",
    "PROFILES",
    "SCHEDULER_SNAPSHOT_FORMAT",
    "SNAPSHOT_FORMAT",
    "AgentStats",
    "Behaviour",
    "BehaviourProfile",
    "Benchmark",
    "BoundaryMode",
    "Completion",
    "CompletionStatus",
    "ConvergenceCriterion",
    "FitnessFunction",
    "InvalidConfigError",
    "InvalidStateError",
    "IterationStats",
    "Lease",
    "PartitionScheduler",
    "PartitionState",
    "Role",
    "RoleFractions",
    "SchedulerStats",
    "SnapshotError",
    "SwarmConfig",
    "SwarmEngineError",
    "SwarmOptimizer",
    "Topology",
    "UnknownNameError",
    "VelocityInit",
    "get_benchmark",
]
