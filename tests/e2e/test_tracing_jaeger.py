"""Traces across the mesh, read back from a real Jaeger (issue 19).

A Jaeger v2 process (built by deploy/local/tools.sh, run with
deploy/local/jaeger.yaml on free ports) takes the spans over OTLP/gRPC; the
saga coordinator, the bus gateway (memory backend) and an SDK agent run as
processes with AGENTMESH_OTLP_ENDPOINT set; the assertions read Jaeger's
HTTP query API (`/api/traces/<id>`), the same data its UI shows.

* A 5-step saga whose third step calls router Invoke and whose fourth
  publishes a bus message: one trace; the
  saga span is the parent of every step span, each step span the parent of
  the coordinator's CLIENT span to the agent, that the parent of the agent's
  Execute SERVER span; rpc.* and agentmesh.* attributes; the publish is a
  PRODUCER span under the agent's Execute, and a consumer span started from
  the delivered envelope links to it; the Invoke goes agent -> router ->
  agent, all in the saga's trace.
* A saga whose third step fails: the failed step's span and its agent call
  carry error status; its compensations are spans of the same trace.
* A saga resumed by a second coordinator after SIGKILL of the first
  continues in the saga's trace.
* A step whose agent writes two messages in one PublishStream batch: a
  PRODUCER span per message under the stream's SERVER span, each message's
  traceparent naming its own; the agent's own `@agent.on_message` handler
  runs inside a CONSUMER span (service tracing-agent) linked to that
  message's producer, and the handler's publish is that span's child.
* A task (TaskService) is one trace: the task's span under ScheduleTask,
  its attempt's span under it, the agent call under the attempt, with
  agentmesh.task.* attributes.
* On the Kafka backend (a real broker), a published record's own Kafka
  headers carry the PRODUCER span's traceparent, and the span's messaging.*
  attributes name the record's partition and offset.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from agentmesh.bus.v1 import bus_pb2_grpc
from agentmesh.client.bus_messages import from_payload
from agentmesh.runtime import tracing
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.task.v1 import task_pb2, task_pb2_grpc
from tests.infra import flush_db
from tests.integration.bus.helpers import Sub
from tests.integration.saga.conftest import events, wait_final
from tests.integration.tasks.conftest import wait_final as wait_task_final
from tests.jaeger import Jaeger, jaeger_binary
from tests.procs import AgentProcess, DaemonProcess, ProcessGroup, daemon
from tests.registry_records import queue_agent_record
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e]

S = saga_pb2
AGENT = Path(__file__).resolve().parent / "tracing_agent.py"
TRACING_DB = 15
AGENT_ID = "tracing-agent-a"
FAST = ("--lease-ttl-ms", "1500", "--renew-interval-ms", "300", "--recovery-interval-ms", "300")


class Trace:
    """A Jaeger trace with spans indexed by id and by operation name."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.spans = raw["spans"]
        self.by_id = {s["spanID"]: s for s in self.spans}
        procs = raw["processes"]
        for s in self.spans:
            s["service"] = procs[s["processID"]]["serviceName"]
            s["tagmap"] = {t["key"]: t["value"] for t in s.get("tags", [])}

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["operationName"] == name]

    def parent(self, span: dict[str, Any]) -> dict[str, Any] | None:
        for ref in span.get("references", []):
            if ref["refType"] == "CHILD_OF":
                return self.by_id.get(ref["spanID"])
        return None

    def children(self, span: dict[str, Any], name: str) -> list[dict[str, Any]]:
        return [s for s in self.named(name) if self.parent(s) is span]


def _is_error(span: dict[str, Any]) -> bool:
    return span["tagmap"].get("otel.status_code") == "ERROR" or span["tagmap"].get("error") is True


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    if jaeger_binary() is None:
        pytest.skip("jaeger is not built: bash deploy/local/tools.sh jaeger")
    j = Jaeger(tmp_path_factory.mktemp("jaeger"))
    try:
        yield j
    finally:
        j.stop()


@pytest.fixture(scope="module")
def url(redis_server: Any) -> str:
    return flush_db(redis_server.url_for_db(TRACING_DB))


