"""Locust load test of a running stack (`make up`) over gRPC.

Run headless for 60 s with 20 users:
    locust -f perf/locust/locustfile.py --headless -u 20 -r 5 -t 60s

Each task is one RPC through the generated stubs; Locust records its latency
and failures like an HTTP request. Hosts come from AGENTMESH_<DAEMON>_TARGET.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import grpc
from locust import User, between, task

from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.router.v1 import router_pb2, router_pb2_grpc

REGISTRY = os.environ.get("AGENTMESH_REGISTRY_TARGET", "127.0.0.1:50053")
ROUTER = os.environ.get("AGENTMESH_ROUTER_TARGET", "127.0.0.1:50052")
CAPABILITY = os.environ.get("AGENTMESH_LOAD_CAPABILITY", "carbon_calculation")


class GrpcUser(User):
    """A Locust user whose tasks time gRPC calls and report them as requests."""

    abstract = True
    wait_time = between(0.0, 0.01)

    def timed(self, name: str, call: Callable[[], Any]) -> None:
        start = time.perf_counter()
        exc: Exception | None = None
        try:
            call()
        except grpc.RpcError as e:
            exc = e
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=exc,
        )


class MeshUser(GrpcUser):
    """Discovers calculators and asks the router for a target."""

    def on_start(self) -> None:
        self._reg_ch = grpc.insecure_channel(REGISTRY)
        self._rt_ch = grpc.insecure_channel(ROUTER)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._reg_ch)
        self.router = router_pb2_grpc.RouterServiceStub(self._rt_ch)
        self.selector = common_pb2.AgentSelector(capabilities=[CAPABILITY])

    def on_stop(self) -> None:
        self._reg_ch.close()
        self._rt_ch.close()

    @task(3)
    def discover(self) -> None:
        req = registry_pb2.DiscoverAgentsRequest(selector=self.selector, max_results=10)
        self.timed("DiscoverAgents", lambda: self.registry.DiscoverAgents(req, timeout=5))

    @task(2)
    def route(self) -> None:
        req = router_pb2.RouteRequest(
            message=router_pb2.RouteMessage(
                message_type="calculate",
                routing_key=f"k{time.monotonic_ns()}",
                selector=self.selector,
            ),
            strategy=router_pb2.STRATEGY_LEAST_LOADED,
        )
        self.timed("Route", lambda: self.router.Route(req, timeout=5))
