"""Locust load test of a running AgentMesh stack over gRPC, with users that model real traffic.

    make up && make locust                              # headless, bounded, CSV + summary
    locust -f perf/locust/locustfile.py --headless -u 12 -r 4 -t 60s --only-summary

Locust's documented gRPC pattern: grpc is made gevent-cooperative with
`grpc.experimental.gevent.init_gevent()`, every channel goes through a client
interceptor that fires Locust `request` events (name = the RPC method), and
the AgentService servers run in-process on gevent like Locust's gRPC example.

Users:
  * AgentUser (fixed count, spawned first): serves a real AgentService on a
    free loopback port, registers it with the registry under the capability
    `locust-echo`, heartbeats every second and deregisters on stop.
  * CallerUser: DiscoverAgents by that capability, Invoke through the router,
    ScatterGather over up to 3 agents.
  * WorkflowUser: StartSaga with 3 steps on the agents' capability, then
    WatchSaga until the saga is final; the `SagaCompleted` entry times start →
    final event and fails when the saga did not complete.

Targets: `AGENTMESH_<DAEMON>_TARGET`, else the stack in `AGENTMESH_RUN_DIR`
(default .run, written by `make up`), else the default ports 50051-50055.
`AGENTMESH_LOCUST_AGENTS` sets how many AgentUsers run (default 2).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.protobuf.message import Message
from locust import User, between, constant, task
from locust.env import Environment

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.cli.stack import targets_for
from agentmesh.client.base import DAEMONS
from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.router.v1 import router_pb2, router_pb2_grpc
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc

# Importing locust monkey-patched the standard library for gevent; grpc's own
# I/O must be switched to gevent too, before any channel or server exists.
grpc_gevent.init_gevent()

CAPABILITY = os.environ.get("AGENTMESH_LOCUST_CAPABILITY", "locust-echo")
AGENT_COUNT = int(os.environ.get("AGENTMESH_LOCUST_AGENTS", "2"))
#: Deadline of every call, seconds.
CALL_TIMEOUT_S = 10.0
#: How long a caller waits in on_start for the first agent to be discoverable.
AGENT_WAIT_S = 30.0
TARGETS = targets_for(
    Path(os.environ.get("AGENTMESH_RUN_DIR", ".run")),
    {d: os.environ.get(f"AGENTMESH_{d.upper()}_TARGET") for d in DAEMONS},
)
SELECTOR = common_pb2.AgentSelector(capabilities=[CAPABILITY])
FINAL_EVENTS = {
    saga_pb2.SAGA_EVENT_TYPE_SAGA_COMPLETED, saga_pb2.SAGA_EVENT_TYPE_SAGA_COMPENSATED,
    saga_pb2.SAGA_EVENT_TYPE_SAGA_CANCELLED, saga_pb2.SAGA_EVENT_TYPE_SAGA_FAILED,
}

R = TypeVar("R")


# ---- the request-event interceptor ---------------------------------------------
class _TimedStream:
    """A server-streaming call that fires one request event when the stream ends."""

    def __init__(self, call: Any, fire: Callable[[int, BaseException | None], None]) -> None:
        self._call = call
        self._fire = fire
        self._size = 0
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            msg = next(self._call)
        except StopIteration:
            self._finish(None)
            raise
        except grpc.RpcError as e:
            self._finish(e)
            raise
        self._size += msg.ByteSize()
        return msg

    def _finish(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._fire(self._size, exc)

    def cancel(self) -> bool:
        """Cancel the RPC (no event: the caller chose to stop)."""
        self._done = True
        return bool(self._call.cancel())


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Fires a Locust `request` event per RPC: request_type "grpc", name = method name,
    response time in ms, response size in bytes, the RpcError as the exception."""

    def __init__(self, environment: Environment) -> None:
        self.env = environment

    def _fire(self, method: str, start: float, size: int, exc: BaseException | None) -> None:
        self.env.events.request.fire(
            request_type="grpc",
            name=method.rsplit("/", 1)[-1],
            response_time=(time.perf_counter() - start) * 1000,
            response_length=size,
            exception=exc,
            context={},
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        start = time.perf_counter()
        call = continuation(client_call_details, request)
        try:
            size = call.result().ByteSize()
            exc: BaseException | None = None
        except grpc.RpcError as e:
            size, exc = 0, e
        self._fire(client_call_details.method, start, size, exc)
        return call

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                               request: Any) -> Any:
        start = time.perf_counter()
        call = continuation(client_call_details, request)
        method = client_call_details.method
        return _TimedStream(call, lambda size, exc: self._fire(method, start, size, exc))


