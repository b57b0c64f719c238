"""`--workers N`: N gateway processes on one port (services/bus/workers.py),
run as real processes against a real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from tests.infra import pid_alive
from tests.integration.bus.conftest import unique
from tests.integration.bus.helpers import Sub, env
from tests.procs import DaemonProcess, daemon, scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def supervisor_serving(proc: DaemonProcess) -> dict[str, Any]:
    """The supervisor's `serving` log line (port, workers, worker_pids, metrics_ports)."""
    docs = [d for d in proc._log_docs(0)
            if d.get("msg") == "serving" and d.get("logger") == "agentmesh.bus.workers"]
    assert len(docs) == 1, proc.tail()
    return docs[0]


async def writers_reached(target: str, topic: str, want: int, *, tries: int = 64) -> set[str]:
    """Publish once on each of up to `tries` new connections until `want`
    distinct writer ids (the chain id's third part, `<instance id>-w<i>`) are
    seen; returns them. Each channel has its own subchannel pool, so each is a
    new TCP connection that the kernel hands to one of the workers."""
    writers: set[str] = set()
    for _ in range(tries):
        async with grpc.aio.insecure_channel(
                target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            r = await bus_pb2_grpc.BusServiceStub(ch).Publish(
                bus_pb2.PublishRequest(message=env(topic, b"w")), timeout=30)
        writers.add(r.provenance.chain_id.split("/")[2].rsplit(".", 1)[0])
        if len(writers) >= want:
            break
    return writers


@pytest.mark.kafka
async def test_two_workers_serve_one_port_and_sigterm_drains_both(
    kafka_broker: Any, tmp_path: Path
):
    proc = daemon("bus", tmp_path, "--kafka-bootstrap", kafka_broker.bootstrap,
                  "--workers", "2", "--instance-id", "gw", "--grace-period-s", "5",
                  "--metrics-port", "0").start(90)
    try:
        serving = supervisor_serving(proc)
        pids, metrics_ports = serving["worker_pids"], serving["metrics_ports"]
        assert serving["workers"] == 2 and len(set(pids)) == 2
        assert all(pid_alive(p) for p in pids)
        topic = unique("workers")
        # Connections to the one port reach both processes, each writing its own chains.
        assert await writers_reached(proc.target, topic, 2) == {"gw-w0", "gw-w1"}
        # Each worker serves its own metrics port.
        for port in metrics_ports:
            text = await asyncio.to_thread(scrape_metrics, port)
            assert "message_bus_sent_total" in text
        # Both workers' records are one readable, verifiable topic.
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            for part in range(3):
                v = await stub.VerifyChain(bus_pb2.VerifyChainRequest(topic=topic,
                                                                      partition=part))
                assert v.valid, v
            # A subscriber on a draining worker: SIGTERM lets its stream end
            # (the worker drains, it is not killed mid-call).
            sub = Sub(stub, [topic], unique("g"),
                      start_position=bus_pb2.START_POSITION_EARLIEST)
            await sub.start()
            await sub.next(timeout_s=30)
            t0 = time.monotonic()
            proc.signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 30)
            await sub.close()
        assert rc == 0, proc.tail()
        assert time.monotonic() - t0 < 20
        assert not any(pid_alive(p) for p in pids)
        stopped = [d for d in proc._log_docs(0) if d.get("msg") == "stopped"]
        assert len(stopped) == 2, proc.tail()  # each worker ran its own drain to the end
    finally:
        proc.kill()


@pytest.mark.kafka
async def test_one_worker_dying_stops_the_group(kafka_broker: Any, tmp_path: Path):
    proc = daemon("bus", tmp_path, "--kafka-bootstrap", kafka_broker.bootstrap,
                  "--workers", "2", "--grace-period-s", "1").start(90)
    try:
        first, second = supervisor_serving(proc)["worker_pids"]
        os.kill(first, signal.SIGKILL)
        rc = await asyncio.to_thread(proc.wait, 30)
        assert rc == 128 + signal.SIGKILL, proc.tail()
        assert "a worker exited; stopping the others" in proc.tail()
        await eventually(lambda: not pid_alive(second), timeout_s=10, every_s=0.1,
                         what="the other worker stopped")
    finally:
        proc.kill()


@pytest.mark.kafka
async def test_a_sigkilled_supervisor_takes_its_workers_with_it(
    kafka_broker: Any, tmp_path: Path
):
    proc = daemon("bus", tmp_path, "--kafka-bootstrap", kafka_broker.bootstrap,
                  "--workers", "2", "--grace-period-s", "1").start(90)
    workers = supervisor_serving(proc)["worker_pids"]
    try:
        assert all(pid_alive(w) for w in workers)
        proc.kill()  # SIGKILL: the supervisor forwards nothing
        await eventually(lambda: not any(pid_alive(w) for w in workers), timeout_s=20,
                         every_s=0.1, what="both workers ended after their supervisor")
    finally:
        for w in workers:
            if pid_alive(w):
                os.kill(w, signal.SIGKILL)


def test_workers_need_the_kafka_backend(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "agentmesh.server.bus", "--backend", "memory",
                        "--port", "0", "--metrics-port", "0", "--workers", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--workers > 1 needs the Kafka backend" in r.stderr
