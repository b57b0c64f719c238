"""Which agent runs a task: the load-balancing strategies over the eligible
agents that have free capacity (pure; the scheduler reads the inputs).

The strategies order the agents; the scheduler takes a capacity slot on the
first one that still has room (another replica may have taken the last slot
since the counts were read), so the order is all a strategy decides.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.routing.candidates import Candidate
from agentmesh.runtime.routing.strategies import Picker
from agentmesh.task.v1 import task_pb2

B = task_pb2.BalanceStrategy


@dataclass(slots=True)
class Option:
    """One eligible agent as placement sees it.

    Attributes:
        candidate: the routing engine's view (endpoint, health, reported load).
        running: capacity slots held on it now (tasks of every replica).
        capacity: tasks it runs at once; 0 = unlimited.
        capabilities / tags: from its registered descriptor (empty when unknown).
    """

    candidate: Candidate
    running: int
    capacity: int
    capabilities: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    @property
    def free(self) -> bool:
        """Whether it has a free slot."""
        return self.capacity <= 0 or self.running < self.capacity

    @property
    def utilisation(self) -> float:
        """Running tasks over capacity (running / 1000 when unlimited)."""
        return self.running / self.capacity if self.capacity > 0 else self.running / 1000.0


def parse_strategy_map(spec: str) -> dict[str, int]:
    """`type=STRATEGY,...` ("*" for other types) -> {type: BalanceStrategy value}.

    Strategy names may drop the BALANCE_STRATEGY_ prefix.

    Raises:
        ValueError: a malformed entry or an unknown strategy.
    """
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, strat = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{part!r} is not type=STRATEGY")
        s = strat.strip().upper()
        full = s if s.startswith("BALANCE_STRATEGY_") else "BALANCE_STRATEGY_" + s
        if full not in B.keys() or full == "BALANCE_STRATEGY_UNSPECIFIED":
            raise ValueError(f"unknown strategy {strat!r} for {name.strip()!r}")
        out[name.strip()] = B.Value(full)
    return out


def strategy_for(task: task_pb2.Task, defaults: dict[str, int]) -> int:
    """The task's strategy: its own, else its type's default, else "*", else LEAST_LOADED."""
    if task.strategy != B.BALANCE_STRATEGY_UNSPECIFIED:
        return task.strategy
    return defaults.get(task.task_type, defaults.get("*", B.BALANCE_STRATEGY_LEAST_LOADED))


def _least_loaded_key(picker: Picker, o: Option) -> tuple[float, float, str]:
    return (o.utilisation, picker.load_factor(o.candidate), o.candidate.agent_id)


def match_score(o: Option, selector: common_pb2.AgentSelector) -> float:
    """Jaccard similarity of what the task asks for (capabilities and tags)
    with what the agent has: 1.0 for an exact match, lower for agents with
    more besides (a specialist beats a generalist)."""
    want = {"c:" + c for c in selector.capabilities} | {"t:" + t for t in selector.tags}
    have = {"c:" + c for c in o.capabilities} | {"t:" + t for t in o.tags}
    if not want and not have:
        return 1.0
    union = want | have
    return len(want & have) / len(union) if union else 0.0


def order(
    strategy: int,
    options: Sequence[Option],
    *,
    task: task_pb2.Task,
    picker: Picker,
    pool_key: str,
    rng: random.Random,
    rotation: dict[str, int],
) -> list[Option]:
    """The free agents in the order the strategy prefers them.

    Args:
        strategy: a BalanceStrategy value (not UNSPECIFIED).
        options: the eligible agents.
        task: the task being placed (priority, selector).
        picker: the routing engine's picker (round-robin counters, load factor).
        pool_key: the pool's key, for the round-robin counter.
        rng: random source for RANDOM.
        rotation: ROUND_ROBIN counters per pool (the caller keeps them).
    """
    free = [o for o in options if o.free]
    if len(free) <= 1:
        return free
    if strategy == B.BALANCE_STRATEGY_ROUND_ROBIN:
        free.sort(key=lambda o: o.candidate.agent_id)
        i = rotation.get(pool_key, 0)
        rotation[pool_key] = i + 1
        k = i % len(free)
        return free[k:] + free[:k]
    if strategy == B.BALANCE_STRATEGY_RANDOM:
        rng.shuffle(free)
        return free
    if strategy == B.BALANCE_STRATEGY_CAPABILITY_MATCH:
        by_sel = task.WhichOneof("target") == "selector"
        sel = task.selector if by_sel else common_pb2.AgentSelector()
        return sorted(free, key=lambda o: (-match_score(o, sel), *_least_loaded_key(picker, o)))
    by_load = sorted(free, key=lambda o: _least_loaded_key(picker, o))
    if strategy == B.BALANCE_STRATEGY_PRIORITY_WEIGHTED and task.priority in (
        common_pb2.PRIORITY_CRITICAL,
        common_pb2.PRIORITY_HIGH,
    ):
        ranked = sorted(free, key=lambda o: (-o.candidate.health, o.candidate.agent_id))
        cut = ranked[max(1, math.ceil(len(ranked) / 4)) - 1].candidate.health
        top = [o for o in by_load if o.candidate.health >= cut]
        return top + [o for o in by_load if o.candidate.health < cut]
    return by_load