@pytest.fixture(scope="module")
def otel_env(jaeger: Jaeger) -> dict[str, str]:
    # Export within 100 ms instead of the SDK's 5 s, so a test waits less.
    return {"AGENTMESH_OTLP_ENDPOINT": jaeger.otlp, "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def mesh(
    url: str, otel_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonProcess]]:
    """The bus gateway (memory backend), a saga coordinator and the agent."""
    log_dir = tmp_path_factory.mktemp("mesh")
    group = ProcessGroup()
    try:
        bus = group.start(daemon("bus", log_dir, "--backend", "memory", "--redis-url", url,
                                 env=otel_env))
        router = group.start(daemon("router", log_dir, "--redis-url", url, env=otel_env))
        agent = group.start(AgentProcess(
            [str(AGENT), "--agent-id", AGENT_ID, "--port", "0", "--metrics-port", "-1",
             "--bus-target", bus.target, "--router-target", router.target],
            log_dir / "agent.log", agent_id=AGENT_ID, env=otel_env,
        ))
        with redis.Redis.from_url(url).pipeline() as pipe:
            queue_agent_record(pipe, AGENT_ID, endpoint=agent.target,
                               capabilities=["tracing_test"])
            pipe.execute()
        saga = group.start(daemon("saga", log_dir, "--redis-url", url, *FAST, env=otel_env))
        yield {"bus": bus, "agent": agent, "saga": saga, "log_dir": log_dir}  # type: ignore[dict-item]
    finally:
        group.stop_all()


def _step(name: str, action: str = "work", deps: tuple[str, ...] = ()) -> saga_pb2.Step:
    return S.Step(name=name, agent_id=AGENT_ID, action=action, compensation_action="undo",
                  depends_on=list(deps))


def _chain(actions: list[tuple[str, str]]) -> list[saga_pb2.Step]:
    return [_step(n, a, (actions[i - 1][0],) if i else ()) for i, (n, a) in enumerate(actions)]