class GrpcUser(User):
    """A Locust user with one intercepted channel per daemon it calls."""

    abstract = True
    #: Daemons this user talks to.
    daemons: tuple[str, ...] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        interceptor = LocustInterceptor(environment)
        self._raw: list[grpc.Channel] = []
        self.channels: dict[str, grpc.Channel] = {}
        for d in self.daemons:
            raw = grpc.insecure_channel(TARGETS[d])
            self._raw.append(raw)
            self.channels[d] = grpc.intercept_channel(raw, interceptor)

    def call(self, method: Callable[..., R], request: Message) -> R | None:
        """Call a unary RPC; None when it failed (the interceptor already reported it)."""
        try:
            return method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            return None

    def close_channels(self) -> None:
        """Close every channel."""
        for ch in self._raw:
            ch.close()


# ---- AgentUser: a real AgentService in-process ------------------------------------
class EchoAgent(agent_pb2_grpc.AgentServiceServicer):
    """AgentService that echoes: Execute returns its input, Compensate succeeds,
    Evaluate computes the sphere function Σ x_i²."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.in_flight = 0
        self.served = 0

    def Execute(self, request: Any, context: Any) -> Any:
        self.in_flight += 1
        try:
            out = struct_pb2.Struct()
            out.update({"agent_id": self.agent_id, "action": request.action,
                        "input": json_format.MessageToDict(request.input)})
            self.served += 1
            return agent_pb2.ExecuteResponse(output=out, agent_id=self.agent_id)
        finally:
            self.in_flight -= 1

    def Compensate(self, request: Any, context: Any) -> Any:
        out = struct_pb2.Struct()
        out.update({"agent_id": self.agent_id, "compensated": request.action})
        return agent_pb2.CompensateResponse(agent_id=self.agent_id, output=out)

    def Evaluate(self, request: Any, context: Any) -> Any:
        d = max(1, request.dimensions)
        xs = list(request.positions)
        fitness = [sum(v * v for v in xs[i:i + d]) for i in range(0, len(xs), d)]
        return agent_pb2.EvaluateResponse(fitness=fitness)


class AgentUser(GrpcUser):
    """An agent: serves AgentService, registers, heartbeats every second, deregisters."""

    fixed_count = AGENT_COUNT
    wait_time = constant(1.0)
    daemons = ("registry",)

    def on_start(self) -> None:
        self.agent_id = f"agent-locust-{uuid.uuid4().hex[:10]}"
        self.servicer = EchoAgent(self.agent_id)
        # As in Locust's gRPC example: a plain grpc server; its thread pool runs
        # on greenlets because Locust monkey-patched threading.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channels["registry"])
        interval = duration_pb2.Duration(seconds=2)
        self.registered = self.call(self.registry.RegisterAgent, registry_pb2.RegisterAgentRequest(
            agent=registry_pb2.Agent(
                agent_id=self.agent_id, agent_type="locust-echo", version="1.0.0",
                capabilities=[CAPABILITY], service_types=["loadtest"],
                endpoint=f"127.0.0.1:{port}", heartbeat_interval=interval,
                sla=registry_pb2.ServiceLevel(max_concurrency=16),
            )
        )) is not None

    @task
    def heartbeat(self) -> None:
        load = common_pb2.LoadMetrics(queue_size=self.servicer.in_flight, capacity=16)
        self.call(self.registry.Heartbeat,
                  registry_pb2.HeartbeatRequest(agent_id=self.agent_id, load=load))

    def on_stop(self) -> None:
        wait_for_clients_to_stop()
        if getattr(self, "registered", False):
            self.call(self.registry.DeregisterAgent, registry_pb2.DeregisterAgentRequest(
                agent_id=self.agent_id, reason="locust user stopped"))
        if hasattr(self, "server"):
            # Calls already routed here finish within the grace period.
            self.server.stop(grace=2.0).wait(5.0)
        self.close_channels()


def wait_for_agents() -> None:
    """Block (cooperatively) until the router can route to an agent of CAPABILITY,
    at most AGENT_WAIT_S. The router refreshes its pools from the registry on its
    own schedule, so an agent that DiscoverAgents already returns may not be
    routable yet. The polling calls are not reported: only real traffic is measured.
    """
    req = router_pb2.RouteRequest(message=router_pb2.RouteMessage(
        message_type="echo", selector=SELECTOR, routing_key="locust-probe"))
    deadline = time.monotonic() + AGENT_WAIT_S
    with grpc.insecure_channel(TARGETS["router"]) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        while time.monotonic() < deadline:
            try:
                stub.Route(req, timeout=5)
                return
            except grpc.RpcError:
                gevent.sleep(0.2)


class _Clients:
    """How many CallerUsers and WorkflowUsers are running: AgentUsers stop serving
    only after them at the end of a run, so no call reaches a stopped agent."""

    active = 0


def wait_for_clients_to_stop(*, timeout_s: float = 4.0) -> None:
    """Wait (cooperatively) until no client user runs, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while _Clients.active > 0 and time.monotonic() < deadline:
        gevent.sleep(0.05)


