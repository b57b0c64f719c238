"""Talk to a running stack with the async client (`agentmesh up` first, and
`python examples/carbon_calculator_agent.py` for the calls and sagas).

    python examples/client_quickstart.py

Health of every daemon, discovery, one routed call, a lock held while a block
runs (`client.lock`), and a two-step saga started and awaited
(`client.run_saga`): once with good input (its output), once with a second
step that fails (`SagaCompensated` names the step and the compensations run).
"""

from __future__ import annotations

import asyncio

from agentmesh import Client
from agentmesh.agent.structs import struct_to_dict
from agentmesh.client import SagaCompensated
from agentmesh.runtime.errors import AgentMeshError

CALCULATORS = {"capabilities": ["carbon_calculation"]}

#: Two steps on any carbon calculator: this year's spend, then the audited spend.
REPORT_SAGA = {
    "name": "quickstart-report",
    "steps": [
        {"name": "current", "selector": CALCULATORS, "action": "calculate",
         "compensation_action": "calculate",
         "input_mapping": {"spend_usd": "input.spend_usd", "factor": "input.factor"}},
        {"name": "audit", "selector": CALCULATORS, "action": "calculate",
         "compensation_action": "calculate", "depends_on": ["current"],
         "input_mapping": {"spend_usd": "input.audited_spend_usd", "factor": "input.factor"}},
    ],
}


async def main() -> None:
    async with Client() as c:  # default ports, or AGENTMESH_<DAEMON>_TARGET
        for daemon in ("bus", "router", "registry", "saga", "swarm"):
            print(f"{daemon:9} {await c.health(daemon)}")
        calculators = await c.discover(capabilities=["carbon_calculation"])
        print(f"{len(calculators)} carbon calculators")
        if not calculators:
            return
        resp = await c.invoke(
            message={
                "selector": {"capabilities": ["carbon_calculation"]},
                "payload": {"struct_value": {"spend_usd": 1000.0, "factor": 0.35}},
            },
            action="calculate",
            idempotency_key="quickstart-1",
            timeout_s=5,
        )
        print(resp.agent_id, struct_to_dict(resp.output), "deduplicated:", resp.deduplicated)
        try:
            await c.get_agent(agent_id="agent-does-not-exist")
        except AgentMeshError as e:
            print(f"{type(e).__name__}: {e.message}")

        # One holder at a time across every process; renewed in the background.
        # Writes it guards carry the fencing token; LockLost ends the block if
        # the lease is lost.
        async with c.lock("quickstart/report-2024", ttl_ms=5_000, wait_timeout_s=10) as lease:
            print(f"lock held, fencing token {lease.fencing_token}")

        out = await c.run_saga(
            REPORT_SAGA, {"spend_usd": 1000.0, "audited_spend_usd": 900.0, "factor": 0.35},
            timeout_s=60,
        )
        print("saga output:", {step: o["kg_co2e"] for step, o in sorted(out.items())})
        try:
            await c.run_saga(
                REPORT_SAGA, {"spend_usd": 1000.0, "audited_spend_usd": -1.0, "factor": 0.35},
                timeout_s=60,
            )
        except SagaCompensated as e:
            print(f"saga compensated: step {e.step!r} failed ({e.error.code}); "
                  f"compensations run: {[r.step for r in e.compensations]}")


if __name__ == "__main__":
    asyncio.run(main())
