"""Every metric the Grafana dashboard and the Prometheus alert rules use is
exported by a live daemon.

The five daemons run as processes on the real Redis and the real Kafka broker,
with two Agent SDK testing agents registered through the registry (they
heartbeat). A little real traffic makes the labelled series exist: a publish
and a subscription (consumer lag, deliveries), a dead letter, a bad publish,
a Route and an Invoke, a saga whose second step fails so the first is
compensated, and a tiny builtin swarm. Then every daemon's /metrics is scraped
and each metric name found in deploy/grafana/agentmesh.json and
deploy/prometheus/rules.yaml (parsed as PromQL) must appear as a sample.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.bus.v1 import bus_pb2, bus_pb2_grpc
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import router_pb2_grpc
from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.swarm.v1 import swarm_pb2, swarm_pb2_grpc
from agentmesh.task.v1 import task_pb2, task_pb2_grpc
from tests.deploy.promql_names import dashboard_exprs, metric_names, rule_exprs
from tests.health import wait_health
from tests.integration.bus.helpers import Sub, env
from tests.procs import DaemonProcess, ProcessGroup, daemon, scrape_metrics, testing_agent
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.slow]

DAEMONS = ("registry", "router", "bus", "saga", "swarm")


@pytest.fixture
def mesh(
    redis_url: str, kafka_broker: Any, tmp_path: Path
) -> Iterator[tuple[dict[str, DaemonProcess], list[str]]]:
    """The five daemons and two registered testing agents; yields (daemons, agent ids)."""
    group = ProcessGroup()
    common = ("--redis-url", redis_url, "--health-interval-s", "0.3")
    try:
        procs = {
            "registry": group.start(daemon("registry", tmp_path, *common,
                                           "--sweep-interval-ms", "200")),
            "router": group.start(daemon("router", tmp_path, *common)),
            "bus": group.start(daemon("bus", tmp_path, *common,
                                      "--kafka-bootstrap", kafka_broker.bootstrap)),
            "saga": group.start(daemon("saga", tmp_path, *common)),
            "swarm": group.start(daemon("swarm", tmp_path, *common)),
        }
        agents = [
            group.start(testing_agent(
                "counting", tmp_path, "--redis-url", redis_url,
                "--registry-target", procs["registry"].target, "--metrics-port", "-1",
                "--fail-actions", "explode",
            ))
            for _ in range(2)
        ]
        yield procs, [a.agent_id for a in agents]
    finally:
        group.stop_all()


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is used ("dashboard: <panel>" / "rules: <alert>")."""
    out: dict[str, set[str]] = {}
    for title, exprs in dashboard_exprs().items():
        for e in exprs:
            for n in metric_names(e):
                out.setdefault(n, set()).add(f"dashboard: {title}")
    for alert, e in rule_exprs().items():
        for n in metric_names(e):
            out.setdefault(n, set()).add(f"rules: {alert}")
    return out


def sample_names(text: str) -> set[str]:
    """Names of the samples in a Prometheus text exposition (`foo_total`,
    `foo_bucket`, ...: what PromQL selects), label children only."""
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


