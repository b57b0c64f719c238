"""A typed base class for orchestrators: the seeds' BaseOrchestrator on the mesh.

    class Heat(Orchestrator[HeatInput, HeatOutput]):
        async def run(self, input: HeatInput) -> HeatOutput:
            temps = [await self.invoke("read_temperature", selector=..., payload=...)]
            await self.check("set_setpoint", {"setpoint_c": sp})
            out = await self.run_saga(definition, {"setpoint_c": sp})
            return HeatOutput(...)

    async with Heat(client, name="gl-001") as heat:
        result = await heat.execute(HeatInput(...))   # Result[HeatOutput]

An orchestrator composes `agentmesh.Client`; it does not re-implement any mesh
part. Each operation helper (`invoke`, `run_saga`, `schedule_task`,
`deploy_swarm`, `publish`, `propose`) first asks the mesh's guardrails about the
operation (SafetyService.ValidateOperation, the same CEL safety rules every
agent call meets) and records the id of what it made, so the result of an
execution carries a provenance hash over its input, its output and every mesh
operation it caused. `execute` times the run, turns a failure into a failed
Result (after the overridable `recover` hook had its chance) and keeps
execution metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from agentmesh.agent.structs import struct_to_dict
from agentmesh.client import Client
from agentmesh.client.bus_messages import make_envelope
from agentmesh.client.workflows import saga_error_for, wait_saga
from agentmesh.registry.v1 import coordination_pb2
from agentmesh.router.v1 import safety_pb2
from agentmesh.runtime.errors import DeadlineExceeded, FailedPrecondition
from agentmesh.swarm.v1 import swarm_pb2

InT = TypeVar("InT")
OutT = TypeVar("OutT")


class SafetyViolation(FailedPrecondition):
    """The mesh's safety rules refused an operation before it was made.

    Attributes:
        operation_type: the operation checked.
        verdict: the ValidateOperationResponse (`violations`, `blocking`).
    """

    def __init__(self, operation_type: str, verdict: safety_pb2.ValidateOperationResponse) -> None:
        rules = ", ".join(v.rule_name for v in verdict.blocking) or "a safety rule"
        super().__init__(f"{operation_type} refused by {rules}")
        self.operation_type = operation_type
        self.verdict = verdict


@dataclass(frozen=True)
class Operation:
    """One mesh operation an execution made.

    Attributes:
        kind: "invoke", "saga", "task", "swarm", "bus" or "proposal".
        id: the mesh's id of it (idempotency key, saga, task, swarm, message
            or proposal id).
    """

    kind: str
    id: str


@dataclass(frozen=True)
class Result(Generic[OutT]):
    """What `execute` returns.

    Attributes:
        success: True when `run` (or `recover`) returned an output.
        output: that output; None on failure.
        error: "" on success, else "<ExceptionType>: <message>".
        duration_ms: wall time of the execution, ms.
        provenance_hash: lowercase hex SHA-256 of `canonical_json({"orchestrator",
            "execution_id", "input", "output", "error", "operations"})`.
        execution_id: this execution's id (also the prefix of its idempotency keys).
        operations: the mesh operations made, in order.
    """

    success: bool
    output: OutT | None
    error: str
    duration_ms: float
    provenance_hash: str
    execution_id: str
    operations: tuple[Operation, ...]


@dataclass
class ExecutionMetrics:
    """Counters of one orchestrator's executions.

    Attributes:
        executions / successes / failures: executions ended, and how.
        recovered: successes that `recover` produced after `run` failed.
        safety_refusals: operations the guardrails refused.
        total_duration_ms: summed wall time, ms.
    """

    executions: int = 0
    successes: int = 0
    failures: int = 0
    recovered: int = 0
    safety_refusals: int = 0
    total_duration_ms: float = 0.0

    @property
    def mean_duration_ms(self) -> float:
        """Mean execution time, ms (0 before the first)."""
        return self.total_duration_ms / self.executions if self.executions else 0.0

    @property
    def success_rate(self) -> float:
        """successes / executions in [0, 1] (0 before the first)."""
        return self.successes / self.executions if self.executions else 0.0


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON data: dataclasses and Mappings become objects,
    protobuf messages their canonical JSON form, sequences lists.

    Raises:
        TypeError: a value JSON cannot hold.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, ProtoMessage):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON data")


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace (RFC 8785's member order;
    numbers as Python writes them), so equal data gives equal bytes."""
    return json.dumps(
        to_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    ).encode()


@dataclass
class _Execution:
    execution_id: str
    operations: list[Operation] = field(default_factory=list)
    counter: int = 0

    def next_key(self) -> str:
        self.counter += 1
        return f"{self.execution_id}/{self.counter}"


