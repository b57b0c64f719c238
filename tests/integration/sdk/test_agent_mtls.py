"""An SDK agent started with --tls-client-ca-file serves AgentService over
mTLS: callers without a client certificate are refused, callers with one
signed by that CA get through (the daemons present theirs on calls to agents)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agentmesh.agent import dict_to_struct
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.channels import create_channel
from tests.certs import make_pki
from tests.procs import testing_agent

pytestmark = pytest.mark.integration


def _req() -> agent_pb2.ExecuteRequest:
    return agent_pb2.ExecuteRequest(action="step", input=dict_to_struct({"n": 1}), attempt=1)


async def test_agent_requires_client_certificates_with_a_client_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    flags = (
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-client-ca-file", str(pki.ca),
    )
    with testing_agent("noop", tmp_path, *flags).start() as proc:
        async with create_channel(proc.target, tls_ca_file=str(pki.ca)) as no_cert:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await agent_pb2_grpc.AgentServiceStub(no_cert).Execute(_req(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        async with create_channel(
            proc.target, tls_ca_file=str(pki.ca),
            client_cert_file=str(pki.client_cert), client_key_file=str(pki.client_key),
        ) as mutual:
            resp = await agent_pb2_grpc.AgentServiceStub(mutual).Execute(_req(), timeout=10)
    assert resp.agent_id == proc.agent_id
