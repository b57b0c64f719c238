"""GL-001, the seeds' process-heat orchestrator, on `agentmesh.agent.Orchestrator`.

    python examples/process_heat_orchestrator.py --registry 127.0.0.1:50053 \\
        --router 127.0.0.1:50052 --bus 127.0.0.1:50051 --saga 127.0.0.1:50054 \\
        --redis-url redis://127.0.0.1:6379/0 --target-c 520

One execution: read every zone's temperature from its sensor agent (router
Invoke), compute the furnace set-point that moves the mean toward the target,
check it against a THRESHOLD constraint (set_setpoint.setpoint_c <= 600,
CRITICAL; the same rule guards the saga's call to the furnace), put the change
to the operators' vote (2 of 3 must approve; the operators are agents that
learn of the vote on the bus), and make the change in a saga (set the
set-point, verify it; a failed verification restores the old one). It prints
the Result as one JSON line: success, output, error, provenance hash and the
mesh operations it made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from agentmesh.agent import Agent
from agentmesh.agent.bus import MessageContext
from agentmesh.agent.context import ActionContext
from agentmesh.agent.orchestrator import Orchestrator
from agentmesh.client import Client
from agentmesh.registry.v1 import coordination_pb2 as C
from agentmesh.runtime.errors import AlreadyExists, FailedPrecondition

MAX_SETPOINT_C = 600.0
#: Proportional gain of the set-point correction (degrees per degree of error).
GAIN = 1.5
#: Where votes are announced; one topic per plant (here per run of the example).
ANNOUNCE_PREFIX = "heat.proposals."


@dataclass(frozen=True)
class HeatInput:
    """Zones to read, where the mean should go, the furnace's current set-point."""

    zones: tuple[str, ...]
    target_c: float
    current_setpoint_c: float


@dataclass(frozen=True)
class HeatOutput:
    """What the execution decided and did."""

    mean_temperature_c: float
    setpoint_c: float
    votes_for: int
    applied: dict[str, Any]


class ProcessHeatOrchestrator(Orchestrator[HeatInput, HeatOutput]):
    """Reads zones, checks, votes and applies a set-point change (see the module)."""

    def __init__(
        self, client: Client, *, furnace_id: str, operators: list[str], announce_topic: str
    ) -> None:
        super().__init__(client, name="gl-001-process-heat", wait_timeout_s=60)
        self.furnace_id = furnace_id
        self.operators = operators
        self.announce_topic = announce_topic

    async def setup(self) -> None:
        """The industrial limit, stored as a mesh safety rule (CEL), shared by
        every call the mesh makes with operation/action `set_setpoint`; kept
        when an earlier start stored it."""
        with contextlib.suppress(AlreadyExists):
            await self.client.create_constraint(constraint={
                "name": "gl001-max-setpoint", "kind": "CONSTRAINT_KIND_THRESHOLD",
                "field": "setpoint_c", "max": MAX_SETPOINT_C, "required": True,
                "level": "SAFETY_LEVEL_CRITICAL", "message_types": ["set_setpoint"],
                "description": f"furnace set-point at most {MAX_SETPOINT_C:g} C",
            })

    async def run(self, input: HeatInput) -> HeatOutput:
        readings = [
            await self.invoke("read_temperature", {"zone": z},
                              selector={"capabilities": [f"heat_zone_{z}"]})
            for z in input.zones
        ]
        mean = sum(r["temperature_c"] for r in readings) / len(readings)
        setpoint = round(input.current_setpoint_c + GAIN * (input.target_c - mean), 1)
        await self.check("set_setpoint", {"setpoint_c": setpoint}, agent_id=self.furnace_id)
        vote = await self.propose(
            "heat.setpoint", {"setpoint_c": setpoint, "current_c": input.current_setpoint_c},
            voters=self.operators, required_approval_ratio=2 / 3, ttl_s=20,
            announce_topic=self.announce_topic,
        )
        if vote.state != C.PROPOSAL_STATE_ACHIEVED:
            raise FailedPrecondition(
                f"operators did not approve {setpoint} C: {C.ProposalState.Name(vote.state)}")
        applied = await self.run_saga({
            "name": "gl001-setpoint-change",
            "steps": [
                {"name": "set", "agent_id": self.furnace_id, "action": "set_setpoint",
                 "compensation_action": "restore_setpoint"},
                {"name": "verify", "agent_id": self.furnace_id, "action": "verify_setpoint",
                 "depends_on": ["set"]},
            ],
        }, {"setpoint_c": setpoint, "previous_c": input.current_setpoint_c})
        return HeatOutput(mean_temperature_c=round(mean, 3), setpoint_c=setpoint,
                          votes_for=vote.approvals, applied=applied)