class Orchestrator(ABC, Generic[InT, OutT]):
    """Base class of an orchestrator over the mesh (see the module docstring).

    Subclasses implement `run`, and may override `setup` (called by `start`),
    `teardown` (called by `shutdown`) and `recover`.

    Args:
        client: the mesh client it composes; started by `start` when
            `owns_client` (then also closed by `shutdown`).
        name: the orchestrator's name, in its provenance and idempotency keys.
        owns_client: whether `start`/`shutdown` open and close `client`.
        wait_timeout_s: longest wait of a saga, task, swarm or vote, s.
    """

    def __init__(
        self,
        client: Client,
        *,
        name: str,
        owns_client: bool = False,
        wait_timeout_s: float = 300.0,
    ) -> None:
        self.client = client
        self.name = name
        self.owns_client = owns_client
        self.wait_timeout_s = wait_timeout_s
        self.metrics = ExecutionMetrics()
        self.started = False
        self._current: contextvars.ContextVar[_Execution | None] = contextvars.ContextVar(
            f"orchestrator-{name}", default=None
        )

    # ---- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Open the client (when owned), then `setup`; idempotent."""
        if self.started:
            return
        if self.owns_client:
            await self.client.__aenter__()
        await self.setup()
        self.started = True

    async def shutdown(self) -> None:
        """`teardown`, then close the client (when owned); idempotent."""
        if not self.started:
            return
        self.started = False
        try:
            await self.teardown()
        finally:
            if self.owns_client:
                await self.client.__aexit__(None, None, None)

    async def __aenter__(self) -> Orchestrator[InT, OutT]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def setup(self) -> None:
        """Hook run by `start` (e.g. create the safety constraints it relies on)."""

    async def teardown(self) -> None:
        """Hook run by `shutdown`."""

    # ---- the execution -----------------------------------------------------------
    @abstractmethod
    async def run(self, input: InT) -> OutT:
        """Do the orchestration with the operation helpers; raise on failure."""

    async def recover(self, input: InT, error: BaseException) -> OutT:
        """Error-recovery hook: return an output to turn a failed `run` into a
        (recovered) success, or raise (the default re-raises `error`)."""
        raise error

    async def execute(self, input: InT) -> Result[OutT]:
        """Run once: `run(input)`, then `recover` on an exception.

        Returns:
            The Result; exceptions other than cancellation become a failed
            Result (`error`), never propagate.

        Raises:
            RuntimeError: `start` was not called.
        """
        if not self.started:
            raise RuntimeError(f"orchestrator {self.name!r} is not started")
        ex = _Execution(execution_id=f"{self.name}-{uuid.uuid4().hex[:16]}")
        token = self._current.set(ex)
        t0 = time.perf_counter()
        output: OutT | None = None
        error = ""
        recovered = False
        try:
            try:
                output = await self.run(input)
            except Exception as first:  # the recover hook decides what a failure means
                output = await self.recover(input, first)
                recovered = True
        except Exception as e:  # a failed Result, by contract (cancellation propagates)
            error = f"{type(e).__name__}: {e}"
            output = None
        finally:
            self._current.reset(token)
        duration_ms = (time.perf_counter() - t0) * 1000.0
        ops = tuple(ex.operations)
        digest = hashlib.sha256(canonical_json({
            "orchestrator": self.name, "execution_id": ex.execution_id, "input": input,
            "output": output, "error": error,
            "operations": [[o.kind, o.id] for o in ops],
        })).hexdigest()
        m = self.metrics
        m.executions += 1
        m.total_duration_ms += duration_ms
        if error:
            m.failures += 1
        else:
            m.successes += 1
            m.recovered += int(recovered)
        return Result(
            success=not error, output=output, error=error, duration_ms=duration_ms,
            provenance_hash=digest, execution_id=ex.execution_id, operations=ops,
        )

    # ---- operation helpers ---------------------------------------------------------
    def _ex(self) -> _Execution:
        ex = self._current.get()
        if ex is None:
            raise RuntimeError("operation helpers run only inside execute()")
        return ex

    def _record(self, kind: str, op_id: str) -> None:
        self._ex().operations.append(Operation(kind, op_id))

    async def check(
        self, operation_type: str, parameters: Mapping[str, Any] | None = None,
        *, agent_id: str = "",
    ) -> safety_pb2.ValidateOperationResponse:
        """Dry-run the mesh's safety rules on an operation.

        Raises:
            SafetyViolation: a blocking violation (nothing was made).
        """
        verdict = await self.client.validate(
            operation_type, parameters, agent_id=agent_id, sender_id=self.name
        )
        if not verdict.is_safe:
            self.metrics.safety_refusals += 1
            raise SafetyViolation(operation_type, verdict)
        return verdict

    async def invoke(
        self, action: str, payload: Mapping[str, Any], *, selector: Mapping[str, Any],
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        """Check, then call `action` on an agent the router picks by `selector`
        (RouterService.Invoke, idempotent under this execution's key).

        Returns:
            The agent's output.
        """
        await self.check(action, payload)
        key = self._ex().next_key()
        resp = await self.client.invoke(
            message={"selector": dict(selector), "payload": {"struct_value": dict(payload)}},
            action=action, idempotency_key=key, timeout_s=timeout_s,
        )
        self._record("invoke", key)
        return struct_to_dict(resp.output)

    async def run_saga(
        self, definition: Mapping[str, Any] | str, input: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Check the saga (operation type `saga:<name>`), start it, wait for it.

        Returns:
            The saga's output.

        Raises:
            SagaCompensated / SagaFailed / SagaCancelled: it did not complete.
        """
        name = definition if isinstance(definition, str) else str(definition.get("name", ""))
        await self.check(f"saga:{name or 'inline'}", input)
        source: dict[str, Any] = (
            {"definition_name": definition} if isinstance(definition, str)
            else {"definition": dict(definition)}
        )
        started = await self.client.start_saga(
            input=dict(input), idempotency_key=self._ex().next_key(), **source
        )
        self._record("saga", started.saga.saga_id)
        saga, runs = await wait_saga(
            self.client, started.saga.saga_id, timeout_s=self.wait_timeout_s
        )
        err = saga_error_for(saga, runs)
        if err is not None:
            raise err
        return struct_to_dict(saga.output)

    async def schedule_task(
        self, task_type: str, payload: Mapping[str, Any], **fields: Any,
    ) -> dict[str, Any]:
        """Check, schedule a durable task (TaskService) and wait for its result."""
        await self.check(task_type, payload)
        resp = await self.client.schedule_task(
            task_type=task_type, payload=dict(payload),
            idempotency_key=self._ex().next_key(), **fields,
        )
        self._record("task", resp.task.task_id)
        return await self.client.wait_task(resp.task.task_id, timeout_s=self.wait_timeout_s)

    async def deploy_swarm(self, task: swarm_pb2.SwarmTask) -> swarm_pb2.Swarm:
        """Check (`swarm:<objective>`), deploy a swarm and wait for its end."""
        await self.check(f"swarm:{task.objective or 'swarm'}",
                         {"agents_required": task.agents_required})
        sid = self._ex().next_key().replace("/", "-")
        self._record("swarm", sid)
        return await self.client.deploy_swarm(task, swarm_id=sid, wait=True,
                                              timeout_s=self.wait_timeout_s)

    async def publish(self, topic: str, payload: Any, **envelope: Any) -> str:
        """Check (`publish:<topic>`) and publish with this orchestrator as sender;
        returns the message id."""
        await self.check(f"publish:{topic}", payload if isinstance(payload, Mapping) else {})
        resp = await self.client.publish(message=make_envelope(payload, topic=topic, **envelope))
        self._record("bus", resp.id)
        return str(resp.id)

    async def propose(
        self, topic: str, data: Mapping[str, Any], *, voters: Sequence[str],
        required_approval_ratio: float, ttl_s: float = 60.0, announce_topic: str = "",
        poll_s: float = 0.05,
    ) -> coordination_pb2.Proposal:
        """Check (`propose:<topic>`), open a vote and wait until it is decided
        or expires (CoordinationService; the voters cast their own votes).

        Args:
            announce_topic: when set, `{"proposal_id", "topic", "data"}` is
                published there once the vote is open, so voter agents
                subscribed to it learn what to vote on.

        Returns:
            The proposal in its final state (ACHIEVED, REJECTED or EXPIRED).
        """
        await self.check(f"propose:{topic}", data)
        p = (await self.client.create_proposal(
            topic=topic, proposer=self.name, data=dict(data), voters=list(voters),
            required_approval_ratio=required_approval_ratio, ttl=timedelta(seconds=ttl_s),
        )).proposal
        self._record("proposal", p.proposal_id)
        if announce_topic:
            await self.publish(announce_topic, {
                "proposal_id": p.proposal_id, "topic": topic, "data": dict(data),
            }, key=p.proposal_id)
        deadline = time.monotonic() + ttl_s + self.client.default_timeout_s
        while p.state == coordination_pb2.PROPOSAL_STATE_OPEN:
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"proposal {p.proposal_id} still open after {ttl_s:g} s")
            await asyncio.sleep(poll_s)
            p = (await self.client.get_proposal(proposal_id=p.proposal_id)).proposal
        return p


__all__ = [
    "ExecutionMetrics", "Operation", "Orchestrator", "Result", "SafetyViolation",
    "canonical_json", "to_jsonable",
]
