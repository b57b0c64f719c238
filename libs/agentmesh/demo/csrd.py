"""The five CSRD report agents and the saga that drives them.

The saga (`saga_definition`) is the CSRD/ESRS E1-6 disclosure of gross
Scope 3 category 1 emissions, one agent per step, each found by capability
through the router:

    collect ─► validate ─► calculate ─► generate (pivot) ─► publish

Effects. Every step before the pivot stages a file in
`<out>/csrd/staging/<saga_id>/<step>.json`; its compensation removes it, so a
compensated saga leaves its staging directory empty (the demo checks this).
`generate` writes the disclosure to `<out>/csrd/reports/<saga_id>.json` and
is the point of no return; `publish` puts it on the bus topic.

Failure injection. Every step fails with FAILED_PRECONDITION (not retried)
when the saga input's `fail_step` names it, which is how the demo shows the
compensation: with `fail_step="calculate"` the coordinator compensates
calculate, validate, collect in that order (BACKWARD strategy).

The saga id reaches an agent inside the idempotency key the coordinator sends,
`<saga_id>/<step>` (compensations append `/compensate`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmesh.agent import ActionContext, Agent
from agentmesh.client import Client
from agentmesh.demo.calculator import DatasetCache
from agentmesh.demo.data import naics_key
from agentmesh.runtime.errors import FailedPrecondition, InvalidArgument
from agentmesh.runtime.files import write_json_atomic
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2

STEPS = ("collect", "validate", "calculate", "generate", "publish")
PIVOT = "generate"
AGENT_TYPE = "csrd-step"
VERSION = "1.0.0"
DEFINITION_NAME = "csrd-e1-6-scope3-cat1"


def capability(step: str) -> str:
    """Capability of the agent that runs `step`, e.g. "csrd_collect"."""
    return f"csrd_{step}"


def agent_id(step: str) -> str:
    """Registry id of the agent that runs `step`."""
    return f"agent-csrd-{step}"


@dataclass(frozen=True)
class CsrdSettings:
    """What the CSRD agents need besides their own serving settings.

    Attributes:
        out_dir: the demo's output directory (absolute).
        swarm_target: swarm engine host:port (calculate reads the swarm result).
        bus_target: bus host:port (publish).
        topic: bus topic of published reports.
    """

    out_dir: Path
    swarm_target: str
    bus_target: str
    topic: str


def _saga_id(ctx: ActionContext) -> str:
    sid = ctx.idempotency_key.split("/", 1)[0]
    return sid or "adhoc"


def _maybe_fail(step: str, input: Mapping[str, Any]) -> None:
    if input.get("fail_step") == step:
        raise FailedPrecondition(f"injected failure at step {step!r} (fail_step={step!r})")


class _Staging:
    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir / "csrd" / "staging"

    def write(self, saga_id: str, step: str, doc: Mapping[str, Any]) -> str:
        path = write_json_atomic(self.root / saga_id / f"{step}.json", doc, indent=2,
                                 sort_keys=True)
        return str(path)

    def remove(self, saga_id: str, step: str) -> bool:
        path = self.root / saga_id / f"{step}.json"
        existed = path.exists()
        path.unlink(missing_ok=True)
        d = path.parent
        if d.exists() and not any(d.iterdir()):
            d.rmdir()
        return existed


def build_csrd_agents(
    cache: DatasetCache, settings: CsrdSettings, **agent_settings: Any
) -> list[Agent]:
    """The five step agents, one per step, each with capability `csrd_<step>`.

    Args:
        cache: the process-wide dataset cache (collect and validate read the file).
        settings: output directory and daemon targets.
        agent_settings: AgentSettings overrides for every agent.
    """
    staging = _Staging(settings.out_dir)
    table = cache.table
    client = Client(swarm=settings.swarm_target, bus=settings.bus_target, retry_attempts=3)

    def make(step: str) -> Agent:
        return Agent(
            agent_id(step), agent_type=AGENT_TYPE, version=VERSION,
            capabilities=[capability(step), "csrd_reporting"], service_types=["csrd"],
            tags=["demo"], **agent_settings,
        )

    collect, validate, calculate, generate, publish = (make(s) for s in STEPS)

    async def _dataset(input: Mapping[str, Any]) -> Any:
        path = input.get("suppliers_path")
        if not isinstance(path, str) or not path:
            raise InvalidArgument("suppliers_path is required",
                                  field_violations={"suppliers_path": "missing"})
        return await cache.get(path, str(input.get("suppliers_sha256") or ""))

    @collect.action("collect")
    async def do_collect(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        _maybe_fail("collect", input)
        ds = await _dataset(input)
        doc = {
            "suppliers_path": input["suppliers_path"], "sha256": ds.sha256,
            "records": len(ds.suppliers), "spend_usd": math.fsum(ds.suppliers.spend_usd.tolist()),
            "reporting_year": input.get("reporting_year"), "company": input.get("company"),
        }
        staged = staging.write(_saga_id(ctx), "collect", doc)
        return {"records": doc["records"], "spend_usd": doc["spend_usd"], "sha256": ds.sha256,
                "staged": staged}

    @collect.compensation("collect")
    async def undo_collect(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return {"removed": staging.remove(_saga_id(ctx), "collect")}

    @validate.action("validate")
    async def do_validate(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        _maybe_fail("validate", input)
        ds = await _dataset(input)
        sup = ds.suppliers
        unknown = int((table.index_of(sup.naics) < 0).sum())
        bad_spend = int((~(sup.spend_usd > 0)).sum())
        if unknown or bad_spend:
            raise FailedPrecondition(
                f"{unknown} record(s) with a NAICS code outside the factor table and "
                f"{bad_spend} with non-positive spend"
            )
        doc = {"valid_records": len(sup), "unknown_naics": unknown, "non_positive_spend": 0,
               "distinct_naics": len(set(sup.naics.tolist())), "factors_sha256": table.sha256}
        staged = staging.write(_saga_id(ctx), "validate", doc)
        return {**doc, "staged": staged}

    @validate.compensation("validate")
    async def undo_validate(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return {"removed": staging.remove(_saga_id(ctx), "validate")}

    @calculate.action("calculate")
    async def do_calculate(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        _maybe_fail("calculate", input)
        swarm_id = input.get("swarm_id")
        if not isinstance(swarm_id, str) or not swarm_id:
            raise InvalidArgument("swarm_id is required", field_violations={"swarm_id": "missing"})
        swarm = (await client.get_swarm(swarm_id=swarm_id)).swarm
        res = swarm.partitions
        if swarm.state != swarm_pb2.SWARM_STATE_COMPLETED or res.partitions_done != \
                res.partitions_total:
            raise FailedPrecondition(
                f"swarm {swarm_id} is {swarm_pb2.SwarmState.Name(swarm.state)} with "
                f"{res.partitions_done}/{res.partitions_total} partitions"
            )
        totals = dict(res.totals)
        by_code = sorted(
            ((k[len("naics_"):], v) for k, v in totals.items() if k.startswith("naics_")),
            key=lambda kv: (-kv[1], kv[0]),
        )
        doc = {
            "swarm_id": swarm_id, "total_kg_co2e": totals["kg_co2e"],
            "records": totals.get("records", 0.0), "partitions": res.partitions_done,
            "agents": len(res.partitions_by_agent),
            "top_naics": [
                {"naics_code": c, "title": table.title_of(c), "kg_co2e": v}
                for c, v in by_code[:10]
            ],
        }
        staged = staging.write(_saga_id(ctx), "calculate", doc)
        return {**doc, "staged": staged}

    @calculate.compensation("calculate")
    async def undo_calculate(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return {"removed": staging.remove(_saga_id(ctx), "calculate")}

    @generate.action("generate")
    async def do_generate(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        _maybe_fail("generate", input)
        sid = _saga_id(ctx)
        total_kg = float(input["total_kg_co2e"])
        disclosure = {
            "report_id": sid,
            "standard": "ESRS E1-6 (Gross Scopes 1, 2, 3 and total GHG emissions), para. 51",
            "company": input.get("company"),
            "reporting_year": input.get("reporting_year"),
            "scope3_category": "1 - Purchased goods and services",
            "method": "spend-based (GHG Protocol Scope 3 Technical Guidance, ch. 1)",
            "emission_factors": "US EPA Supply Chain GHG Emission Factors v1.2 (NAICS-6, "
                                "kg CO2e/2021 USD, with margins), doi:10.23719/1528686",
            "gross_scope3_cat1_t_co2e": total_kg / 1000.0,
            "gross_scope3_cat1_kg_co2e": total_kg,
            "suppliers": input.get("records"),
            "spend_usd": input.get("spend_usd"),
            "top_naics": input.get("top_naics", []),
            "generated_ms": int(time.time() * 1000),
        }
        path = settings.out_dir / "csrd" / "reports" / f"{sid}.json"
        write_json_atomic(path, disclosure, indent=2)
        return {"report_path": str(path), "report_id": sid,
                "gross_scope3_cat1_t_co2e": disclosure["gross_scope3_cat1_t_co2e"]}

    @publish.action("publish")
    async def do_publish(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        _maybe_fail("publish", input)
        report_id = str(input["report_id"])
        doc = json.loads(await asyncio.to_thread(Path(str(input["report_path"])).read_text))
        resp = await client.publish(
            message={
                "id": f"csrd-report-{report_id}",  # the bus dedupes a retried publish by id
                "topic": settings.topic, "key": report_id,
                "payload": {"struct_value": doc},
                "headers": {"schema": "esrs-e1-6/scope3-cat1"},
            },
        )
        return {"message_id": resp.id, "topic": settings.topic,
                "partition": resp.position.partition, "offset": resp.position.offset,
                "chain_id": resp.provenance.chain_id, "chain_hash": resp.provenance.hash}

    return [collect, validate, calculate, generate, publish]


def saga_definition(*, step_timeout_s: float = 60.0) -> saga_pb2.SagaDefinition:
    """The 5-step CSRD saga: BACKWARD compensation, `generate` is the pivot."""
    d = saga_pb2.SagaDefinition(
        name=DEFINITION_NAME,
        description="CSRD ESRS E1-6 Scope 3 category 1 disclosure: collect, validate, "
                    "calculate, generate (pivot), publish",
        compensation_strategy=saga_pb2.COMPENSATION_STRATEGY_BACKWARD,
    )
    d.default_step_timeout.FromNanoseconds(int(step_timeout_s * 1e9))
    d.timeout.FromNanoseconds(int(step_timeout_s * 5 * 1e9))
    d.default_retry_policy.max_attempts = 3
    d.default_retry_policy.initial_backoff.FromMilliseconds(100)
    mappings: dict[str, dict[str, str]] = {
        "generate": {
            "company": "input.company",
            "reporting_year": "input.reporting_year",
            "fail_step": "input.fail_step",
            "records": "steps.collect.records",
            "spend_usd": "steps.collect.spend_usd",
            "total_kg_co2e": "steps.calculate.total_kg_co2e",
            "top_naics": "steps.calculate.top_naics",
        },
        "publish": {
            "fail_step": "input.fail_step",
            "report_id": "steps.generate.report_id",
            "report_path": "steps.generate.report_path",
        },
    }
    prev = ""
    for step in STEPS:
        s = d.steps.add(name=step, action=step)
        s.selector.capabilities.append(capability(step))
        if step != PIVOT and step != "publish":
            s.compensation_action = step
        s.is_pivot = step == PIVOT
        if prev:
            s.depends_on.append(prev)
        for k, v in mappings.get(step, {}).items():
            s.input_mapping[k] = v
        prev = step
    return d


def expected_failure_outcome(fail_step: str) -> tuple[str, list[str]]:
    """(final saga state, compensation order) when `fail_step` fails for good.

    Before or at the pivot, every attempted step with a compensation is undone
    in reverse order (BACKWARD): failing at calculate gives COMPENSATED with
    calculate, validate, collect (calculate's own attempt is compensated too,
    since a failed attempt may have taken effect). After the pivot nothing is
    compensated; a non-retryable failure leaves the saga FAILED for a human.
    """
    i = STEPS.index(fail_step)
    if i > STEPS.index(PIVOT):
        return "FAILED", []
    return "COMPENSATED", [s for s in reversed(STEPS[: i + 1]) if s not in (PIVOT, "publish")]


def top_from_totals(totals: Mapping[str, float], n: int = 10) -> list[tuple[str, float]]:
    """The `n` largest per-commodity totals `[(code, kg)]`, ties by code."""
    by_code = [(k[len("naics_"):], v) for k, v in totals.items() if k.startswith("naics_")]
    by_code.sort(key=lambda kv: (-kv[1], kv[0]))
    return by_code[:n]


__all__ = [
    "PIVOT",
    "STEPS",
    "CsrdSettings",
    "agent_id",
    "build_csrd_agents",
    "capability",
    "expected_failure_outcome",
    "naics_key",
    "saga_definition",
    "top_from_totals",
]
