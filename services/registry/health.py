"""Health score, status thresholds and flap damping.

The formula is our reading of the seeds ("heartbeat recency: 50% penalty if
> 2x interval; error rate: linear penalty; response time: penalty if > 2 s;
CPU: penalty if > 70%"), plus a Consul-style TTL check: an agent silent for
longer than `ttl_factor` heartbeat intervals is critical and scores 0.

    score = 1.0
    if age > ttl_factor * interval:        score = 0            (TTL expired)
    elif age > stale_factor * interval:    score *= stale_penalty   (0.5)
    score *= 1 - clamp(error_rate, 0, 1)                           (linear)
    if response_time_ms > slow_response_ms: score *= slow_penalty  (0.8)
    if cpu_percent > cpu_threshold:         score *= cpu_penalty   (0.9)

The same arithmetic runs inside Redis (services/registry/lua.py) so replicas
update health atomically; tests/unit/registry checks the two agree.

Status from score: >= active_threshold → ACTIVE, >= inactive_threshold →
DEGRADED, else INACTIVE. Flap damping (Consul's success_before_passing /
failures_before_critical): a status changes only after `flap_threshold`
evaluations in a row yield the same new status.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HealthPolicy:
    """Tunables of the health score and status machine.

    Attributes:
        stale_factor: heartbeats older than this many intervals halve the score.
        stale_penalty: multiplier applied when stale.
        ttl_factor: heartbeats older than this many intervals zero the score.
        slow_response_ms: response time above which the slow penalty applies, ms.
        slow_penalty: multiplier for slow responses.
        cpu_threshold: CPU percent above which the CPU penalty applies.
        cpu_penalty: multiplier for hot CPUs.
        active_threshold: minimum score for ACTIVE.
        inactive_threshold: scores below this are INACTIVE.
        flap_threshold: consecutive agreeing evaluations before a status change.
        event_step: minimum health change that emits a HEALTH_CHANGED event.
    """

    stale_factor: float = 2.0
    stale_penalty: float = 0.5
    ttl_factor: float = 3.0
    slow_response_ms: float = 2000.0
    slow_penalty: float = 0.8
    cpu_threshold: float = 70.0
    cpu_penalty: float = 0.9
    active_threshold: float = 0.7
    inactive_threshold: float = 0.3
    flap_threshold: int = 3
    event_step: float = 0.05


def health_score(
    *,
    age_ms: float,
    interval_ms: float,
    error_rate: float,
    response_time_ms: float,
    cpu_percent: float,
    policy: HealthPolicy,
) -> float:
    """The health score in [0, 1] (formula in the module docstring).

    Args:
        age_ms: time since the last heartbeat, ms.
        interval_ms: the agent's heartbeat interval, ms.
        error_rate: failed fraction of recent calls, 0..1.
        response_time_ms: mean response time, ms.
        cpu_percent: CPU utilisation, percent.
        policy: thresholds and penalties.
    """
    score = 1.0
    if age_ms > policy.ttl_factor * interval_ms:
        return 0.0
    if age_ms > policy.stale_factor * interval_ms:
        score *= policy.stale_penalty
    score *= 1.0 - min(1.0, max(0.0, error_rate))
    if response_time_ms > policy.slow_response_ms:
        score *= policy.slow_penalty
    if cpu_percent > policy.cpu_threshold:
        score *= policy.cpu_penalty
    return score


def status_for(score: float, policy: HealthPolicy) -> str:
    """ACTIVE, DEGRADED or INACTIVE for a score."""
    if score >= policy.active_threshold:
        return "ACTIVE"
    if score >= policy.inactive_threshold:
        return "DEGRADED"
    return "INACTIVE"


def damp(
    *, status: str, pending: str, streak: int, candidate: str, policy: HealthPolicy
) -> tuple[str, str, int]:
    """One flap-damping step.

    Args:
        status: current status.
        pending: the status waiting to be confirmed, or "".
        streak: how many evaluations in a row produced `pending`.
        candidate: the status this evaluation produced.
        policy: gives flap_threshold.

    Returns:
        (new status, new pending, new streak).
    """
    if candidate == status:
        return status, "", 0
    streak = streak + 1 if candidate == pending else 1
    if streak >= policy.flap_threshold:
        return candidate, "", 0
    return status, candidate, streak
