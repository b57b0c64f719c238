"""The bus gateway against a broker that requires SASL: with the right
AGENTMESH_KAFKA_SECURITY_PROTOCOL / SASL settings it serves, publishes and
delivers; with a wrong password it reports NOT_SERVING and refuses publishes
with UNAVAILABLE instead of losing them. A private KRaft broker with a
SASL_PLAINTEXT (PLAIN) listener, started by deploy/local/kafka.sh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.runtime.errors import Unavailable, from_rpc_error
from tests import health
from tests.conftest import _unavailable
from tests.infra import InfraError, KafkaBroker
from tests.integration.bus.conftest import unique
from tests.integration.bus.helpers import Sub, env
from tests.procs import daemon

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

USER, PASSWORD = "agentmesh-bus", "s3cret-for-tests"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(
        workdir=tmp_path_factory.mktemp("kafka-sasl"), sasl_users={USER: PASSWORD}
    )
    try:
        broker.start()
    except InfraError as e:
        _unavailable("Kafka with SASL", e)
    try:
        yield broker
    finally:
        broker.stop()


def sasl_env(password: str) -> dict[str, str]:
    return {
        "AGENTMESH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "AGENTMESH_KAFKA_SASL_MECHANISM": "PLAIN",
        "AGENTMESH_KAFKA_SASL_USERNAME": USER,
        "AGENTMESH_KAFKA_SASL_PASSWORD": password,
    }


async def test_gateway_publishes_and_delivers_over_sasl(
    tmp_path: Path, sasl_broker: KafkaBroker
) -> None:
    topic = unique("sasl")
    with daemon(
        "bus", tmp_path, "--kafka-bootstrap", sasl_broker.sasl_bootstrap,
        "--health-interval-s", "0.3", env=sasl_env(PASSWORD),
    ) as proc:
        await health.wait_health(proc.target, health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            async with Sub(stub, [topic], unique("g")) as sub:
                resp = await stub.Publish(
                    bus_pb2.PublishRequest(message=env(topic, b"over sasl")), timeout=30
                )
                got = await sub.next()
                sub.ack(got)
    assert got.envelope.payload.bytes_value == b"over sasl"
    assert got.envelope.id == resp.id


async def test_wrong_sasl_password_is_not_serving_and_publish_unavailable(
    tmp_path: Path, sasl_broker: KafkaBroker
) -> None:
    with daemon(
        "bus", tmp_path, "--kafka-bootstrap", sasl_broker.sasl_bootstrap,
        "--health-interval-s", "0.3", "--delivery-timeout-ms", "3000",
        env=sasl_env("wrong-password"),
    ) as proc:
        await health.wait_health(proc.target, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = bus_pb2_grpc.BusServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Publish(
                    bus_pb2.PublishRequest(message=env(unique("sasl"), b"x")), timeout=20
                )
    err = from_rpc_error(ei.value)
    assert isinstance(err, Unavailable), err
