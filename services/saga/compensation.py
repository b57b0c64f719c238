"""Which steps a saga compensates and in which order (see CompensationStrategy
in saga.proto for the exact definitions). Pure functions over a folded record.
"""

from __future__ import annotations

from agentmesh.saga.v1 import saga_pb2
from agentmesh.server.saga.definition import CompiledDefinition
from agentmesh.server.saga.state import CompStatus, SagaRecord, StepRecord

SERIAL_REVERSE = (
    saga_pb2.COMPENSATION_STRATEGY_BACKWARD,
    saga_pb2.COMPENSATION_STRATEGY_SELECTIVE,
)


def done_steps(rec: SagaRecord, comp: CompiledDefinition) -> list[str]:
    """Steps to compensate, in finish order.

    "Done" = attempted (at least one STEP_STARTED) and not skipped, with a
    compensation action; SELECTIVE keeps only those that did not complete.
    """
    out: list[tuple[int, str]] = []
    for spec in comp.steps:
        st = rec.steps[spec.name]
        if not spec.compensable or st.status == saga_pb2.STEP_STATUS_SKIPPED or not st.attempted:
            continue
        if comp.strategy == saga_pb2.COMPENSATION_STRATEGY_SELECTIVE and st.output is not None:
            continue
        out.append((st.finish_seq or 1 << 62, spec.name))
    out.sort()
    return [n for _, n in out]


def unit_done(st: StepRecord) -> bool:
    """True when every attempted call site of the step has been compensated."""
    return all(i.comp == CompStatus.COMPENSATED for i in st.invocations.values() if i.attempted)


def unit_failed(st: StepRecord) -> bool:
    """True when a compensation of the step failed for good."""
    return any(i.comp == CompStatus.FAILED for i in st.invocations.values())


def ready_units(rec: SagaRecord, comp: CompiledDefinition) -> tuple[list[str], bool]:
    """Steps whose compensation may run now, and whether every unit is done.

    Returns:
        (ready step names, all compensated).
    """
    units = done_steps(rec, comp)
    pending = [u for u in units if not unit_done(rec.steps[u])]
    if not pending:
        return [], True
    s = comp.strategy
    if s in SERIAL_REVERSE:
        return [pending[-1]], False
    if s == saga_pb2.COMPENSATION_STRATEGY_FORWARD:
        return [pending[0]], False
    if s == saga_pb2.COMPENSATION_STRATEGY_PARALLEL:
        return pending, False
    # CASCADE: wait for every done descendant.
    pend = set(pending)
    return [u for u in pending if not (comp.descendants[u] & pend)], False
