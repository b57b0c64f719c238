"""Per-service sub-clients of `agentmesh.Client`: one object per service holding its
typed raw stub and its RPC methods; the flat methods delegate to them."""

from __future__ import annotations

import inspect

import pytest

from agentmesh.bus.v1 import bus_pb2_grpc
from agentmesh.client import Client
from agentmesh.client._codegen import HELPERS, SERVICES
from agentmesh.client.services_gen import BusServiceClient, SagaServiceClient
from agentmesh.saga.v1 import saga_pb2_grpc

pytestmark = pytest.mark.asyncio


async def test_sub_clients_hold_the_stub_and_the_methods() -> None:
    async with Client(bus="127.0.0.1:1", saga="127.0.0.1:2") as c:
        assert isinstance(c.bus, BusServiceClient) and c.bus is c.bus
        assert isinstance(c.saga, SagaServiceClient)
        assert isinstance(c.bus.stub, bus_pb2_grpc.BusServiceStub)
        assert isinstance(c.saga.stub, saga_pb2_grpc.SagaServiceStub)
        assert c.bus.stub is c.bus.stub  # one stub on the shared channel
        for attr in ("registry", "coordination", "router", "safety", "bus", "saga", "task",
                     "swarm"):
            assert attr in {s[3] for s in SERVICES}
            assert hasattr(getattr(c, attr), "stub")
        # Every RPC is on its sub-client; the flat names are delegates or helpers.
        assert inspect.iscoroutinefunction(c.saga.start_saga)
        assert inspect.iscoroutinefunction(c.start_saga)
        assert callable(c.bus.subscribe) and callable(c.swarm.deploy_swarm)
        params = inspect.signature(c.deploy_swarm).parameters
        assert "wait" in params and "task" in params
        assert "patterns" in inspect.signature(c.subscribe).parameters
        assert HELPERS == {"subscribe", "deploy_swarm", "run_saga"}
