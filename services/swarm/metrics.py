"""Prometheus metrics of the swarm engine (names from the seeds).

* ``swarm_agents_total{role}``: members of the swarms this replica drives, by
  role (particles for optimisation, worker agents for partition work).
* ``swarm_tasks_total{status}``: swarms by event: deployed, resumed,
  completed, failed, stopped.
* ``swarm_convergence_time_ms``: time from a swarm's start to its end
  (convergence, iteration limit or last partition), milliseconds.
* ``swarm_efficiency``: ``SwarmStats.efficiency`` of the last swarm that
  finished here (swarm.proto: partitions counted / (counted + reassigned),
  or an optimisation's personal-best improvements per evaluation).
* ``swarm_fitness_evaluations_total`` / ``swarm_fitness_evaluations_per_second``:
  fitness evaluations done, and the rate of the latest iteration.
* ``swarm_partitions_total{outcome}``: partition attempts by outcome
  (counted, duplicate, failed, reassigned).
* ``swarm_terminations_total{termination}``: finished swarms by why they
  ended (converged, max_iterations, timeout, partitions_done, stopped, error:
  the Termination enum, so bounded); the converged share tracks convergence.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SWARM_AGENTS = Gauge(
    "swarm_agents_total", "Members of the swarms driven by this replica, by role.", ["role"]
)
SWARM_TASKS = Counter("swarm_tasks_total", "Swarms by lifecycle event.", ["status"])
SWARM_CONVERGENCE_MS = Histogram(
    "swarm_convergence_time_ms",
    "Time from a swarm's start to its end, milliseconds.",
    buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 900_000),
)
SWARM_EFFICIENCY = Gauge(
    "swarm_efficiency", "Useful fraction of the work of the last finished swarm (0-1)."
)
FITNESS_EVALUATIONS = Counter(
    "swarm_fitness_evaluations_total", "Fitness evaluations done by this replica."
)
FITNESS_EVALS_PER_SECOND = Gauge(
    "swarm_fitness_evaluations_per_second", "Fitness evaluations per second, latest iteration."
)
PARTITIONS = Counter(
    "swarm_partitions_total", "Partition attempts by outcome.", ["outcome"]
)
SWARM_TERMINATIONS = Counter(
    "swarm_terminations_total", "Finished swarms by termination reason.", ["termination"]
)
