"""The demo's calls to the mesh: discovery, swarm, cross-check, sagas, bus.

Each function takes an `agentmesh.Client` connected to the demo's daemons and
returns a JSON-ready dict for report.json. None of them start or stop
processes; `agentmesh.demo.runner` does that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from agentmesh.client import Client
from agentmesh.common.v1 import common_pb2
from agentmesh.demo.calculator import ACTION, CAPABILITY
from agentmesh.demo.data import Suppliers, partition_bounds, summarize
from agentmesh.router.v1 import router_pb2
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2

Progress = Callable[[int, int], None]

_FINAL_SWARM = {
    swarm_pb2.SWARM_STATE_COMPLETED,
    swarm_pb2.SWARM_STATE_FAILED,
    swarm_pb2.SWARM_STATE_STOPPED,
}
_FINAL_SAGA = {
    saga_pb2.SAGA_STATE_COMPLETED,
    saga_pb2.SAGA_STATE_COMPENSATED,
    saga_pb2.SAGA_STATE_FAILED,
    saga_pb2.SAGA_STATE_CANCELLED,
}


class ScenarioError(RuntimeError):
    """A step of the scenario did not reach the expected outcome."""


def _short(enum_name: str, prefix: str) -> str:
    return enum_name[len(prefix):] if enum_name.startswith(prefix) else enum_name


# ---- discovery ----------------------------------------------------------------------
async def discover_calculators(
    client: Client, *, expected: int, timeout_s: float, on_progress: Progress | None = None
) -> dict[str, Any]:
    """Wait until RegistryService.DiscoverAgents finds `expected` calculators.

    Returns:
        {"capability", "found", "expected", "agent_ids", "duration_ms", "calls"}.

    Raises:
        ScenarioError: when fewer are found within `timeout_s`.
    """
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    calls = 0
    while True:
        resp = await client.discover_agents(
            selector={"capabilities": [CAPABILITY], "min_health_score": 0.0}, max_results=0
        )
        calls += 1
        ids = sorted(a.agent_id for a in resp.agents)
        if on_progress is not None:
            on_progress(len(ids), expected)
        if len(ids) >= expected:
            return {
                "capability": CAPABILITY, "found": len(ids), "expected": expected,
                "agent_ids": ids, "duration_ms": (time.perf_counter() - t0) * 1e3,
                "calls": calls,
            }
        if time.monotonic() > deadline:
            raise ScenarioError(
                f"discovery found {len(ids)} of {expected} calculators after {timeout_s:.0f}s"
            )
        await asyncio.sleep(0.2)


# ---- swarm ----------------------------------------------------------------------------
def swarm_task(
    *, suppliers_path: Path, sha256: str, partitions: int, agents_required: int, seed: int,
    timeout_s: float,
) -> swarm_pb2.SwarmTask:
    """The partition-work task: `partitions` slices of suppliers.csv by reference."""
    task = swarm_pb2.SwarmTask(
        objective="Scope 3 category 1, spend-based, EPA USEEIO v1.2 factors",
        behavior=swarm_pb2.BEHAVIOR_FORAGING,
        agents_required=agents_required,
        data_partitions=partitions,
        seed=seed,
    )
    task.timeout.FromNanoseconds(int(timeout_s * 1e9))
    work = task.partition_work
    work.selector.CopyFrom(common_pb2.AgentSelector(capabilities=[CAPABILITY]))
    work.action = ACTION
    work.input.update({"suppliers_path": str(suppliers_path), "suppliers_sha256": sha256})
    work.partition_timeout.FromSeconds(30)
    work.max_attempts = 5
    work.max_in_flight_per_agent = 1
    return task


async def run_swarm(
    client: Client, task: swarm_pb2.SwarmTask, *, swarm_id: str, timeout_s: float,
    on_progress: Progress | None = None,
) -> swarm_pb2.Swarm:
    """Deploy the swarm and poll it to a final state.

    Raises:
        ScenarioError: when it does not complete.
    """
    sid = (await client.deploy_swarm(task, swarm_id=swarm_id)).swarm_id
    deadline = time.monotonic() + timeout_s
    while True:
        swarm = (await client.get_swarm(swarm_id=sid)).swarm
        if on_progress is not None:
            on_progress(swarm.stats.partitions_done, task.data_partitions)
        if swarm.state in _FINAL_SWARM:
            break
        if time.monotonic() > deadline:
            raise ScenarioError(f"swarm {sid} not done after {timeout_s:.0f}s")
        await asyncio.sleep(0.25)
    if swarm.state != swarm_pb2.SWARM_STATE_COMPLETED:
        raise ScenarioError(
            f"swarm {sid} ended {swarm_pb2.SwarmState.Name(swarm.state)}: {swarm.error_message}"
        )
    return swarm


def swarm_summary(swarm: swarm_pb2.Swarm) -> dict[str, Any]:
    """report.json section of a completed partition swarm."""
    res = swarm.partitions
    counts = dict(sorted(res.partitions_by_agent.items()))
    vals = np.array(list(counts.values()) or [0], dtype=np.float64)
    t0 = swarm.start_time.ToNanoseconds() / 1e9
    t1 = swarm.end_time.ToNanoseconds() / 1e9
    return {
        "swarm_id": swarm.swarm_id,
        "state": _short(swarm_pb2.SwarmState.Name(swarm.state), "SWARM_STATE_"),
        "termination": _short(swarm_pb2.Termination.Name(swarm.termination), "TERMINATION_"),
        "behavior": "FORAGING",
        "partitions_total": res.partitions_total,
        "partitions_done": res.partitions_done,
        "reassignments": res.reassignments,
        "agents_used": len(counts),
        "partitions_by_agent": counts,
        "spread": {
            "min": int(vals.min()), "max": int(vals.max()), "mean": float(vals.mean()),
            "stdev": float(vals.std()),
        },
        "duration_s": max(0.0, t1 - t0) if t0 and t1 else None,
        "throughput_partitions_per_s": swarm.stats.throughput_per_second,
        "evaluations": swarm.stats.evaluations,
    }


# ---- router cross-check -------------------------------------------------------------
async def cross_check(
    client: Client, *, suppliers: Suppliers, kg: np.ndarray, partitions: int,
    agent_ids: Sequence[str], samples: int, per_sample: int, rng: np.random.Generator,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Send sampled partitions, records inline, to several calculators at once
    through RouterService.ScatterGather (MAJORITY_VOTE on `kg_co2e`), and
    compare the winner with the demo's own computation of that partition.

    Returns:
        {"samples", "agents_per_sample", "unanimous", "matches_direct", "checks": [...]}.
    """
    chosen = sorted(rng.choice(partitions, size=min(samples, partitions), replace=False).tolist())
    k = min(per_sample, len(agent_ids))
    sem = asyncio.Semaphore(4)
    done = 0

    async def one(p: int) -> dict[str, Any]:
        nonlocal done
        a, b = partition_bounds(len(suppliers), p, partitions)
        records = [
            {"naics_code": f"{c:06d}", "spend_usd": s}
            for c, s in zip(suppliers.naics[a:b].tolist(), suppliers.spend_usd[a:b].tolist(),
                            strict=True)
        ]
        expected = summarize(kg[a:b], suppliers.naics[a:b], suppliers.spend_usd[a:b])["kg_co2e"]
        targets = sorted(rng.choice(len(agent_ids), size=k, replace=False).tolist())
        target_ids = [agent_ids[i] for i in targets]
        req = router_pb2.ScatterGatherRequest(
            action=ACTION, target_ids=target_ids,
            aggregation=router_pb2.AGGREGATION_MAJORITY_VOTE, field_path="kg_co2e",
            min_responses=k,
        )
        req.message.message_type = ACTION
        req.message.payload.struct_value.update({"records": records})
        req.timeout.FromSeconds(30)
        async with sem:
            resp = await client.scatter_gather(req, timeout_s=40)
        result = json_format.MessageToDict(resp.result)
        winner = result.get("value")
        done += 1
        if on_progress is not None:
            on_progress(done, len(chosen))
        return {
            "partition": p, "records": b - a, "agents": target_ids,
            "succeeded": resp.succeeded, "failed": resp.failed,
            "winner_kg_co2e": winner, "votes": resp.vote.winner_votes,
            "unanimous": resp.vote.winner_votes == k and resp.succeeded == k,
            "direct_kg_co2e": expected,
            "matches_direct": isinstance(winner, float | int) and float(winner) == expected,
        }

    checks = await asyncio.gather(*(one(p) for p in chosen))
    return {
        "method": "RouterService.ScatterGather, AGGREGATION_MAJORITY_VOTE on kg_co2e, "
                  "records inline",
        "samples": len(checks), "agents_per_sample": k,
        "unanimous": sum(c["unanimous"] for c in checks),
        "matches_direct": sum(c["matches_direct"] for c in checks),
        "distinct_agents": len({a for c in checks for a in c["agents"]}),
        "checks": list(checks),
    }