async def drive_traffic(procs: dict[str, DaemonProcess], agent_ids: list[str]) -> None:
    """Real calls that create the labelled series the dashboard and the rules use."""
    topic, grp = f"metrics.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(procs["bus"].target) as ch:
        bus = bus_pb2_grpc.BusServiceStub(ch)
        for i in range(3):
            await bus.Publish(bus_pb2.PublishRequest(message=env(topic, f"m{i}".encode())),
                              timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await bus.Publish(bus_pb2.PublishRequest(message=env("", b"no topic")), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with Sub(bus, [topic], grp, max_deliveries=1) as sub:
            first = await sub.next(timeout_s=60)
            sub.nack(first, reason="poison")  # max_deliveries=1: dead-lettered
            second = await sub.next(timeout_s=30)
            sub.ack(second)
            await sub.next(timeout_s=30)  # the third stays unacked: lag >= 1

            async def lag_reported() -> bool:
                text = await asyncio.to_thread(scrape_metrics, procs["bus"].metrics_port)
                return f'message_bus_consumer_lag{{group="{grp}"}}' in text and \
                    "message_bus_dead_letters_total{" in text

            await eventually(lag_reported, timeout_s=30, every_s=0.2,
                             what="consumer lag and dead letter reported")

    async with grpc.aio.insecure_channel(procs["router"].target) as ch:
        router = router_pb2_grpc.RouterServiceStub(ch)
        msg = R.RouteMessage(message_type="counting")
        msg.payload.struct_value.update({"n": 1})

        async def routed() -> R.RouteResponse | None:
            try:
                return await router.Route(R.RouteRequest(message=msg), timeout=5)
            except grpc.aio.AioRpcError:
                return None  # the pool refresh has not seen the agents yet

        await eventually(routed, timeout_s=30, every_s=0.2, what="router sees the agents")
        out = await router.Invoke(R.InvokeRequest(message=msg, action="work"), timeout=30)
        assert out.agent_id in agent_ids

    async with grpc.aio.insecure_channel(procs["saga"].target) as ch:
        saga = saga_pb2_grpc.SagaServiceStub(ch)
        steps = [
            saga_pb2.Step(name="reserve", agent_id=agent_ids[0], action="reserve",
                          compensation_action="release"),
            saga_pb2.Step(name="charge", agent_id=agent_ids[0], action="explode",
                          compensation_action="refund"),
        ]
        # A pipeline definition, so the pipeline_* series exist too.
        stages = saga_pb2.StageGroup(stages=[saga_pb2.Stage(step=s) for s in steps])
        definition = saga_pb2.SagaDefinition(
            name="checkout", pipeline=saga_pb2.Stage(sequential=stages)
        )
        started = await saga.StartSaga(
            saga_pb2.StartSagaRequest(definition=definition), timeout=30
        )

        async def compensated() -> bool:
            s = (await saga.GetSaga(saga_pb2.GetSagaRequest(saga_id=started.saga.saga_id))).saga
            return s.state == saga_pb2.SAGA_STATE_COMPENSATED

        await eventually(compensated, timeout_s=60, every_s=0.1, what="saga compensated")

        tasks = task_pb2_grpc.TaskServiceStub(ch)  # TaskService is served by the saga daemon
        queued = await tasks.ScheduleTask(task_pb2.ScheduleTaskRequest(
            task_type="work", agent_id=agent_ids[0]), timeout=30)

        async def task_done() -> bool:
            t = (await tasks.GetTask(task_pb2.GetTaskRequest(task_id=queued.task.task_id))).task
            return t.state == task_pb2.TASK_STATE_COMPLETED

        await eventually(task_done, timeout_s=60, every_s=0.1, what="task completed")

    async with grpc.aio.insecure_channel(procs["swarm"].target) as ch:
        swarm = swarm_pb2_grpc.SwarmServiceStub(ch)
        task = swarm_pb2.SwarmTask(
            agents_required=5, max_iterations=5, seed=3,
            builtin=swarm_pb2.BuiltinFitness(
                function=swarm_pb2.BENCHMARK_FUNCTION_SPHERE,
                space=swarm_pb2.SearchSpace(dimensions=2)),
        )
        deployed = await swarm.DeploySwarm(swarm_pb2.DeploySwarmRequest(task=task), timeout=30)

        async def finished() -> bool:
            s = (await swarm.GetSwarm(
                swarm_pb2.GetSwarmRequest(swarm_id=deployed.swarm.swarm_id))).swarm
            return s.state == swarm_pb2.SWARM_STATE_COMPLETED

        await eventually(finished, timeout_s=60, every_s=0.1, what="swarm completed")


async def test_dashboard_and_alert_metrics_are_exported(
    mesh: tuple[dict[str, DaemonProcess], list[str]],
) -> None:
    procs, agent_ids = mesh
    for p in procs.values():
        await wait_health(p.target, health_pb2.HealthCheckResponse.SERVING)
    await drive_traffic(procs, agent_ids)

    used = used_names()
    assert len(used) >= 20, f"the extractor found too few names: {sorted(used)}"

    async def all_exported() -> dict[str, set[str]] | None:
        texts = await asyncio.gather(*(
            asyncio.to_thread(scrape_metrics, procs[d].metrics_port) for d in DAEMONS
        ))
        by_daemon = {d: sample_names(t) for d, t in zip(DAEMONS, texts, strict=True)}
        exported = set().union(*by_daemon.values())
        # The registry's capability gauge refreshes every 5 s: poll, do not sleep.
        return by_daemon if set(used) <= exported else None

    try:
        by_daemon = await eventually(all_exported, timeout_s=30, every_s=0.5,
                                     what="every dashboard/rule metric exported")
    except AssertionError:
        texts = [scrape_metrics(procs[d].metrics_port) for d in DAEMONS]
        exported = set().union(*(sample_names(t) for t in texts))
        missing = {n: sorted(used[n]) for n in sorted(set(used) - exported)}
        raise AssertionError(f"metrics used but not exported by any daemon: {missing}") from None

    # Each daemon exports the runtime's gRPC and health series itself.
    for d, names in by_daemon.items():
        assert {"grpc_server_handled_total", "grpc_health_serving",
                "agentmesh_dependency_up"} <= names, d

    # The series behind the alerts carry the values the alerts assume.
    def samples(d: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        text = scrape_metrics(procs[d].metrics_port)
        return {
            tuple(sorted(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name
        }

    for d in DAEMONS:
        assert samples(d, "grpc_health_serving")[(("grpc_service", ""),)] == 1.0, d
        assert set(samples(d, "agentmesh_dependency_up").values()) == {1.0}, d
    assert samples("registry", "registry_capability_healthy_agents")[
        (("capability", "counting"),)] == 2.0
    assert samples("saga", "saga_compensations_total")[()] >= 1.0
    pipe = samples("saga", "pipeline_executions_total")
    assert pipe[(("pipeline", "checkout"), ("status", "compensated"))] == 1.0
    stage = samples("saga", "pipeline_stage_duration_ms_count")
    assert stage[(("pipeline", "checkout"), ("stage", "reserve"))] == 1.0
    assert samples("saga", "pipeline_throughput")[(("pipeline", "checkout"),)] > 0
    assert samples("saga", "saga_compensation_failures_total")[()] == 0.0
    assert samples("saga", "task_completed_total")[(("status", "completed"), ("type", "work"))] >= 1
    assert samples("router", "routing_breaker_longest_open_seconds")[()] == 0.0
    ended = samples("swarm", "swarm_terminations_total")
    assert sum(v for k, v in ended.items() if k[0][1] in ("converged", "max_iterations")) >= 1.0