# ---- CallerUser --------------------------------------------------------------------
class CallerUser(GrpcUser):
    """A client of the agents: discovers them, invokes one, scatter-gathers over several."""

    weight = 3
    wait_time = between(0.05, 0.2)
    daemons = ("registry", "router")

    def on_start(self) -> None:
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channels["registry"])
        self.router = router_pb2_grpc.RouterServiceStub(self.channels["router"])
        wait_for_agents()
        _Clients.active += 1

    def on_stop(self) -> None:
        _Clients.active -= 1
        self.close_channels()

    def _message(self) -> router_pb2.RouteMessage:
        payload = struct_pb2.Struct()
        payload.update({"order": uuid.uuid4().hex[:12], "qty": 3})
        return router_pb2.RouteMessage(
            message_type="echo", selector=SELECTOR, sender_id="locust-caller",
            routing_key=uuid.uuid4().hex, payload=common_pb2.Payload(struct_value=payload),
        )

    @task(2)
    def discover(self) -> None:
        self.call(self.registry.DiscoverAgents,
                  registry_pb2.DiscoverAgentsRequest(selector=SELECTOR, max_results=10))

    @task(3)
    def invoke(self) -> None:
        self.call(self.router.Invoke, router_pb2.InvokeRequest(
            message=self._message(), action="echo", idempotency_key=f"locust-{uuid.uuid4()}"))

    @task(1)
    def scatter_gather(self) -> None:
        self.call(self.router.ScatterGather, router_pb2.ScatterGatherRequest(
            message=self._message(), action="echo", selector=SELECTOR,
            aggregation=router_pb2.AGGREGATION_ALL, max_targets=3,
            timeout=duration_pb2.Duration(seconds=5),
            idempotency_key=f"locust-sg-{uuid.uuid4()}",
        ))


# ---- WorkflowUser ------------------------------------------------------------------
def order_saga() -> saga_pb2.SagaDefinition:
    """reserve → charge → notify on the agents' capability; the first two compensate."""
    def step(name: str, undo: str, after: list[str]) -> saga_pb2.Step:
        return saga_pb2.Step(name=name, selector=SELECTOR, action=name,
                             compensation_action=undo, depends_on=after)

    return saga_pb2.SagaDefinition(
        name="locust-order",
        steps=[step("reserve", "release", []), step("charge", "refund", ["reserve"]),
               step("notify", "", ["charge"])],
        timeout=duration_pb2.Duration(seconds=60),
    )


class WorkflowUser(GrpcUser):
    """Starts order sagas and watches each one to its final state."""

    weight = 1
    wait_time = between(0.2, 0.5)
    daemons = ("saga",)

    def on_start(self) -> None:
        self.saga = saga_pb2_grpc.SagaServiceStub(self.channels["saga"])
        self.definition = order_saga()
        wait_for_agents()
        _Clients.active += 1

    def on_stop(self) -> None:
        _Clients.active -= 1
        self.close_channels()

    @task
    def run_saga(self) -> None:
        start = time.perf_counter()
        input_ = struct_pb2.Struct()
        input_.update({"order": uuid.uuid4().hex[:12]})
        started = self.call(self.saga.StartSaga, saga_pb2.StartSagaRequest(
            definition=self.definition, input=input_,
            idempotency_key=f"locust-saga-{uuid.uuid4()}"))
        if started is None:
            return
        final: Any = None
        try:
            stream = self.saga.WatchSaga(
                saga_pb2.WatchSagaRequest(saga_id=started.saga.saga_id), timeout=60)
            for resp in stream:
                if resp.event.type in FINAL_EVENTS:
                    final = resp.event
        except grpc.RpcError:
            return  # reported by the interceptor as a WatchSaga failure
        exc = None
        if final is None or final.type != saga_pb2.SAGA_EVENT_TYPE_SAGA_COMPLETED:
            what = "no final event" if final is None else saga_pb2.SagaEventType.Name(final.type)
            exc = RuntimeError(f"saga {started.saga.saga_id} ended with {what}")
        self.environment.events.request.fire(
            request_type="saga", name="SagaCompleted",
            response_time=(time.perf_counter() - start) * 1000, response_length=0,
            exception=exc, context={},
        )

