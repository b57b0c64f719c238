"""The agent of the tracing e2e test, built on the agent SDK.

    python tests/e2e/tracing_agent.py --agent-id A --port 0 --bus-target HOST:PORT \
        --router-target HOST:PORT

Actions: `work` succeeds; `publish` also publishes one bus message to
input.topic through a runtime channel (so the publish is a child of the
agent's Execute span); `publish_stream` writes input.count messages (default
2) to input.topic in one PublishStream batch; `invoke` calls router Invoke of
`work` on this same agent; `fail` answers FAILED_PRECONDITION; `slow` sleeps
input.delay_ms (default 1500) first. Compensations (`undo`) succeed.

Bus handler: each message on `tracing.e2e.inbox` (an `@agent.on_message`
handler, run inside the SDK's consumer span) is answered by a message on
`tracing.e2e.acks` whose payload names the handler's trace and span ids and
the message it handled; that publish is a child of the consumer span.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from agentmesh.agent.bus import MessageContext
from agentmesh.agent.context import ActionContext
from agentmesh.agent.sdk import Agent
from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2, router_pb2_grpc
from agentmesh.runtime import tracing
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.errors import FailedPrecondition

agent = Agent("tracing-agent", agent_type="tracing-agent", version="1.0.0",
              capabilities=["tracing_test"])
_bus: dict[str, Any] = {}


@agent.action("work")
async def work(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    return {"ok": True}


@agent.action("publish")
async def publish(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    if "channel" not in _bus:  # made on the serving loop
        _bus["channel"] = create_channel(_bus["target"])
    stub = bus_pb2_grpc.BusServiceStub(_bus["channel"])
    resp = await stub.Publish(bus_pb2.PublishRequest(message=bus_pb2.Envelope(
        topic=input["topic"], key=ctx.idempotency_key,
        payload=common_pb2.Payload(bytes_value=b"hello", content_type="text/plain"))))
    return {"message_id": resp.id, "offset": resp.position.offset}


@agent.action("publish_stream")
async def publish_stream(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    if "channel" not in _bus:
        _bus["channel"] = create_channel(_bus["target"])
    stub = bus_pb2_grpc.BusServiceStub(_bus["channel"])
    batch = bus_pb2.PublishStreamRequest(messages=[bus_pb2.Envelope(
        topic=input["topic"], key=f"{ctx.idempotency_key}/{i}",
        payload=common_pb2.Payload(bytes_value=b"hello", content_type="text/plain"))
        for i in range(int(input.get("count", 2)))])

    async def one() -> Any:
        yield batch

    reports = [r async for resp in stub.PublishStream(one()) for r in resp.reports]
    return {"written": sum(1 for r in reports if r.status.code == 0)}


@agent.on_message("tracing.e2e.inbox", group="tracing-agent-inbox")
async def on_inbox(payload: Any, ctx: MessageContext) -> None:
    trace_id, span_id = tracing.current_ids()
    # Through the raw stub (ctx.publish would send this agent's id as
    # sender_id, which the gateway wants shaped agent-...).
    if "channel" not in _bus:
        _bus["channel"] = create_channel(_bus["target"])
    ack = bus_pb2.Envelope(topic="tracing.e2e.acks", key=ctx.message.key)
    ack.payload.struct_value.update({"trace_id": trace_id, "span_id": span_id,
                                     "handled": ctx.message.id, "key": ctx.message.key})
    await bus_pb2_grpc.BusServiceStub(_bus["channel"]).Publish(bus_pb2.PublishRequest(message=ack))


@agent.action("invoke")
async def invoke(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    if "router" not in _bus:
        _bus["router"] = create_channel(_bus["router_target"])
    stub = router_pb2_grpc.RouterServiceStub(_bus["router"])
    resp = await stub.Invoke(router_pb2.InvokeRequest(
        message=router_pb2.RouteMessage(message_type="work", target_ids=[agent.agent_id]),
        action="work", idempotency_key=ctx.idempotency_key + "/invoke"))
    return {"invoked": resp.agent_id}


@agent.action("fail")
async def fail(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    raise FailedPrecondition("step refused on purpose")


@agent.action("slow")
async def slow(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    await asyncio.sleep(float(input.get("delay_ms", 1500)) / 1000)
    return {"ok": True}


@agent.compensation("undo")
async def undo(input: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    return {}


if __name__ == "__main__":
    argv = sys.argv[1:]
    _bus["target"] = argv[argv.index("--bus-target") + 1]  # also the SDK's own flag
    i = argv.index("--router-target")
    _bus["router_target"] = argv[i + 1]
    agent.run(argv[:i] + argv[i + 2:])
