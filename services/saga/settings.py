"""Saga coordinator settings: flags `--<name>` and env `AGENTMESH_SAGA_<NAME>` /
`AGENTMESH_<NAME>`, declared once (agentmesh.runtime.settings).

The routing and guardrail settings of the one agent path (RoutingSettings) and
the retention period (RetentionSettings) are the runtime's; the saga adds its
lease, recovery and pool settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.runtime.retention import RetentionSettings
from agentmesh.runtime.routing.settings import RoutingSettings
from agentmesh.runtime.settings import setting


@dataclass(frozen=True)
class SagaSettings(RoutingSettings, RetentionSettings):
    """The saga coordinator's settings: routing, retention, plus these.

    Attributes:
        coordinator_id: this replica's id in saga leases; "" means
            `<hostname>-<pid>-<random>` (chosen at startup).
        lease_ttl_ms: saga lease length; a dead replica's sagas move after it.
        renew_interval_ms: lease renewal (and cancel check) interval; below lease_ttl_ms.
        recovery_interval_ms: scan interval for free or expired leases.
        max_active_sagas: sagas one replica drives at once; 0 serves the API only.
        snapshot_every: events between snapshots.
        redis_pool_size: Redis connections for the engine and unary RPCs.
        watch_pool_size: Redis connections for WatchSaga's blocking reads.
        max_active_tasks: tasks (TaskService) one replica drives at once; 0
            serves the task API only.
        task_poll_interval_ms: how often a task scheduler that nothing woke
            looks at the queues (a safety net: a task queued on any replica, a
            freed capacity slot and a delayed task coming due wake it at once).
        task_timeout_ms: default run timeout of one task attempt.
        task_schedule_to_start_ms: default longest wait of a task before its
            first start (TIMEOUT after it).
        default_timeout_ms: saga timeout of definitions that set none (the
            seeds' SAGA_DEFAULT_TIMEOUT_MS), written into each saga at start.
        compensation_timeout_ms: deadline of a compensation attempt of steps
            and definitions that set none (the seeds'
            SAGA_COMPENSATION_TIMEOUT_MS); 0 = the step's action timeout.
        task_max_payload_bytes: largest ScheduleTask payload.
        task_default_capacity: tasks an agent runs at once when it reports no
            capacity (0 = unlimited).
        task_default_strategy: load-balancing strategy of tasks that name none,
            per task type: "type=STRATEGY,..." with "*" for every other type.
    """

    coordinator_id: str = setting(
        "", help="this replica's id; empty = <hostname>-<pid>-<random>"
    )
    lease_ttl_ms: int = setting(
        5000, help="saga lease length; a dead replica's sagas move after it", unit="ms",
        minimum=1,
    )
    renew_interval_ms: int = setting(
        1000, help="lease renewal (and cancel check) interval", unit="ms", minimum=1
    )
    recovery_interval_ms: int = setting(
        1000, help="scan interval for free or expired leases", unit="ms", minimum=1
    )
    max_active_sagas: int = setting(
        1000, help="sagas one replica drives at once (0 = API only)", minimum=0
    )
    snapshot_every: int = setting(16, help="events between snapshots", unit="events", minimum=1)
    redis_pool_size: int = setting(
        128, help="Redis connections for the engine and unary RPCs", minimum=1
    )
    watch_pool_size: int = setting(
        512, help="Redis connections for WatchSaga's blocking reads", minimum=1
    )
    default_timeout_ms: int = setting(
        300_000, help="saga timeout of definitions that set none", unit="ms", minimum=1
    )
    compensation_timeout_ms: int = setting(
        0,
        help="compensation attempt deadline of steps that set none (0 = the action timeout)",
        unit="ms",
        minimum=0,
    )

    max_active_tasks: int = setting(
        1000, help="tasks one replica drives at once (0 = task API only)", minimum=0
    )
    task_poll_interval_ms: int = setting(
        500, help="how often a task scheduler that nothing woke looks at the queues", unit="ms",
        minimum=1,
    )
    task_timeout_ms: int = setting(
        30_000, help="default run timeout of one task attempt", unit="ms", minimum=1
    )
    task_schedule_to_start_ms: int = setting(
        300_000, help="default longest wait of a task before its first start", unit="ms",
        minimum=1,
    )
    task_max_payload_bytes: int = setting(
        1_048_576, help="largest ScheduleTask payload", unit="bytes", minimum=1
    )
    task_default_capacity: int = setting(
        0, help="tasks an agent runs at once when it reports no capacity (0 = unlimited)",
        minimum=0,
    )
    task_default_strategy: str = setting(
        "*=LEAST_LOADED",
        help="strategy of tasks that name none: type=STRATEGY,... ('*' = other types)",
    )

    def problems(self) -> list[str]:
        """Range problems, and a renewal that would not beat the lease's expiry."""
        out = super().problems()
        if self.renew_interval_ms >= self.lease_ttl_ms:
            out.append(
                f"--renew-interval-ms={self.renew_interval_ms} must be below "
                f"--lease-ttl-ms={self.lease_ttl_ms} (leases would expire between renewals)"
            )
        from agentmesh.server.saga.tasks.placement import parse_strategy_map

        try:
            parse_strategy_map(self.task_default_strategy)
        except ValueError as e:
            out.append(f"--task-default-strategy: {e}")
        return out

#: The settings class of this daemon (scripts/gen_settings_schema.py, tests/deploy).
SETTINGS = SagaSettings
