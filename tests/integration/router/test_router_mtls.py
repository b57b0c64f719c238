"""Under mTLS everywhere, the router's own calls to agents present the
daemon's certificate (RuntimeConfig.client_cert_pair), so an agent that
requires client certificates accepts them: a real router process, a real
TLS agent process and Redis DB 2."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import router_pb2_grpc
from agentmesh.runtime.channels import create_channel
from tests.certs import make_pki
from tests.procs import DaemonProcess
from tests.registry_records import write_agent_record

pytestmark = pytest.mark.integration
ECHO = str(Path(__file__).parents[1] / "runtime" / "echo_daemon.py")


async def test_router_invokes_an_agent_that_requires_client_certificates(
    tmp_path: Path, procs: Any, rdb: Any
) -> None:
    pki = make_pki(tmp_path / "pki")
    server_tls = (
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-client-ca-file", str(pki.ca),
    )
    agent = procs.start(
        DaemonProcess(
            [ECHO, "--port", "0", "--metrics-port", "0", *server_tls],
            tmp_path / "echo-mtls.log",
        )
    )
    cap = f"mtls-{uuid.uuid4().hex[:6]}"
    agent_id = f"agent-mtls-{uuid.uuid4().hex[:6]}"
    await write_agent_record(rdb, agent_id, endpoint=agent.target, capabilities=[cap])
    router = procs.router(*server_tls, "--tls-ca-file", str(pki.ca))

    async with create_channel(
        router.target,
        tls_ca_file=str(pki.ca),
        client_cert_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
    ) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        req = R.InvokeRequest(message=R.RouteMessage(message_type=cap), action="echo")
        resp = await stub.Invoke(req, timeout=10)
    assert resp.agent_id == "echo"  # echo_daemon answers with this id
    # the echo agent reports the deadline budget it saw: the call reached it
    assert resp.output["remaining_s"] > 0

    # The agent really does refuse callers without a certificate.
    async with create_channel(agent.target, tls_ca_file=str(pki.ca)) as no_cert:
        with pytest.raises(grpc.aio.AioRpcError):
            await router_pb2_grpc.RouterServiceStub(no_cert).Route(
                R.RouteRequest(message=R.RouteMessage(message_type=cap)), timeout=3
            )