def fleet(
    args: argparse.Namespace, zones: dict[str, float], run: str
) -> tuple[list[Agent], str, list[str]]:
    """The sensor, furnace and operator agents (in this process, for the example)."""
    common = {"registry_target": args.registry, "bus_target": args.bus,
              "redis_url": args.redis_url, "heartbeat_interval_s": 1.0}
    agents: list[Agent] = []
    for zone, temp in zones.items():
        sensor = Agent(f"agent-heat-sensor-{zone}-{run}", agent_type="heat-sensor",
                       version="1.0.0", capabilities=[f"heat_zone_{zone}"], **common)

        @sensor.action("read_temperature")
        async def read(inp: dict[str, Any], ctx: ActionContext, t: float = temp) -> dict[str, Any]:
            return {"zone": inp["zone"], "temperature_c": t}

        agents.append(sensor)
    furnace = Agent(f"agent-heat-furnace-{run}", agent_type="heat-furnace", version="1.0.0",
                    capabilities=["furnace"], **common)
    state = {"setpoint_c": 0.0}

    @furnace.action("set_setpoint")
    async def set_sp(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        state["setpoint_c"] = float(inp["setpoint_c"])
        return {"setpoint_c": state["setpoint_c"]}

    @furnace.compensation("set_setpoint")
    async def restore(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        state["setpoint_c"] = float(inp["previous_c"])
        return {"setpoint_c": state["setpoint_c"]}

    @furnace.action("verify_setpoint")
    async def verify(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return {"verified": state["setpoint_c"] == float(inp["setpoint_c"])}

    agents.append(furnace)
    operators = []
    max_step = float(args.max_step_c)
    for i in range(3):
        # One agent type (so one consumer group) each: every operator sees every vote.
        op = Agent(f"agent-heat-operator-{i}-{run}", agent_type=f"heat-operator-{run}-{i}",
                   version="1.0.0", **common)

        # Earliest: a vote announced before this subscription is open still arrives.
        @op.on_message(ANNOUNCE_PREFIX + run, start_position="earliest")
        async def on_vote(payload: dict[str, Any], ctx: MessageContext) -> None:
            """Approve a change of at most max_step_c degrees, reject larger ones."""
            step = abs(payload["data"]["setpoint_c"] - payload["data"]["current_c"])
            choice = C.VOTE_CHOICE_APPROVE if step <= max_step else C.VOTE_CHOICE_REJECT
            async with Client(registry=args.registry) as c:
                try:
                    await c.cast_vote(proposal_id=payload["proposal_id"], voter=ctx.agent_id,
                                      choice=choice)
                except FailedPrecondition:
                    pass  # decided by the others' votes before this one: nothing to add

        agents.append(op)
        operators.append(op.agent_id)
    return agents, furnace.agent_id, operators


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, port in (("registry", 50053), ("router", 50052), ("bus", 50051), ("saga", 50054)):
        ap.add_argument(f"--{name}", default=f"127.0.0.1:{port}")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--target-c", type=float, default=520.0, help="wanted mean zone temperature")
    ap.add_argument("--current-setpoint-c", type=float, default=500.0)
    ap.add_argument("--max-step-c", type=float, default=80.0,
                    help="largest change the operators approve")
    args = ap.parse_args(argv)
    zones = {"a": 498.0, "b": 505.0, "c": 510.0}
    run = uuid.uuid4().hex[:6]
    agents, furnace_id, operators = fleet(args, zones, run)
    client = Client(registry=args.registry, router=args.router, bus=args.bus, saga=args.saga)
    for a in agents:
        await a.start()
    try:
        async with client, ProcessHeatOrchestrator(
            client, furnace_id=furnace_id, operators=operators,
            announce_topic=ANNOUNCE_PREFIX + run,
        ) as heat:
            result = await heat.execute(HeatInput(
                zones=tuple(zones), target_c=args.target_c,
                current_setpoint_c=args.current_setpoint_c))
    finally:
        for a in agents:
            await a.stop()
    print(json.dumps({
        "success": result.success, "output": asdict(result.output) if result.output else None,
        "error": result.error, "duration_ms": round(result.duration_ms, 1),
        "provenance_hash": result.provenance_hash, "execution_id": result.execution_id,
        "operations": [[o.kind, o.id] for o in result.operations],
    }), flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
