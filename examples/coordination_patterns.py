"""The seeds' five coordination patterns on the mesh's parts, each run for real.

    python examples/coordination_patterns.py --registry 127.0.0.1:50053 \\
        --bus 127.0.0.1:50051 --saga 127.0.0.1:50054 --redis-url redis://127.0.0.1:6379/0 \\
        [PATTERN ...]

PATTERN is one of master_slave, peer_to_peer, consensus, choreography and
orchestration (default: all). Each prints one line `<PATTERN> ok: ...` or
exits non-zero. What each maps onto (README "Coordination patterns"):

* MASTER_SLAVE: leader election on a leased registry lock (`Client.elect`);
  the leader's fencing token guards what it writes, so a paused leader that
  wakes after losing its lease is refused by the storage it writes to.
* PEER_TO_PEER: agents address each other by `recipient_id` on the bus
  (each agent's inbox topic `agents.<id>`), request and reply, no broker in
  the middle but the bus.
* CONSENSUS: CoordinationService proposals and votes (ratio over decisive
  votes, ABSTAIN takes part without counting, EXPIRED at the deadline).
* CHOREOGRAPHY: agents react to each other's events on topic patterns; no
  one drives the flow, each agent only knows the events it consumes.
* ORCHESTRATION: one coordinator drives the steps: a saga (with
  compensation) and a durable task.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from agentmesh.agent import Agent
from agentmesh.agent.bus import MessageContext
from agentmesh.agent.context import ActionContext
from agentmesh.client import Client
from agentmesh.client.bus_messages import make_envelope
from agentmesh.registry.v1 import coordination_pb2 as C

#: Fences a write with the writer's lease token (Kleppmann 2016): the store
#: keeps the highest token it has seen and refuses writes with a lower one.
FENCED_SET = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
if tonumber(ARGV[1]) < seen then return 0 end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
return 1
"""


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


def _agent(name: str, args: argparse.Namespace, **kw: Any) -> Agent:
    return Agent(
        f"agent-{name}-{_suffix()}", agent_type=f"pattern-{name}", version="1.0.0",
        registry_target=args.registry, bus_target=args.bus, redis_url=args.redis_url,
        heartbeat_interval_s=1.0, **kw,
    )


async def master_slave(args: argparse.Namespace, client: Client) -> str:
    """Two candidates campaign for one role: candidate-1 leads and steps down,
    candidate-2 is elected with a higher fencing token, and candidate-1's late
    write (a paused leader waking up) is refused by the fenced store."""
    import redis.asyncio as aioredis

    role, key = f"pattern-leader-{_suffix()}", f"pattern:fenced:{_suffix()}"
    r = aioredis.Redis.from_url(args.redis_url)
    fenced_set = r.register_script(FENCED_SET)
    try:
        async with client.elect(role, ttl_ms=2000, owner="candidate-1") as first:
            assert await fenced_set(keys=[key], args=[first.fencing_token, "candidate-1"])
        async with client.elect(role, ttl_ms=2000, owner="candidate-2") as second:
            assert await fenced_set(keys=[key], args=[second.fencing_token, "candidate-2"])
        late = await fenced_set(keys=[key], args=[first.fencing_token, "candidate-1, late"])
        tokens = (first.fencing_token, second.fencing_token)
        assert tokens[1] > tokens[0] and late == 0, (tokens, late)
        return f"tokens {tokens[0]} -> {tokens[1]}, the old leader's late write refused"
    finally:
        await r.aclose()


async def peer_to_peer(args: argparse.Namespace, client: Client) -> str:
    """Peers a and b answer whoever addresses them; a asks b directly, by recipient_id."""

    async def pong(payload: dict[str, Any], ctx: MessageContext) -> dict[str, Any]:
        return {"n": payload["n"] + 1, "from": ctx.agent_id, "to": ctx.sender_id}

    a, b = _agent("peer-a", args), _agent("peer-b", args)
    for peer in (a, b):
        peer.on_message(inbox=True)(pong)
    async with b, a:
        reply = await a.request({"n": 41}, recipient_id=b.agent_id, timeout_s=15)
    assert reply.payload == {"n": 42, "from": b.agent_id, "to": a.agent_id}, reply.payload
    return f"{a.agent_id} -> {b.agent_id}: n=41 answered n=42"