# ---- sagas -----------------------------------------------------------------------------
async def run_saga(
    client: Client, definition: saga_pb2.SagaDefinition, saga_input: dict[str, Any], *,
    idempotency_key: str, out_dir: Path, timeout_s: float,
) -> dict[str, Any]:
    """Start one saga, wait for its final state, and summarise its event log.

    Returns:
        {"saga_id", "state", "steps": [...], "compensation_order", "events": [...],
         "duration_ms", "staging_left": [...], "error"}.
    """
    t0 = time.perf_counter()
    started = await client.start_saga(
        definition=definition, input=saga_input, idempotency_key=idempotency_key
    )
    sid = started.saga.saga_id
    deadline = time.monotonic() + timeout_s
    while True:
        saga = (await client.get_saga(saga_id=sid)).saga
        if saga.state in _FINAL_SAGA:
            break
        if time.monotonic() > deadline:
            raise ScenarioError(f"saga {sid} not final after {timeout_s:.0f}s")
        await asyncio.sleep(0.1)
    duration_ms = (time.perf_counter() - t0) * 1e3
    events: list[saga_pb2.SagaEvent] = []
    token = ""
    while True:
        page = await client.get_saga_events(saga_id=sid, page_size=1000, page_token=token)
        events.extend(page.events)
        token = page.next_page_token
        if not token or not page.events:
            break
    ev_rows = [
        {
            "sequence": e.sequence,
            "type": _short(saga_pb2.SagaEventType.Name(e.type), "SAGA_EVENT_TYPE_"),
            "step": e.step_name,
            **({"error": f"{e.error.code}: {e.error.message}"} if e.error.code else {}),
        }
        for e in events
    ]
    staging = out_dir / "csrd" / "staging" / sid
    return {
        "saga_id": sid,
        "state": _short(saga_pb2.SagaState.Name(saga.state), "SAGA_STATE_"),
        "steps": [
            {"name": s.name,
             "status": _short(saga_pb2.StepStatus.Name(s.status), "STEP_STATUS_"),
             "attempts": s.attempts, "compensation_attempts": s.compensation_attempts}
            for s in saga.steps
        ],
        "compensation_order": [
            e.step_name for e in events
            if e.type == saga_pb2.SAGA_EVENT_TYPE_STEP_COMPENSATED
        ],
        "error": f"{saga.error.code}: {saga.error.message}" if saga.error.code else "",
        "events": ev_rows,
        "output": json_format.MessageToDict(saga.output),
        "staging_left": sorted(p.name for p in staging.glob("*.json")) if staging.exists()
        else [],
        "duration_ms": duration_ms,
    }


# ---- bus --------------------------------------------------------------------------------
async def verify_bus(client: Client, *, topic: str, partition: int) -> dict[str, Any]:
    """VerifyChain over the whole partition the report was published to."""
    resp = await client.verify_chain(topic=topic, partition=partition, start_offset=0)
    return {
        "topic": topic, "partition": partition, "chain_valid": resp.valid,
        "records_checked": resp.records_checked, "chain_ids": list(resp.chain_ids),
    }
