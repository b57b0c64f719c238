"""Start-and-wait helpers for sagas and swarms, and what they raise.

    async with Client() as c:
        try:
            out = await c.run_saga(definition, {"year": 2024}, timeout_s=60)
        except SagaCompensated as e:
            print(e.step, StepStatus.Name(e.step_status), [r.step for r in e.compensations])
        swarm = await c.deploy_swarm(task, wait=True, timeout_s=120)
        print(swarm.optimization.best_fitness)

`follow_saga` (and `wait_saga`, its (saga, compensations) form) follows
WatchSaga from the first event to the final one,
resuming after the last sequence seen when the stream breaks (UNAVAILABLE,
e.g. a coordinator replica restarting), then reads the saga with GetSaga.
`wait_swarm` follows WatchSwarm the same way (GetSwarm after a break).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentmesh.agent.structs import struct_to_dict
from agentmesh.client.base import _build
from agentmesh.runtime.errors import (
    Aborted,
    DeadlineExceeded,
    ErrorReason,
    FailedPrecondition,
    Unavailable,
    Unimplemented,
    error_info,
)
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2

if TYPE_CHECKING:
    from agentmesh.client.services_gen import ServiceMethods

__all__ = [
    "FINAL_SAGA_STATES",
    "FINAL_SWARM_STATES",
    "CompensationRun",
    "SagaCancelled",
    "SagaCompensated",
    "SagaEnded",
    "SagaFailed",
    "SagaOutcome",
    "SwarmEnded",
    "SwarmFailed",
    "SwarmStopped",
    "follow_saga",
    "saga_error_for",
    "wait_saga",
    "wait_swarm",
]

S = saga_pb2
FINAL_SAGA_STATES = frozenset({
    S.SAGA_STATE_COMPLETED, S.SAGA_STATE_COMPENSATED, S.SAGA_STATE_FAILED,
    S.SAGA_STATE_CANCELLED,
})
FINAL_SWARM_STATES = frozenset({
    swarm_pb2.SWARM_STATE_COMPLETED, swarm_pb2.SWARM_STATE_FAILED, swarm_pb2.SWARM_STATE_STOPPED,
})
#: Pause before re-opening a broken watch stream, s.
REWATCH_PAUSE_S = 0.2

_COMPENSATION_ENDS = {
    S.SAGA_EVENT_TYPE_STEP_COMPENSATED: S.STEP_STATUS_COMPENSATED,
    S.SAGA_EVENT_TYPE_STEP_COMPENSATION_FAILED: S.STEP_STATUS_COMPENSATION_FAILED,
}


@dataclass(frozen=True)
class CompensationRun:
    """One step's compensation, as the saga's log recorded its end.

    Attributes:
        step: the compensated step.
        status: STEP_STATUS_COMPENSATED or STEP_STATUS_COMPENSATION_FAILED.
        error: the compensation's final error (empty when it succeeded).
    """

    step: str
    status: saga_pb2.StepStatus.ValueType
    error: saga_pb2.StepError


@dataclass(frozen=True)
class SagaOutcome:
    """A final saga and what its log says about how it got there.

    Attributes:
        saga: the saga from GetSaga after its final event.
        compensations: every compensation that ended, in log order.
        step_failure: the first STEP_FAILED of the log (its `step_name`, code
            and message): the failure that turned the saga back; None without one.
    """

    saga: saga_pb2.Saga
    compensations: list[CompensationRun]
    step_failure: saga_pb2.StepError | None


class SagaEnded(Aborted):
    """A saga reached a final state other than COMPLETED (ABORTED).

    Attributes:
        saga: the saga as it ended (`agentmesh.saga.v1.Saga`, with `error`).
        step: the step whose failure turned the saga back (the log's first
            STEP_FAILED), else the step of `saga.error`; "" for saga-level
            causes (saga timeout, cancel).
        step_status: that step's StepStatus as the saga ended: COMPENSATED
            when the coordinator undid it too (a failed call may have taken
            effect), FAILED or COMPENSATION_FAILED otherwise; UNSPECIFIED
            without a step.
        step_error: that step's failure (code, message, step_name).
        error: why the saga ended as it did (`saga.error`); for SagaFailed the
            compensation that failed, for SagaCompensated the step failure.
        compensations: every compensation that ended, in the order the log
            recorded them (`CompensationRun`).
    """

    def __init__(self, outcome: SagaOutcome) -> None:
        saga = outcome.saga
        state = S.SagaState.Name(saga.state).removeprefix("SAGA_STATE_")
        failure = outcome.step_failure or saga.error
        text = f"saga {saga.saga_id} ended {state}"
        if failure.step_name:
            text += f"; step {failure.step_name!r} failed: {failure.code} {failure.message}"
        if saga.error.code and (saga.error.step_name, saga.error.code) != (
            failure.step_name, failure.code
        ):
            text += f"; then: {saga.error.code} {saga.error.message}"
        undone = ", ".join(r.step for r in outcome.compensations) or "none"
        super().__init__(f"{text}; compensations run: {undone}",
                         details=self._details(saga, failure.step_name))
        self.saga = saga
        self.step = failure.step_name
        self.step_status: saga_pb2.StepStatus.ValueType = next(
            (s.status for s in saga.steps if s.name == self.step), S.STEP_STATUS_UNSPECIFIED
        )
        self.step_error = failure
        self.error = saga.error
        self.compensations = outcome.compensations

    @staticmethod
    def _details(saga: saga_pb2.Saga, step: str) -> list[Any]:
        return [error_info(ErrorReason.ERROR_REASON_UNSPECIFIED,
                           metadata={"saga_id": saga.saga_id, "step": step})]


class SagaCompensated(SagaEnded):
    """The saga failed and every compensation ran: SAGA_STATE_COMPENSATED
    (ErrorInfo reason COMPENSATED)."""

    @staticmethod
    def _details(saga: saga_pb2.Saga, step: str) -> list[Any]:
        return [error_info(ErrorReason.ERROR_REASON_COMPENSATED,
                           metadata={"saga_id": saga.saga_id, "step": step})]


class SagaFailed(SagaEnded):
    """SAGA_STATE_FAILED: the saga could not be undone (a compensation failed,
    or a step past a pivot failed); needs a person."""


class SagaCancelled(SagaEnded):
    """SAGA_STATE_CANCELLED: CancelSaga ended it (after compensating)."""


def saga_error_for(
    saga: saga_pb2.Saga | SagaOutcome, compensations: list[CompensationRun] | None = None,
) -> SagaEnded | None:
    """The exception for a final saga that did not complete; None when COMPLETED
    or not final.

    Args:
        saga: a `follow_saga` outcome, or a saga (then `compensations` from
            `wait_saga`, and `step` is the step of `saga.error`).
        compensations: with a bare saga, the compensations that ran.
    """
    outcome = saga if isinstance(saga, SagaOutcome) else SagaOutcome(
        saga, list(compensations or []), None
    )
    kind = {
        S.SAGA_STATE_COMPENSATED: SagaCompensated,
        S.SAGA_STATE_FAILED: SagaFailed,
        S.SAGA_STATE_CANCELLED: SagaCancelled,
    }.get(outcome.saga.state)
    return kind(outcome) if kind else None


async def follow_saga(
    client: ServiceMethods, saga_id: str, *, timeout_s: float | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    on_event: Callable[[saga_pb2.SagaEvent], Awaitable[None]] | None = None,
) -> SagaOutcome:
    """Follow a saga's events to its final state.

    Args:
        client: the client.
        saga_id: the saga.
        timeout_s: longest wait in all, s; None waits until it ends.
        metadata: gRPC metadata of every call (e.g. a caller's credentials).
        on_event: awaited with each event as it arrives (progress reports).

    Returns:
        The final saga (GetSaga), its compensations and its first step failure.

    Raises:
        NotFound: no such saga.
        DeadlineExceeded: still not final after `timeout_s`.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    log = _LogReader(on_event)
    await _follow_events(client, saga_id, log, deadline, timeout_s, metadata)
    saga = (await client.get_saga(saga_id=saga_id, metadata=metadata)).saga
    return SagaOutcome(saga, log.runs, log.failure)


class _LogReader:
    """What `follow_saga` keeps from a saga's events as they arrive."""

    def __init__(self, on_event: Callable[[saga_pb2.SagaEvent], Awaitable[None]] | None) -> None:
        self.on_event = on_event
        self.after = 0
        self.runs: list[CompensationRun] = []
        self.failure: saga_pb2.StepError | None = None

    async def read(self, ev: saga_pb2.SagaEvent) -> bool:
        """Take one event; True when it is the final one."""
        self.after = ev.sequence
        if self.on_event is not None:
            await self.on_event(ev)
        if ev.type in _COMPENSATION_ENDS:
            self.runs.append(CompensationRun(ev.step_name, _COMPENSATION_ENDS[ev.type], ev.error))
        if ev.type == S.SAGA_EVENT_TYPE_STEP_FAILED and self.failure is None:
            self.failure = S.StepError(code=ev.error.code, message=ev.error.message,
                                       step_name=ev.step_name)
        return ev.state in FINAL_SAGA_STATES


async def _follow_events(
    client: ServiceMethods, saga_id: str, log: _LogReader, deadline: float | None,
    timeout_s: float | None, metadata: Sequence[tuple[str, str]],
) -> None:
    """WatchSaga from `log.after` to the final event, re-watching after UNAVAILABLE."""
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"saga {saga_id} is not final after {timeout_s:g} s")
        try:
            async for resp in client.watch_saga(
                saga_id=saga_id, after_sequence=log.after, timeout_s=left, metadata=metadata
            ):
                if await log.read(resp.event):
                    break  # not waiting for the server to close the stream
            # The stream ends with OK after the final event (or at once when the
            # saga was final before `after`).
            return
        except Unavailable:
            await asyncio.sleep(REWATCH_PAUSE_S)