async def consensus(args: argparse.Namespace, client: Client) -> str:
    """Three voters, 2/3 required: approve, approve, abstain decides it; a vote
    that nobody finishes expires at its deadline."""
    voters = ["agent-voter-1", "agent-voter-2", "agent-voter-3"]
    p = (await client.create_proposal(
        topic="setpoint.change", proposer="agent-orchestrator", data={"setpoint_c": 540},
        required_approval_ratio=2 / 3, voters=voters, ttl=timedelta(seconds=30),
    )).proposal
    choices = [C.VOTE_CHOICE_APPROVE, C.VOTE_CHOICE_ABSTAIN, C.VOTE_CHOICE_APPROVE]
    for voter, choice in zip(voters, choices, strict=True):
        p = (await client.cast_vote(
            proposal_id=p.proposal_id, voter=voter, choice=choice)).proposal
    assert p.state == C.PROPOSAL_STATE_ACHIEVED, C.ProposalState.Name(p.state)
    slow = (await client.create_proposal(
        topic="setpoint.change", proposer="agent-orchestrator", required_approval_ratio=0.5,
        voters=voters, ttl=timedelta(milliseconds=300),
    )).proposal
    await client.cast_vote(proposal_id=slow.proposal_id, voter=voters[0],
                           choice=C.VOTE_CHOICE_REJECT)
    for _ in range(100):  # bounded: the deadline is 300 ms away
        got = (await client.get_proposal(proposal_id=slow.proposal_id)).proposal
        if got.state != C.PROPOSAL_STATE_OPEN:
            break
        await asyncio.sleep(0.05)
    assert got.state == C.PROPOSAL_STATE_EXPIRED, C.ProposalState.Name(got.state)
    return "2 approvals + 1 abstention ACHIEVED; an unfinished vote EXPIRED"


async def choreography(args: argparse.Namespace, client: Client) -> str:
    """order.placed -> inventory reserves -> billing charges; nobody directs it."""
    order = f"o-{_suffix()}"
    inventory, billing = _agent("inventory", args), _agent("billing", args)

    @inventory.on_message("shop.order.placed", group=f"inventory-{order}")
    async def reserve(payload: dict[str, Any], ctx: MessageContext) -> None:
        await ctx.publish({"order": payload["order"], "sku": payload["sku"]},
                          topic="shop.inventory.reserved", key=payload["order"])

    @billing.on_message("shop.inventory.*", group=f"billing-{order}")
    async def charge(payload: dict[str, Any], ctx: MessageContext) -> None:
        await ctx.publish({"order": payload["order"], "charged_by": ctx.agent_id},
                          topic="shop.billing.charged", key=payload["order"])

    async with inventory, billing:
        await client.publish(message=make_envelope(
            {"order": order, "sku": "steel-coil"}, topic="shop.order.placed", key=order))
        async for msg in client.subscribe("shop.billing.charged", group=f"watch-{order}"):
            if msg.payload["order"] == order:  # type: ignore[index]
                break
    assert msg.sender_id == billing.agent_id
    return f"{order}: placed -> reserved by {inventory.agent_id} -> charged by {billing.agent_id}"


async def orchestration(args: argparse.Namespace, client: Client) -> str:
    """A saga the coordinator drives (and compensates), and a durable task."""
    worker = _agent("worker", args, capabilities=["pattern_work"])
    done: list[str] = []

    @worker.action("reserve")
    async def reserve(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        done.append("reserve")
        return {"reserved": inp.get("tons", 0)}

    @worker.action("ship")
    async def ship(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        done.append("ship")
        return {"shipped": inp["reserved"]}

    async with worker:
        out = await client.run_saga({
            "steps": [
                {"name": "reserve", "agent_id": worker.agent_id, "action": "reserve"},
                {"name": "ship", "agent_id": worker.agent_id, "action": "ship",
                 "depends_on": ["reserve"],
                 "input_mapping": {"reserved": "steps.reserve.reserved"}},
            ],
        }, {"tons": 12}, timeout_s=30)
        task = await client.schedule_task(task_type="ship", agent_id=worker.agent_id,
                                           payload={"reserved": 3})
        result = await client.wait_task(task.task.task_id, timeout_s=30)
    assert out["ship"]["shipped"] == 12 and result == {"shipped": 3}, (out, result)
    return f"saga reserve -> ship shipped 12 t; task shipped 3 t ({len(done)} calls)"


PATTERNS: dict[str, Callable[[argparse.Namespace, Client], Awaitable[str]]] = {
    "master_slave": master_slave,
    "peer_to_peer": peer_to_peer,
    "consensus": consensus,
    "choreography": choreography,
    "orchestration": orchestration,
}


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patterns", nargs="*", metavar="PATTERN",
                    help=f"any of {', '.join(PATTERNS)} (default: all)")
    ap.add_argument("--registry", default="127.0.0.1:50053")
    ap.add_argument("--bus", default="127.0.0.1:50051")
    ap.add_argument("--saga", default="127.0.0.1:50054")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.patterns) - set(PATTERNS))
    if unknown:
        ap.error(f"unknown pattern(s) {', '.join(unknown)}; choose from {', '.join(PATTERNS)}")
    async with Client(registry=args.registry, bus=args.bus, saga=args.saga) as client:
        for name in args.patterns or list(PATTERNS):
            line = await PATTERNS[name](args, client)
            print(f"{name.upper()} ok: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