async def _run(target: str, steps: list[saga_pb2.Step], **input: Any) -> tuple[str, str, Any]:
    """Start a saga, wait for its end; (saga id, trace id, final saga)."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = saga_pb2_grpc.SagaServiceStub(ch)
        req = S.StartSagaRequest(definition=S.SagaDefinition(name="traced", steps=steps))
        req.input.update(input)
        saga_id = (await stub.StartSaga(req)).saga.saga_id
        saga = await wait_final(stub, saga_id)
        started = (await events(stub, saga_id))[0]
    assert started.type == S.SAGA_EVENT_TYPE_SAGA_STARTED and started.traceparent
    return saga_id, started.traceparent.split("-")[1], saga


async def _trace(jaeger: Jaeger, trace_id: str, ready: Any) -> Trace:
    """The trace once `ready(trace)` holds (spans arrive in batches)."""
    box: dict[str, Trace] = {}

    def check() -> bool:
        raw = jaeger.trace(trace_id)
        if raw is None:
            return False
        box["t"] = Trace(raw)
        return bool(ready(box["t"]))

    await eventually(check, timeout_s=20, every_s=0.2, what=f"trace {trace_id} in jaeger")
    return box["t"]


EXECUTE = "agentmesh.agent.v1.AgentService/Execute"
INVOKE = "agentmesh.router.v1.RouterService/Invoke"
COMPENSATE = "agentmesh.agent.v1.AgentService/Compensate"


async def test_saga_is_one_trace_saga_step_agent_and_bus(
    mesh: dict[str, Any], jaeger: Jaeger
) -> None:
    topic = "tracing.e2e.events"
    async with grpc.aio.insecure_channel(mesh["bus"].target) as bch:
        async with Sub(bus_pb2_grpc.BusServiceStub(bch), [topic], "tracing-e2e") as sub:
            steps = _chain([("s1", "work"), ("s2", "work"), ("s3", "invoke"),
                            ("s4", "publish"), ("s5", "work")])
            saga_id, trace_id, saga = await _run(mesh["saga"].target, steps, topic=topic)
            assert saga.state == S.SAGA_STATE_COMPLETED
            received = await sub.next()
    env = received.envelope
    assert env.headers["traceparent"].split("-")[1] == trace_id
    # The subscriber's side: a consumer span linked to the producer's context.
    assert tracing.configure_tracing(service_name="tracing-e2e-consumer",
                                     otlp_endpoint=jaeger.otlp)
    try:
        with tracing.consumer_span(topic=env.topic, headers=env.headers, message_id=env.id,
                                   key=env.key, partition=received.position.partition,
                                   offset=received.position.offset, group="tracing-e2e") as cs:
            consumer_trace = format(cs.get_span_context().trace_id, "032x")
            consumer_id = format(cs.get_span_context().span_id, "016x")
    finally:
        tracing.shutdown_tracing()

    def complete(t: Trace) -> bool:
        return len(t.named(EXECUTE)) >= 12 and len(t.named(f"publish {topic}")) == 1

    t = await _trace(jaeger, trace_id, complete)
    assert {s["traceID"] for s in t.spans} == {trace_id}
    (saga_span,) = t.named("saga traced")
    assert saga_span["tagmap"]["agentmesh.saga.id"] == saga_id
    assert saga_span["service"] == "agentmesh-saga"
    start_rpc = t.parent(saga_span)
    assert start_rpc is not None
    assert start_rpc["operationName"] == "agentmesh.saga.v1.SagaService/StartSaga"
    for name in ("s1", "s2", "s3", "s4", "s5"):
        (step,) = t.named(f"saga.step {name}")
        assert t.parent(step) is saga_span
        assert step["tagmap"]["agentmesh.saga.step"] == name
        assert step["tagmap"]["agentmesh.idempotency_key"] == f"{saga_id}/{name}"
        assert step["tagmap"]["agentmesh.attempt"] == 1
        (client,) = t.children(step, EXECUTE)
        tags = client["tagmap"]
        assert client["service"] == "agentmesh-saga"
        assert tags["span.kind"] == "client"
        assert (tags["rpc.system"], tags["rpc.service"], tags["rpc.method"]) == (
            "grpc", "agentmesh.agent.v1.AgentService", "Execute")
        assert tags["rpc.grpc.status_code"] == 0
        assert tags["agentmesh.agent.id"] == AGENT_ID
        assert tags["agentmesh.saga.id"] == saga_id
        assert tags["agentmesh.routing.strategy"] == "STRATEGY_FAILOVER"
        (server,) = t.children(client, EXECUTE)
        assert server["service"] == "tracing-agent"
        assert server["tagmap"]["span.kind"] == "server"
        assert server["tagmap"]["rpc.grpc.status_code"] == 0
    # s3's agent calls router Invoke: its Execute -> Invoke CLIENT -> Invoke
    # SERVER (router) -> the router's CLIENT Execute -> the agent's SERVER Execute.
    (step3,) = t.named("saga.step s3")
    s3_exec = t.children(t.children(step3, EXECUTE)[0], EXECUTE)[0]
    (inv_client,) = t.children(s3_exec, INVOKE)
    (inv_server,) = t.children(inv_client, INVOKE)
    assert inv_server["service"] == "agentmesh-router"
    assert inv_server["tagmap"]["rpc.service"] == "agentmesh.router.v1.RouterService"
    (router_call,) = t.children(inv_server, EXECUTE)
    assert router_call["service"] == "agentmesh-router"
    # Invoke without a strategy: the router's default, least loaded.
    assert router_call["tagmap"]["agentmesh.routing.strategy"] == "STRATEGY_LEAST_LOADED"
    assert router_call["tagmap"]["agentmesh.idempotency_key"] == f"{saga_id}/s3/invoke"
    (invoked,) = t.children(router_call, EXECUTE)
    assert invoked["service"] == "tracing-agent"
    # The agent's publish: Execute (agent) -> Publish CLIENT -> Publish SERVER
    # (gateway) -> PRODUCER span with the messaging attributes.
    (producer,) = t.named(f"publish {topic}")
    ptags = producer["tagmap"]
    assert producer["service"] == "agentmesh-bus"
    assert ptags["span.kind"] == "producer"
    assert ptags["messaging.system"] == "kafka"
    assert ptags["messaging.destination.name"] == topic
    assert ptags["messaging.kafka.message.key"] == f"{saga_id}/s4"
    assert ptags["messaging.kafka.offset"] == received.position.offset
    assert ptags["messaging.destination.partition.id"] == str(received.position.partition)
    publish_server = t.parent(producer)
    assert publish_server is not None
    assert publish_server["operationName"] == "agentmesh.bus.v1.BusService/Publish"
    publish_client = t.parent(publish_server)
    assert publish_client is not None and publish_client["service"] == "tracing-agent"
    agent_execute = t.parent(publish_client)
    assert agent_execute is not None and agent_execute["operationName"] == EXECUTE
    step4 = t.parent(t.parent(agent_execute))  # type: ignore[arg-type]
    assert step4 is not None and step4["operationName"] == "saga.step s4"
    assert env.headers["traceparent"].split("-")[2] == producer["spanID"]

    # The consumer span: its own trace, linked (FOLLOWS_FROM) to the producer.
    def linked(ct: Trace) -> bool:
        return bool(ct.named(f"process {topic}"))

    ct = await _trace(jaeger, consumer_trace, linked)
    (consumer,) = ct.named(f"process {topic}")
    assert consumer["spanID"] == consumer_id
    assert consumer["tagmap"]["span.kind"] == "consumer"
    assert consumer["tagmap"]["messaging.consumer.group.name"] == "tracing-e2e"
    refs = {(r["refType"], r["traceID"], r["spanID"]) for r in consumer["references"]}
    assert ("FOLLOWS_FROM", trace_id, producer["spanID"]) in refs


async def test_failed_step_has_error_status_and_compensations_join_the_trace(
    mesh: dict[str, Any], jaeger: Jaeger
) -> None:
    steps = _chain([("a", "work"), ("b", "work"), ("c", "fail")])
    saga_id, trace_id, saga = await _run(mesh["saga"].target, steps)
    assert saga.state == S.SAGA_STATE_COMPENSATED

    def complete(t: Trace) -> bool:
        steps = [t.named(f"saga.step {n}") for n in "abc"]
        return (len(t.named(COMPENSATE)) >= 4 and all(len(x) == 1 for x in steps)
                and all(t.children(x[0], EXECUTE) for x in steps))

    t = await _trace(jaeger, trace_id, complete)
    (saga_span,) = t.named("saga traced")
    (failed,) = t.named("saga.step c")
    assert _is_error(failed)
    assert failed["tagmap"]["agentmesh.error.code"] == "FAILED_PRECONDITION"
    (client,) = t.children(failed, EXECUTE)
    assert _is_error(client)
    assert client["tagmap"]["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    for ok in ("a", "b"):
        (s,) = t.named(f"saga.step {ok}")
        assert not _is_error(s)
        (comp,) = t.named(f"saga.compensate {ok}")
        assert t.parent(comp) is saga_span
        assert comp["tagmap"]["agentmesh.idempotency_key"] == f"{saga_id}/{ok}/compensate"
        (cclient,) = t.children(comp, COMPENSATE)
        assert not _is_error(cclient)


async def test_saga_resumed_after_sigkill_continues_in_the_same_trace(
    mesh: dict[str, Any], url: str, otel_env: dict[str, str], jaeger: Jaeger
) -> None:
    log_dir = mesh["log_dir"]
    first = daemon("saga", log_dir, "--redis-url", url, *FAST, env=otel_env).start()
    try:
        async with grpc.aio.insecure_channel(first.target) as ch:
            stub = saga_pb2_grpc.SagaServiceStub(ch)
            req = S.StartSagaRequest(definition=S.SagaDefinition(
                name="traced", steps=_chain([("r1", "work"), ("r2", "slow"), ("r3", "work")])))
            saga_id = (await stub.StartSaga(req)).saga.saga_id

            async def in_slow_step() -> bool:
                return any(e.type == S.SAGA_EVENT_TYPE_STEP_STARTED and e.step_name == "r2"
                           for e in await events(stub, saga_id))

            await eventually(in_slow_step, timeout_s=15, every_s=0.05, what="r2 started")
            # Let the exporter (100 ms batches) send the saga span and r1's
            # spans; r2's first attempt dies unexported with the process.
            await asyncio.sleep(0.5)
            first_owner = next(e.coordinator_id for e in await events(stub, saga_id)
                               if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED)
            first.kill()
    finally:
        first.kill()
    # The module's coordinator takes the saga over once the lease expires.
    async with grpc.aio.insecure_channel(mesh["saga"].target) as ch:
        stub = saga_pb2_grpc.SagaServiceStub(ch)
        saga = await wait_final(stub, saga_id)
        evs = await events(stub, saga_id)
    assert saga.state == S.SAGA_STATE_COMPLETED
    owners = [e.coordinator_id for e in evs if e.type == S.SAGA_EVENT_TYPE_LEASE_ACQUIRED]
    assert owners[0] == first_owner and owners[-1] != first_owner
    trace_id = evs[0].traceparent.split("-")[1]

    def resumed(t: Trace) -> bool:
        return bool(t.named("saga.step r3")) and len(t.named("saga.step r2")) >= 1

    t = await _trace(jaeger, trace_id, resumed)
    (saga_span,) = t.named("saga traced")
    # r2's second attempt and r3 ran in the second coordinator, still as
    # children of the saga span the first one made.
    r2 = [s for s in t.named("saga.step r2") if s["tagmap"]["agentmesh.attempt"] == 2]
    assert r2, "the re-sent attempt of r2 is in the trace"
    for s in [*r2, *t.named("saga.step r3")]:
        assert t.parent(s) is saga_span
        assert s["traceID"] == trace_id
    (r3,) = t.named("saga.step r3")
    (client,) = t.children(r3, EXECUTE)
    assert t.children(client, EXECUTE), "the agent's Execute span is in the same trace"


PUBLISH_STREAM = "agentmesh.bus.v1.BusService/PublishStream"
INBOX, ACKS = "tracing.e2e.inbox", "tracing.e2e.acks"


async def test_publish_stream_spans_and_on_message_runs_in_the_consumer_span(
    mesh: dict[str, Any], jaeger: Jaeger
) -> None:
    async with grpc.aio.insecure_channel(mesh["bus"].target) as bch:
        async with Sub(bus_pb2_grpc.BusServiceStub(bch), [ACKS], "tracing-e2e-acks") as sub:
            saga_id, trace_id, saga = await _run(
                mesh["saga"].target, [_step("ps", "publish_stream")], topic=INBOX, count=2)
            assert saga.state == S.SAGA_STATE_COMPLETED
            acks = [from_payload(m.envelope.payload) for m in await sub.take(2)]
    keys = {f"{saga_id}/ps/0", f"{saga_id}/ps/1"}
    dicts = [a for a in acks if isinstance(a, dict)]
    assert len(dicts) == 2 and {a["key"] for a in dicts} == keys

    def complete(t: Trace) -> bool:
        return len(t.named(f"publish {INBOX}")) == 2

    t = await _trace(jaeger, trace_id, complete)
    (stream_server,) = [s for s in t.named(PUBLISH_STREAM) if s["service"] == "agentmesh-bus"]
    stream_client = t.parent(stream_server)
    assert stream_client is not None and stream_client["service"] == "tracing-agent"
    assert t.parent(stream_client)["operationName"] == EXECUTE  # type: ignore[index]
    producers = t.named(f"publish {INBOX}")
    by_key = {p["tagmap"]["messaging.kafka.message.key"]: p for p in producers}
    assert set(by_key) == keys
    for p in producers:
        assert t.parent(p) is stream_server
        tags = p["tagmap"]
        assert tags["span.kind"] == "producer"
        assert (tags["messaging.system"], tags["messaging.destination.name"]) == ("kafka", INBOX)
        assert "messaging.kafka.offset" in tags and "messaging.destination.partition.id" in tags
    assert len({p["spanID"] for p in producers}) == 2

    # Each handler ran in its own CONSUMER span, linked to its message's producer.
    for ack in acks:
        assert isinstance(ack, dict)
        producer = by_key[ack["key"]]

        def handled(ct: Trace, ack: dict[str, Any] = ack) -> bool:
            return any(s["spanID"] == ack["span_id"] for s in ct.spans) and bool(
                ct.named(f"publish {ACKS}"))

        ct = await _trace(jaeger, ack["trace_id"], handled)
        consumer = ct.by_id[ack["span_id"]]
        assert consumer["operationName"] == f"process {INBOX}"
        assert consumer["service"] == "tracing-agent"
        ctags = consumer["tagmap"]
        assert ctags["span.kind"] == "consumer"
        assert ctags["messaging.consumer.group.name"] == "tracing-agent-inbox"
        assert ctags["messaging.message.id"] == ack["handled"]
        assert ctags["messaging.kafka.message.key"] == ack["key"]
        refs = {(r["refType"], r["traceID"], r["spanID"]) for r in consumer["references"]}
        assert ("FOLLOWS_FROM", trace_id, producer["spanID"]) in refs
        # The handler's own publish: Publish CLIENT under the consumer span.
        (pub_client,) = [s for s in ct.children(consumer, "agentmesh.bus.v1.BusService/Publish")]
        assert pub_client["service"] == "tracing-agent"


async def test_a_task_is_one_trace_task_attempt_agent(
    mesh: dict[str, Any], jaeger: Jaeger
) -> None:
    async with grpc.aio.insecure_channel(mesh["saga"].target) as ch:
        stub = task_pb2_grpc.TaskServiceStub(ch)
        task = (await stub.ScheduleTask(task_pb2.ScheduleTaskRequest(
            task_type="work", agent_id=AGENT_ID))).task
        assert task.traceparent
        final = await wait_task_final(stub, task.task_id)
    assert final.state == task_pb2.TASK_STATE_COMPLETED
    assert final.traceparent == task.traceparent
    trace_id = task.traceparent.split("-")[1]

    def complete(t: Trace) -> bool:
        return bool(t.named("task.attempt work")) and len(t.named(EXECUTE)) >= 2

    t = await _trace(jaeger, trace_id, complete)
    (task_span,) = t.named("task work")
    assert task_span["service"] == "agentmesh-saga"
    assert task_span["tagmap"]["agentmesh.task.id"] == task.task_id
    assert task_span["tagmap"]["agentmesh.task.type"] == "work"
    schedule = t.parent(task_span)
    assert schedule is not None
    assert schedule["operationName"] == "agentmesh.task.v1.TaskService/ScheduleTask"
    (attempt,) = t.named("task.attempt work")
    assert t.parent(attempt) is task_span
    assert attempt["tagmap"]["agentmesh.attempt"] == 1
    assert attempt["tagmap"]["agentmesh.idempotency_key"] == f"task/{task.task_id}"
    assert not _is_error(attempt)
    (client,) = t.children(attempt, EXECUTE)
    assert client["tagmap"]["agentmesh.task.id"] == task.task_id
    assert client["tagmap"]["agentmesh.agent.id"] == AGENT_ID
    (server,) = t.children(client, EXECUTE)
    assert server["service"] == "tracing-agent"


@pytest.mark.kafka
async def test_kafka_record_headers_carry_the_producer_span(
    url: str, otel_env: dict[str, str], jaeger: Jaeger, kafka_broker: Any,
    tmp_path: Path,
) -> None:
    """On the Kafka backend the PRODUCER span's context is in the record's own
    Kafka headers (what a plain Kafka consumer sees), and its messaging.*
    attributes name the record's real partition and offset."""
    from confluent_kafka import Consumer, TopicPartition

    from agentmesh.bus.v1 import bus_pb2
    from agentmesh.common.v1 import common_pb2

    topic = f"tracing.kafka.{uuid.uuid4().hex[:8]}"
    bus = daemon("bus", tmp_path, "--backend", "kafka", "--kafka-bootstrap",
                 kafka_broker.bootstrap, "--redis-url", url, env=otel_env).start()
    try:
        async with grpc.aio.insecure_channel(bus.target) as ch:
            env = bus_pb2.Envelope(topic=topic, key="valve-7", payload=common_pb2.Payload(
                bytes_value=b"open", content_type="text/plain"))
            pos = (await bus_pb2_grpc.BusServiceStub(ch).Publish(
                bus_pb2.PublishRequest(message=env), timeout=30)).position
    finally:
        bus.stop()

    def read_record() -> Any:
        c = Consumer({"bootstrap.servers": kafka_broker.bootstrap,
                      "group.id": f"raw-{topic}", "enable.auto.commit": False})
        try:
            c.assign([TopicPartition(topic, pos.partition, pos.offset)])
            msg = c.poll(15)
            assert msg is not None and msg.error() is None, msg
            return msg
        finally:
            c.close()

    record = await asyncio.to_thread(read_record)
    headers = {k: (v or b"").decode() for k, v in record.headers() or []}
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled (bit 2 may mark a random id)

    t = await _trace(jaeger, trace_id, lambda t: bool(t.named(f"publish {topic}")))
    (producer,) = t.named(f"publish {topic}")
    assert producer["spanID"] == span_id and producer["service"] == "agentmesh-bus"
    tags = producer["tagmap"]
    assert tags["span.kind"] == "producer"
    assert (tags["messaging.system"], tags["messaging.destination.name"]) == ("kafka", topic)
    assert tags["messaging.kafka.message.key"] == "valve-7"
    assert tags["messaging.kafka.offset"] == record.offset() == pos.offset
    assert tags["messaging.destination.partition.id"] == str(record.partition())
    server = t.parent(producer)
    assert server is not None
    assert server["operationName"] == "agentmesh.bus.v1.BusService/Publish"
