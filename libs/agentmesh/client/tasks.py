"""What `Client.wait_task` raises when a task ends without a result:

    async with Client(saga="127.0.0.1:50054") as c:
        t = (await c.schedule_task(task_type="calculate", agent_id="carbon-1",
                                   payload={"spend_usd": 10.0}, priority="PRIORITY_HIGH")).task
        try:
            result = await c.wait_task(t.task_id)       # the agent's output, a dict
        except TaskFailed as e:
            print(e.task.error.code, e.task.error.message)
"""

from __future__ import annotations

from agentmesh.task.v1 import task_pb2

__all__ = ["TaskCancelled", "TaskEnded", "TaskFailed", "TaskTimedOut", "error_for"]


class TaskEnded(Exception):
    """A task reached a terminal state other than COMPLETED.

    Attributes:
        task: the task as it ended (`agentmesh.task.v1.Task`, with `error`).
    """

    def __init__(self, task: task_pb2.Task) -> None:
        state = task_pb2.TaskState.Name(task.state).removeprefix("TASK_STATE_")
        detail = f": {task.error.code} {task.error.message}" if task.error.code else ""
        super().__init__(f"task {task.task_id} ended {state}{detail}")
        self.task = task


class TaskFailed(TaskEnded):
    """The task is FAILED (a non-retryable error, or its retries ran out)."""


class TaskTimedOut(TaskEnded):
    """The task is TIMEOUT (its last attempt ran past `timeout`, or it never
    started within its schedule-to-start timeout)."""


class TaskCancelled(TaskEnded):
    """The task is CANCELLED."""


def error_for(task: task_pb2.Task) -> TaskEnded | None:
    """The exception for a terminal task without a result; None when COMPLETED
    or not terminal."""
    if task.state == task_pb2.TASK_STATE_FAILED:
        return TaskFailed(task)
    if task.state == task_pb2.TASK_STATE_TIMEOUT:
        return TaskTimedOut(task)
    if task.state == task_pb2.TASK_STATE_CANCELLED:
        return TaskCancelled(task)
    return None