async def wait_saga(
    client: ServiceMethods, saga_id: str, *, timeout_s: float | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    on_event: Callable[[saga_pb2.SagaEvent], Awaitable[None]] | None = None,
) -> tuple[saga_pb2.Saga, list[CompensationRun]]:
    """`follow_saga` as (the final saga, the compensations that ended in log order)."""
    o = await follow_saga(client, saga_id, timeout_s=timeout_s, metadata=metadata,
                          on_event=on_event)
    return o.saga, o.compensations


async def run_saga(
    client: ServiceMethods,
    definition_or_name: saga_pb2.SagaDefinition | Mapping[str, Any] | str,
    input: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str = "",
    definition_version: int = 0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """RunSaga (start and follow in one call); see `Client.run_saga`.

    When the stream breaks after the saga started (UNAVAILABLE, a replica
    draining), the rest is read with WatchSaga and GetSaga, as
    `follow_saga` does. A coordinator without RunSaga (UNIMPLEMENTED, an
    older replica) gets StartSaga and `follow_saga`.
    """
    source: dict[str, Any] = (
        {"definition_name": definition_or_name, "definition_version": definition_version}
        if isinstance(definition_or_name, str) else {"definition": definition_or_name}
    )
    start = _build(saga_pb2.StartSagaRequest, None,
                   {"input": dict(input or {}), "idempotency_key": idempotency_key, **source})
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    log = _LogReader(None)
    saga_id = ""
    final: saga_pb2.Saga | None = None
    try:
        async for item in client.saga.run_saga(start=start, timeout_s=timeout_s):
            if item.HasField("started"):
                saga_id = item.started.saga.saga_id
            for ev in item.events:
                await log.read(ev)
            if item.HasField("saga"):
                final = item.saga
    except Unimplemented:
        if saga_id:
            raise
        started = await client.start_saga(start)
        saga_id = started.saga.saga_id
    except Unavailable:
        if not saga_id:
            raise  # before `started` it is unknown whether it started, as with StartSaga
    if final is None:
        await _follow_events(client, saga_id, log, deadline, timeout_s, ())
        final = (await client.get_saga(saga_id=saga_id)).saga
    outcome = SagaOutcome(final, log.runs, log.failure)
    err = saga_error_for(outcome)
    if err is not None:
        raise err
    return struct_to_dict(outcome.saga.output)


class SwarmEnded(FailedPrecondition):
    """A swarm ended without completing (FAILED_PRECONDITION).

    Attributes:
        swarm: the swarm as it ended (`agentmesh.swarm.v1.Swarm`, `error_message`).
    """

    def __init__(self, swarm: swarm_pb2.Swarm) -> None:
        state = swarm_pb2.SwarmState.Name(swarm.state).removeprefix("SWARM_STATE_")
        why = f": {swarm.error_message}" if swarm.error_message else ""
        super().__init__(f"swarm {swarm.swarm_id} ended {state}{why}")
        self.swarm = swarm


class SwarmFailed(SwarmEnded):
    """SWARM_STATE_FAILED: no result (a partition failed on every attempt, work
    timed out, the agents vanished)."""


class SwarmStopped(SwarmEnded):
    """SWARM_STATE_STOPPED: StopSwarm ended it; `swarm` holds the best result so far."""


async def wait_swarm(
    client: ServiceMethods, swarm_id: str, *, timeout_s: float | None = None,
) -> swarm_pb2.Swarm:
    """Follow a swarm with WatchSwarm to its final state and return it.

    Raises:
        SwarmFailed / SwarmStopped: it ended without completing.
        NotFound: no such swarm.
        DeadlineExceeded: still not final after `timeout_s`.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        swarm = (await client.get_swarm(swarm_id=swarm_id)).swarm
        if swarm.state in FINAL_SWARM_STATES:
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"swarm {swarm_id} is not final after {timeout_s:g} s")
        try:
            async for resp in client.watch_swarm(swarm_id=swarm_id, timeout_s=left):
                if resp.HasField("swarm") and resp.swarm.state in FINAL_SWARM_STATES:
                    break
        except Unavailable:
            await asyncio.sleep(REWATCH_PAUSE_S)
    if swarm.state == swarm_pb2.SWARM_STATE_FAILED:
        raise SwarmFailed(swarm)
    if swarm.state == swarm_pb2.SWARM_STATE_STOPPED:
        raise SwarmStopped(swarm)
    return swarm
