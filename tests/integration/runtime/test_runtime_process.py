"""The shared runtime, driven as a real daemon process: SIGTERM drain,
deadline propagation, TLS, mTLS, bearer auth and truthful health."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.errors import InvalidArgument, from_rpc_error
from tests import health
from tests.certs import make_pki
from tests.procs import DaemonProcess, scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration
ECHO = str(Path(__file__).with_name("echo_daemon.py"))


def echo(tmp_path: Path, *flags: str) -> DaemonProcess:
    return DaemonProcess(
        [ECHO, "--port", "0", "--metrics-port", "0", "--health-interval-s", "0.2", *flags],
        tmp_path / "echo.log",
    )


def request(sleep_s: float = 0.0, action: str = "echo") -> agent_pb2.ExecuteRequest:
    s = struct_pb2.Struct()
    s.update({"sleep_s": sleep_s})
    return agent_pb2.ExecuteRequest(action=action, input=s)


async def execute_started(d: DaemonProcess) -> bool:
    """True once the daemon's metrics count one started AgentService.Execute."""
    text = await asyncio.to_thread(scrape_metrics, d.metrics_port)
    return any(
        ln.startswith("grpc_server_started_total{") and 'grpc_method="Execute"' in ln
        and ln.endswith(" 1.0")
        for ln in text.splitlines()
    )


def logged(d: DaemonProcess, msg: str) -> bool:
    """True once the daemon has logged a JSON line with this `msg`."""
    for line in d.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                if json.loads(line).get("msg") == msg:
                    return True
            except ValueError:
                pass
    return False


async def test_sigterm_drains_in_flight_and_refuses_new(tmp_path: Path) -> None:
    with echo(tmp_path, "--grace-period-s", "10") as d:
        async with create_channel(d.target) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            assert await health.health_status(ch) == health_pb2.HealthCheckResponse.SERVING
            in_flight = asyncio.ensure_future(stub.Execute(request(sleep_s=2.0), timeout=15))
            # Signal only once the call is inside the server, and probe for
            # refusal only once the daemon says it drains: fixed sleeps for
            # both were overrun on a loaded machine.
            await eventually(lambda: execute_started(d), timeout_s=15, every_s=0.02,
                             what="Execute started on the server")
            d.signal(signal.SIGTERM)
            await eventually(lambda: logged(d, "draining"), timeout_s=15, every_s=0.02,
                             what="daemon draining")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Execute(request(), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            done = await in_flight
            assert done.agent_id == "echo"
        assert await asyncio.to_thread(d.wait, 20) == 0


async def test_deadline_budget_reaches_handler_and_errors_are_rich(tmp_path: Path) -> None:
    with echo(tmp_path) as d:
        async with create_channel(d.target) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            resp = await stub.Execute(request(), timeout=1.5)
            seen = resp.output.fields["remaining_s"].number_value
            assert 0 < seen <= 1.5
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Execute(request(action="nope"), timeout=3)
            err = from_rpc_error(bad.value)
            assert isinstance(err, InvalidArgument)
            assert err.field_violations == [("action", "only 'echo'")]
            with pytest.raises(grpc.aio.AioRpcError) as unimpl:
                await stub.Evaluate(agent_pb2.EvaluateRequest(), timeout=3)
            assert unimpl.value.code() == grpc.StatusCode.UNIMPLEMENTED
        body = await asyncio.to_thread(scrape_metrics, d.metrics_port)
        assert 'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT"' in body


async def test_tls_refuses_plaintext_and_mtls_requires_client_cert(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    with echo(tmp_path, *tls) as d:
        async with create_channel(d.target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await agent_pb2_grpc.AgentServiceStub(plain).Execute(request(), timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        async with create_channel(d.target, tls_ca_file=str(pki.ca)) as secure:
            assert (
                await agent_pb2_grpc.AgentServiceStub(secure).Execute(request(), timeout=5)
            ).agent_id == "echo"
    with echo(tmp_path, *tls, "--tls-client-ca-file", str(pki.ca)) as d:
        async with create_channel(d.target, tls_ca_file=str(pki.ca)) as no_cert:
            with pytest.raises(grpc.aio.AioRpcError):
                await agent_pb2_grpc.AgentServiceStub(no_cert).Execute(request(), timeout=3)
        async with create_channel(
            d.target,
            tls_ca_file=str(pki.ca),
            client_cert_file=str(pki.client_cert),
            client_key_file=str(pki.client_key),
        ) as mutual:
            assert (
                await agent_pb2_grpc.AgentServiceStub(mutual).Execute(request(), timeout=5)
            ).agent_id == "echo"


async def test_bearer_tokens_identify_callers(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"good": "agent-alpha"}))
    with echo(tmp_path, "--auth-tokens-file", str(tokens)) as d:
        async with create_channel(d.target, token="bad") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await agent_pb2_grpc.AgentServiceStub(ch).Execute(request(), timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Probes need no token.
            assert await health.health_status(ch) == health_pb2.HealthCheckResponse.SERVING
        async with create_channel(d.target) as anon:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await agent_pb2_grpc.AgentServiceStub(anon).Execute(request(), timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with create_channel(d.target, token="good") as ch:
            resp = await agent_pb2_grpc.AgentServiceStub(ch).Execute(request(), timeout=3)
            assert resp.output.fields["identity"].string_value == "agent-alpha"


async def wait_health(ch: grpc.aio.Channel, want: int) -> None:
    await health.wait_health(ch, want, timeout_s=15.0, every_s=0.1)


async def test_health_follows_redis(tmp_path: Path) -> None:
    from tests.infra import RedisServer

    redis = RedisServer(workdir=tmp_path / "redis")
    redis.start()
    try:
        with echo(tmp_path, "--with-redis", "1", "--redis-url", redis.url) as d:
            async with create_channel(d.target) as ch:
                await wait_health(ch, health_pb2.HealthCheckResponse.SERVING)
                redis.stop()
                await wait_health(ch, health_pb2.HealthCheckResponse.NOT_SERVING)
                redis.start()
                await wait_health(ch, health_pb2.HealthCheckResponse.SERVING)
    finally:
        redis.stop()


async def test_sigterm_ends_server_streams_instead_of_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    """A resumable server stream (here health Watch) must not hold a draining
    daemon for its whole grace period: it sees NOT_SERVING, then UNAVAILABLE."""
    with echo(tmp_path, "--grace-period-s", "120") as d:
        async with create_channel(d.target) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            seen = [(await watch.read()).status]
            d.signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    update = await watch.read()
                    assert update is not grpc.aio.EOF, "stream ended without a status"
                    seen.append(update.status)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert seen[0] == health_pb2.HealthCheckResponse.SERVING
        assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        # Well inside the 120 s grace period: the stream did not hold the drain.
        assert await asyncio.to_thread(d.wait, 60) == 0
