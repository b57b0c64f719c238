"""The mesh's one priority scheme, shared by the bus backlog and the task queues.

`common.v1.Priority` maps to four classes, CRITICAL first. Queues serve them by
smooth weighted round robin with weights 8/4/2/1 (nginx's SWRR,
https://github.com/phusion/nginx/commit/27e94984486058d73157038f7950a0a36ecc6e35),
so higher classes go first but LOW is never starved: under a full backlog it
still gets 1 turn in 15.
"""

from __future__ import annotations

from agentmesh.common.v1 import common_pb2

#: Class weights, CRITICAL first; index = class number.
WEIGHTS = (8, 4, 2, 1)
#: Number of priority classes.
CLASSES = len(WEIGHTS)


def priority_class(priority: int) -> int:
    """Priority enum value -> class index 0 (CRITICAL) .. 3 (LOW); unset is NORMAL (2)."""
    if priority == common_pb2.PRIORITY_CRITICAL:
        return 0
    if priority == common_pb2.PRIORITY_HIGH:
        return 1
    if priority == common_pb2.PRIORITY_LOW:
        return 3
    return 2
