"""TaskStore.commit refuses every transition task.proto does not list, before
it sends anything to Redis (the client here points at a closed port, so a
refused transition that reached Redis would fail with a connection error)."""

from __future__ import annotations

import itertools

import pytest
import redis.asyncio as aioredis

from agentmesh.runtime.lease import Lease, LeaseKeys
from agentmesh.server.saga.tasks.store import TERMINAL, TRANSITIONS, TaskStore
from agentmesh.task.v1 import task_pb2

T = task_pb2
STATES = [v for v in T.TaskState.values() if v != T.TASK_STATE_UNSPECIFIED]


def _name(v: int) -> str:
    return T.TaskState.Name(T.TaskState.ValueType(v)).removeprefix("TASK_STATE_")


def test_the_table_is_the_one_in_task_proto() -> None:
    got = {_name(a): sorted(_name(b) for b in bs) for a, bs in TRANSITIONS.items()}
    assert got == {
        "PENDING": ["CANCELLED", "SCHEDULED", "TIMEOUT"],
        "SCHEDULED": ["CANCELLED", "RETRYING", "RUNNING"],
        "RUNNING": ["CANCELLED", "COMPLETED", "FAILED", "RETRYING", "TIMEOUT"],
        "RETRYING": ["CANCELLED", "SCHEDULED", "TIMEOUT"],
    }
    assert not set(TRANSITIONS) & TERMINAL  # nothing leaves a terminal state


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("src", "dst"),
    [(a, b) for a, b in itertools.product(STATES, STATES) if b not in TRANSITIONS.get(a, ())],
)
async def test_commit_refuses_a_transition_not_in_the_table(
    src: task_pb2.TaskState.ValueType, dst: task_pb2.TaskState.ValueType
) -> None:
    store = TaskStore(aioredis.Redis(host="127.0.0.1", port=1))
    task = T.Task(task_id="t-x", state=src, revision=7)
    lease = Lease(LeaseKeys.for_name("am:task:", "t-x"), "me", 1)
    with pytest.raises(ValueError, match="is not allowed"):
        await store.commit(lease, task, dst)
    assert (task.state, task.revision) == (src, 7)  # untouched
