"""Defect 6 of issue 20: of the calls that arrive while a daemon drains
after SIGTERM, every one that is not served is UNAVAILABLE (which clients
retry on another replica), never CANCELLED; on all five daemons, under load
from many concurrent clients."""

from __future__ import annotations

import asyncio
import collections
import signal

import grpc
import pytest

from tests.hardening import errors_in_log
from tests.integration.hardening.conftest import StartDaemon

pytestmark = pytest.mark.integration

#: A cheap unary RPC of each daemon (an empty request is valid for each).
CHEAP = {
    "bus": "/agentmesh.bus.v1.BusService/ListTopics",
    "router": "/agentmesh.router.v1.RouterService/ListRouteRules",
    "registry": "/agentmesh.registry.v1.RegistryService/ListAgents",
    "saga": "/agentmesh.saga.v1.SagaService/ListSagas",
    "swarm": "/agentmesh.swarm.v1.SwarmService/ListSwarms",
}
CLIENTS = 16


@pytest.mark.parametrize("name", sorted(CHEAP))
async def test_calls_during_sigterm_drain_are_ok_or_unavailable(
    start_daemon: StartDaemon, name: str
) -> None:
    flags = ["--grace-period-s", "3"] + (["--backend", "memory"] if name == "bus" else [])
    proc = start_daemon(name, *flags)
    codes: collections.Counter[grpc.StatusCode] = collections.Counter()
    stop = asyncio.Event()

    async def client() -> None:
        # One channel per client, as replicas of a caller would have.
        async with grpc.aio.insecure_channel(proc.target) as ch:
            call = ch.unary_unary(CHEAP[name])
            while not stop.is_set():
                try:
                    await call(b"", timeout=5)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code()] += 1
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await asyncio.sleep(1.0)
    before = codes[grpc.StatusCode.OK]
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*tasks)
    assert before > 0
    assert codes[grpc.StatusCode.UNAVAILABLE] > 0  # calls did arrive after SIGTERM
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, dict(codes)
    assert errors_in_log(proc) == []
