"""helm-unittest-style assertions on `helm template` output: what each value
does to the rendered objects, and that the rendered settings are ones the
daemons accept and act on (they are fed to the daemons' own config loader and
client builders, not just string-matched)."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
import yaml
from redis.asyncio.cluster import RedisCluster

from agentmesh.runtime.config import ServerConfig, load_config
from agentmesh.runtime.deps import (
    BlockingSentinelConnectionPool,
    kafka_security_config,
    redis_from_config,
)
from agentmesh.runtime.settings import Settings, schema_properties, setting_specs
from tests.deploy.chart import (
    CHART,
    DAEMONS,
    RELEASE,
    by_kind,
    container,
    daemon_env,
    render,
    render_error,
)

#: values-ha.yaml with Redis Cluster instead of Sentinel (its documented overlay).
HA_REDIS_CLUSTER = ("values-ha.yaml", "values-ha-redis-cluster.yaml")
PORTS = {"bus": 50051, "router": 50052, "registry": 50053, "saga": 50054, "swarm": 50055}
PER_DAEMON_KINDS = ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget")


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def settings_class(daemon: str) -> type[Settings]:
    """The daemon's settings class (services/<daemon>/settings.py SETTINGS)."""
    cls: type[Settings] = importlib.import_module(f"agentmesh.server.{daemon}.settings").SETTINGS
    return cls


def test_every_daemon_gets_its_objects_and_grpc_health_probes() -> None:
    docs = render()
    for daemon, port in PORTS.items():
        name = f"{RELEASE}-{daemon}"
        for kind in PER_DAEMON_KINDS:
            assert name in by_kind(docs, kind), f"no {kind} {name}"
        dep = by_kind(docs, "Deployment")[name]
        c = container(dep)
        assert c["args"] == [daemon]  # the image's entrypoint picks the daemon
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
            "grpc": port,
            "metrics": 9101 + port - 50051,
        }
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # kubelet-native gRPC probe: grpc.health.v1 Check on the daemon's port
            assert c[probe]["grpc"] == {"port": port}, probe
        assert daemon_env(docs, daemon)["AGENTMESH_PORT"] == str(port)
        svc = by_kind(docs, "Service")[name]
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == daemon


def test_security_context_is_locked_down_everywhere() -> None:
    docs = render(values=("ci/secure-values.yaml",))
    pods = [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment").values()]
    pods += [d["spec"] for d in by_kind(docs, "Pod").values()]  # the helm test pod too
    assert len(pods) == 6
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
    for dep in by_kind(docs, "Deployment").values():
        spec = dep["spec"]["template"]["spec"]
        # the one writable path, on an emptyDir
        assert {"name": "tmp", "mountPath": "/tmp"} in container(dep)["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_disabling_a_daemon_removes_all_its_objects(daemon: str) -> None:
    docs = render(f"{daemon}.enabled=false", f"{daemon}.autoscaling.enabled=true")
    gone = f"{RELEASE}-{daemon}"
    assert not [d["kind"] for d in docs if d["metadata"]["name"] == gone]
    test_pod = next(iter(by_kind(docs, "Pod").values()))
    assert f"health-{daemon}" not in {c["name"] for c in test_pod["spec"]["containers"]}
    others = [d for d in DAEMONS if d != daemon]
    assert set(by_kind(docs, "Deployment")) == {f"{RELEASE}-{d}" for d in others}


def test_per_daemon_values_reach_only_that_daemon() -> None:
    docs = render(
        "router.replicaCount=4",
        "router.resources.requests.cpu=1",
        "router.nodeSelector.pool=mesh",
        "router.tolerations[0].key=dedicated",
        "router.tolerations[0].operator=Exists",
        "router.extraEnv[0].name=AGENTMESH_LOG_LEVEL",
        "router.extraEnv[0].value=DEBUG",
        "router.ports.grpc=6000",
        "router.config.default_strategy=least_loaded",
        "global.nodeSelector.arch=amd64",
    )
    deps = by_kind(docs, "Deployment")
    router, registry = deps["mesh-router"], deps["mesh-registry"]
    assert router["spec"]["replicas"] == 4 and registry["spec"]["replicas"] == 2
    pod = router["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "mesh", "arch": "amd64"}
    assert registry["spec"]["template"]["spec"]["nodeSelector"] == {"arch": "amd64"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert "tolerations" not in registry["spec"]["template"]["spec"]
    assert container(router)["resources"]["requests"]["cpu"] == 1
    env = daemon_env(docs, "router")
    # env wins over the ConfigMap's envFrom, so extraEnv overrides the chart
    assert env["AGENTMESH_LOG_LEVEL"] == "DEBUG"
    assert daemon_env(docs, "registry")["AGENTMESH_LOG_LEVEL"] == "INFO"
    assert env["AGENTMESH_DEFAULT_STRATEGY"] == "least_loaded"
    assert "AGENTMESH_DEFAULT_STRATEGY" not in daemon_env(docs, "registry")
    # the new port reaches the container, its probes, its Service and its peers
    assert container(router)["readinessProbe"]["grpc"]["port"] == 6000
    assert by_kind(docs, "Service")["mesh-router"]["spec"]["ports"][0]["port"] == 6000
    assert daemon_env(docs, "saga")["AGENTMESH_ROUTER_TARGET"] == "mesh-router.agentmesh.svc:6000"


def test_image_tag_defaults_to_app_version_and_can_be_pinned() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = container(by_kind(render(), "Deployment")["mesh-bus"])["image"]
    assert image == f"ghcr.io/agentmesh/agentmesh:{chart['appVersion']}"
    pinned = render("global.image.tag=1.2.3", "global.image.registry=")
    assert container(by_kind(pinned, "Deployment")["mesh-bus"])["image"] == (
        "agentmesh/agentmesh:1.2.3"
    )


def test_autoscaling_adds_an_hpa_and_leaves_replicas_to_it() -> None:
    docs = render(values=("ci/ha-values.yaml",))
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"mesh-bus", "mesh-router"}
    assert hpas["mesh-router"]["spec"]["scaleTargetRef"]["name"] == "mesh-router"
    deps = by_kind(docs, "Deployment")
    assert "replicas" not in deps["mesh-router"]["spec"]
    assert deps["mesh-registry"]["spec"]["replicas"] == 3
    assert not by_kind(render(), "HorizontalPodAutoscaler")


def test_ha_example_runs_three_replicas_with_pdbs_and_matches_its_ci_copy() -> None:
    assert (CHART / "values-ha.yaml").read_text() == (CHART / "ci/ha-values.yaml").read_text()
    docs = render(values=("values-ha.yaml",))
    deps = by_kind(docs, "Deployment")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for daemon in DAEMONS:
        name = f"{RELEASE}-{daemon}"
        replicas = (
            hpas[name]["spec"]["minReplicas"] if name in hpas else deps[name]["spec"]["replicas"]
        )
        assert replicas == 3
        assert by_kind(docs, "PodDisruptionBudget")[name]["spec"] == {
            "minAvailable": 2,
            "selector": deps[name]["spec"]["selector"],
        }
        strategy = deps[name]["spec"]["strategy"]["rollingUpdate"]
        assert strategy == {"maxUnavailable": 0, "maxSurge": 1}


def test_termination_grace_outlasts_the_daemons_drain() -> None:
    docs = render("global.gracePeriodSeconds=40", "global.preStopSleepSeconds=7")
    for dep in by_kind(docs, "Deployment").values():
        spec = dep["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == 57
        assert container(dep)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert daemon_env(docs, "saga")["AGENTMESH_GRACE_PERIOD_S"] == "40"


def test_config_change_rolls_the_pods() -> None:
    def checksum(*sets: str) -> str:
        dep = by_kind(render(*sets), "Deployment")["mesh-saga"]
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("global.logFormat=text")
    assert checksum() == checksum("bus.replicaCount=5")


def test_pdbs_can_be_turned_off_per_daemon() -> None:
    docs = render("swarm.podDisruptionBudget.enabled=false")
    assert set(by_kind(docs, "PodDisruptionBudget")) == {
        f"{RELEASE}-{d}" for d in DAEMONS if d != "swarm"
    }


def test_network_policy_opens_only_grpc_and_metrics() -> None:
    docs = render(values=("ci/monitoring-values.yaml",))
    policies = by_kind(docs, "NetworkPolicy")
    assert set(policies) == {f"{RELEASE}-{d}" for d in DAEMONS}
    spec = policies["mesh-saga"]["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "saga"
    grpc_rule, metrics_rule = spec["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    # the release's own daemons and helm test pod stay allowed
    release = {"app.kubernetes.io/name": "agentmesh", "app.kubernetes.io/instance": RELEASE}
    assert grpc_rule["from"][0] == {"podSelector": {"matchLabels": release}}
    test_pod = next(iter(by_kind(docs, "Pod").values()))
    assert release.items() <= test_pod["metadata"]["labels"].items()
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert not by_kind(render(), "NetworkPolicy")


def test_helm_test_pod_probes_every_daemon_with_grpc_health_probe() -> None:
    (pod,) = by_kind(render(), "Pod").values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    targets = {}
    for c in pod["spec"]["containers"]:
        assert c["command"] == ["grpc-health-probe"]
        targets[c["name"]] = c["args"][0]
    assert targets == {
        f"health-{d}": f"-addr={RELEASE}-{d}.agentmesh.svc:{p}" for d, p in PORTS.items()
    }


def test_tls_switches_probes_to_grpc_health_probe_with_the_mounted_certs() -> None:
    docs = render(values=("ci/secure-values.yaml",))
    c = container(by_kind(docs, "Deployment")["mesh-registry"])
    command = c["readinessProbe"]["exec"]["command"]
    assert command[:3] == ["grpc-health-probe", "-addr=127.0.0.1:50053", "-tls"]
    assert "-tls-server-name=mesh-registry.agentmesh.svc" in command
    assert "-tls-client-cert=/etc/agentmesh/tls/tls.crt" in command  # mTLS is on
    assert {"name": "tls", "mountPath": "/etc/agentmesh/tls", "readOnly": True} in c["volumeMounts"]
    (pod,) = by_kind(docs, "Pod").values()
    assert all("-tls" in x["args"] for x in pod["spec"]["containers"])


def test_ha_values_give_bus_topics_replication_factor_3_and_min_isr_2() -> None:
    """values-ha sets the bus's topic replication explicitly (bus.config), so
    a gateway that starts while brokers are down still creates RF 3 topics."""
    from agentmesh.server.bus.settings import BusSettings

    for values in (("values-ha.yaml",), HA_REDIS_CLUSTER):
        env = daemon_env(render(values=values), "bus")
        assert env["AGENTMESH_KAFKA_TOPIC_REPLICATION_FACTOR"] == "3", values
        assert env["AGENTMESH_KAFKA_TOPIC_MIN_INSYNC_REPLICAS"] == "2", values
        bus = load_config("bus", [], settings=BusSettings, environ=env)
        spec = bus.settings_as(BusSettings).topic_defaults()
        assert (spec.replication_factor, spec.min_insync_replicas) == (3, 2), values
    # the defaults leave it to the gateway (-1 / 0: RF 3 / min ISR 2 once it sees 3 brokers)
    assert "AGENTMESH_KAFKA_TOPIC_REPLICATION_FACTOR" not in daemon_env(render(), "bus")


def test_redis_cluster_nodes_reach_every_daemon() -> None:
    """global.redis.cluster.nodes: off by default; set, every daemon's
    Deployment gets them comma-joined through its ConfigMap (envFrom), and the
    daemon's loader reads them as its cluster startup nodes."""
    off = render()
    for daemon in DAEMONS:
        assert "AGENTMESH_REDIS_CLUSTER_NODES" not in daemon_env(off, daemon), daemon
    docs = render(
        "global.redis.cluster.nodes[0]=redis-cluster-0.redis-cluster-headless:6379",
        "global.redis.cluster.nodes[1]=10.0.0.7:7001",
    )
    deployments = by_kind(docs, "Deployment")
    assert {name.removeprefix(f"{RELEASE}-") for name in deployments} == set(DAEMONS)
    for daemon in DAEMONS:
        name = f"{RELEASE}-{daemon}"
        assert container(deployments[name])["envFrom"] == [{"configMapRef": {"name": name}}]
        env = daemon_env(docs, daemon)
        assert env["AGENTMESH_REDIS_CLUSTER_NODES"] == (
            "redis-cluster-0.redis-cluster-headless:6379,10.0.0.7:7001"
        ), daemon
        assert "AGENTMESH_REDIS_SENTINELS" not in env, daemon
        cfg = load_config(daemon, [], settings=settings_class(daemon), environ=env)
        assert cfg.redis_cluster_startup_nodes == [
            ("redis-cluster-0.redis-cluster-headless", 6379),
            ("10.0.0.7", 7001),
        ], daemon


async def test_ha_redis_cluster_overlay_builds_a_cluster_client_in_every_daemon() -> None:
    docs = render(values=HA_REDIS_CLUSTER)
    for daemon in DAEMONS:
        env = daemon_env(docs, daemon)
        assert "AGENTMESH_REDIS_SENTINELS" not in env, daemon
        cfg = load_config(daemon, [], settings=settings_class(daemon), environ=env)
        assert cfg.redis_cluster_startup_nodes == [
            (f"redis-cluster-{i}.redis-cluster-headless", 6379) for i in range(3)
        ], daemon
        client = redis_from_config(cfg)  # builds only: no connection before the first command
        try:
            assert isinstance(client, RedisCluster), daemon
            assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == (
                cfg.redis_cluster_startup_nodes
            ), daemon
        finally:
            await client.aclose()


# ---- the values are real: the daemons accept and act on what the chart renders


@pytest.mark.parametrize(
    ("daemon", "values"),
    [
        *[(d, v) for d in DAEMONS for v in [(), ("ci/secure-values.yaml",), ("values-ha.yaml",)]],
        *[(d, HA_REDIS_CLUSTER) for d in DAEMONS],
        *[(d, ("ci/tuned-values.yaml",)) for d in DAEMONS],
        # saga and swarm are disabled there
        *[(d, ("ci/minimal-values.yaml",)) for d in ("bus", "router", "registry")],
    ],
)
def test_daemons_accept_the_rendered_settings(daemon: str, values: tuple[str, ...]) -> None:
    docs = render(values=values)
    cls = settings_class(daemon)
    env = daemon_env(docs, daemon)  # secretKeyRef placeholders stand in for Secrets
    # the same loader the daemon runs at startup; it exits on any bad setting
    cfg = load_config(daemon, [], settings=cls, environ=env)
    assert (cfg.host, cfg.port) == ("0.0.0.0", PORTS[daemon])
    names = {s.name for s in setting_specs(ServerConfig)} | {s.name for s in setting_specs(cls)}
    for key in env:
        option = key.removeprefix("AGENTMESH_").lower()
        assert option in names, f"{key} is set by the chart but no {daemon} setting reads it"
    # typed values survive the ConfigMap: what the values file says is what the daemon runs
    given = (yaml.safe_load((CHART / values[0]).read_text()) if values else {}) or {}
    for key, value in (given.get(daemon) or {}).get("config", {}).items():
        assert getattr(cfg.settings_as(cls), key) == value, key


def test_tracing_values_reach_every_daemon_and_its_config() -> None:
    """global.tracing: nothing by default (tracing off); set, every daemon's
    loader reads the collector and the ratio; a ratio outside 0..1 is refused."""
    off = render()
    for daemon in DAEMONS:
        assert "AGENTMESH_OTLP_ENDPOINT" not in daemon_env(off, daemon), daemon
    on = render(
        "global.tracing.otlpEndpoint=otel-collector.observability:4317",
        # --set types integers only ("0.01" stays a string the schema refuses)
        "global.tracing.sampleRatio=0",
    )
    for daemon in DAEMONS:
        env = daemon_env(on, daemon)
        cfg = load_config(daemon, [], settings=settings_class(daemon), environ=env)
        assert cfg.otlp_endpoint == "otel-collector.observability:4317", daemon
        assert cfg.trace_sample_ratio == 0.0, daemon
    assert "sampleRatio" in render_error("global.tracing.sampleRatio=2")


def test_tuned_values_set_every_daemon_and_the_kafka_tuning() -> None:
    docs = render(values=("ci/tuned-values.yaml",))
    from agentmesh.server.bus.settings import BusSettings

    bus = load_config("bus", [], settings=BusSettings, environ=daemon_env(docs, "bus"))
    tuning = bus.settings_as(BusSettings).kafka_producer_tuning()
    assert tuning["linger.ms"] == 5 and tuning["batch.num.messages"] == 20000
    # a whole number from a values file reaches the daemon as an integer, not 2.097152e+06
    assert daemon_env(docs, "bus")["AGENTMESH_KAFKA_QUEUE_BUFFERING_MAX_KBYTES"] == "2097152"
    assert daemon_env(docs, "router")["AGENTMESH_PANIC_THRESHOLD"] == "0.25"
    assert daemon_env(docs, "router")["AGENTMESH_SAFETY_HALT_ON_CRITICAL"] == "false"


def test_secure_values_become_sentinel_sasl_tls_and_auth_settings() -> None:
    docs = render(values=("ci/secure-values.yaml",))
    from agentmesh.server.bus.settings import BusSettings

    bus = load_config("bus", [], settings=BusSettings, environ=daemon_env(docs, "bus"))
    assert kafka_security_config(bus) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "kafka-agentmesh-user/username",
        "sasl.password": "kafka-agentmesh-user/password",
        "ssl.ca.location": "/etc/agentmesh/kafka-ca/ca.crt",
        "ssl.certificate.location": "/etc/agentmesh/kafka-client/tls.crt",
        "ssl.key.location": "/etc/agentmesh/kafka-client/tls.key",
    }
    assert bus.tls_enabled and bus.tls_client_ca_file == "/etc/agentmesh/tls/ca.crt"
    assert bus.auth_tokens_file == "/etc/agentmesh/auth/tokens.json"
    assert bus.auth_token == "agentmesh-auth/daemon-token"
    assert bus.log_format == "text" and bus.log_level == "DEBUG"
    assert bus.health_interval_s == 2.0  # global.extraEnv
    # only the bus talks to Kafka; the others get no Kafka credentials
    assert "AGENTMESH_KAFKA_SASL_PASSWORD" not in daemon_env(docs, "saga")
    saga = load_config("saga", [], environ=daemon_env(docs, "saga"))
    assert saga.redis_sentinel_nodes == [
        ("redis-sentinel-0.redis-sentinel", 26379),
        ("redis-sentinel-1.redis-sentinel", 26379),
    ]
    assert saga.redis_sentinel_master == "agentmesh"
    assert saga.redis_password == "redis-auth/password"
    assert saga.redis_sentinel_password == "redis-sentinel-auth/sentinel-password"


async def test_rendered_sentinel_settings_build_a_sentinel_client() -> None:
    docs = render(values=("ci/secure-values.yaml",))
    cfg = load_config("registry", [], environ=daemon_env(docs, "registry"))
    client = redis_from_config(cfg)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelConnectionPool)
        assert pool.service_name == "agentmesh"
        assert pool.connection_kwargs["db"] == 2  # from rediss://agentmesh@redis/2
        assert pool.connection_kwargs["password"] == "redis-auth/password"
    finally:
        await client.aclose()


def test_schema_config_is_each_daemons_settings_class(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for daemon in DAEMONS:
        cls = settings_class(daemon)
        config = schema["properties"][daemon]["properties"]["config"]
        # generated by scripts/gen_settings_schema.py: real types, minimums, units
        assert config["properties"] == schema_properties(cls), daemon
        assert config["additionalProperties"] is False
        # and it is the class the daemon's entry point parses its flags with
        module = importlib.import_module(f"agentmesh.server.{daemon}.__main__")
        seen: dict[str, Any] = {}

        def fake_run_daemon(name: str, build: Any, *, _seen: dict[str, Any] = seen,
                            **kw: Any) -> None:
            _seen.update(kw)

        monkeypatch.setattr(module, "run_daemon", fake_run_daemon)
        module.main()
        assert seen["settings"] is cls, daemon


def test_every_daemon_block_has_the_same_keys() -> None:
    values = chart_values()
    shapes = {d: set(values[d]) - {"backend"} for d in DAEMONS}
    assert len({frozenset(s) for s in shapes.values()}) == 1, shapes
    assert {
        "enabled",
        "replicaCount",
        "resources",
        "extraEnv",
        "ports",
        "nodeSelector",
        "tolerations",
        "autoscaling",
        "podDisruptionBudget",
        "config",
    } <= shapes["bus"]


# ---- wrong values fail at install time, with a message that says what to fix


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (("router.replicaCount=three",), "/router/replicaCount"),
        (("global.logformat=text",), "logformat"),
        (("global.logFormat=xml",), "/global/logFormat"),
        (("saga.config.lease_ttl=5",), "lease_ttl"),
        # types and minimums come from the daemons' settings classes
        (("saga.config.lease_ttl_ms=0",), "/saga/config/lease_ttl_ms"),
        (("router.config.vnodes=many",), "/router/config/vnodes"),
        (("router.config.panic_threshold=1.5",), "/router/config/panic_threshold"),
        (("bus.config.auto_create_topics=maybe",), "/bus/config/auto_create_topics"),
        (("bus.config.backend=rabbitmq",), "/bus/config/backend"),
        (("registry.port=1",), "port"),
        (("bus.backend=rabbitmq",), "/bus/backend"),
        (("global.kafka.securityProtocol=TLS",), "securityProtocol"),
        (("global.kafka.bootstrapServers=kafka",), "bootstrapServers"),
        (("global.redis.url=localhost:6379",), "/global/redis/url"),
        (("global.redis.sentinel.hosts[0]=sentinel",), "hosts"),
        (("global.image.pullPolicy=Sometimes",), "pullPolicy"),
        (("swarm.ports.grpc=70000",), "/swarm/ports/grpc"),
        (("global.redis.sentinel.enabled=true",), "global.redis.sentinel.hosts"),
        # a Redis Cluster node is host:port, a list of them, not Sentinel too, db 0 only
        (("global.redis.cluster.nodes[0]=redis-cluster-0",), "/global/redis/cluster/nodes/0"),
        # one entry per node: the chart does the joining (\\, keeps --set from splitting)
        (("global.redis.cluster.nodes[0]=a:1\\,b:2",), "/global/redis/cluster/nodes/0"),
        (("global.redis.cluster.nodes=a:7000",), "/global/redis/cluster/nodes"),
        (("global.redis.cluster.node[0]=a:7000",), "node"),
        (
            (
                "global.redis.cluster.nodes[0]=a:7000",
                "global.redis.sentinel.enabled=true",
                "global.redis.sentinel.hosts[0]=s:26379",
            ),
            "global.redis.cluster.nodes and global.redis.sentinel.enabled are both set",
        ),
        (
            ("global.redis.cluster.nodes[0]=a:7000", "global.redis.url=redis://redis/3"),
            "Redis Cluster has only db 0",
        ),
        (("global.kafka.securityProtocol=SASL_SSL",), "global.kafka.sasl.existingSecret"),
        (("bus.backend=memory",), "bus.replicaCount to 1"),
        # Kubernetes env values are strings: an unquoted number is refused here
        (("bus.extraEnv[0].name=AGENTMESH_READ_AHEAD", "bus.extraEnv[0].value=5"), "value"),
    ],
)
def test_wrong_values_fail_helm_template(sets: tuple[str, ...], needle: str) -> None:
    assert needle in render_error(*sets)


def test_wrong_values_in_a_values_file_fail_too(tmp_path: Any) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("router:\n  replicas: 3\n")  # the old key: now replicaCount
    err = render_error(values=(str(bad),))
    assert "replicas" in err and "not allowed" in err


def test_bus_workers_get_a_scraped_metrics_port_each() -> None:
    # worker i of `--workers N` serves /metrics on ports.metrics + i (services/bus/workers.py)
    docs = render("bus.config.workers=3", values=("ci/monitoring-values.yaml",))
    name = f"{RELEASE}-bus"
    c = container(by_kind(docs, "Deployment")[name])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": 50051, "metrics": 9101, "metrics-w1": 9102, "metrics-w2": 9103,
    }
    svc = by_kind(docs, "Service")[name]["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc][1:] == [
        ("metrics", 9101, "metrics"), ("metrics-w1", 9102, "metrics-w1"),
        ("metrics-w2", 9103, "metrics-w2"),
    ]
    monitor = by_kind(docs, "ServiceMonitor")[name]["spec"]["endpoints"]
    assert [e["port"] for e in monitor] == ["metrics", "metrics-w1", "metrics-w2"]
    metrics_rule = by_kind(docs, "NetworkPolicy")[name]["spec"]["ingress"][1]
    assert [p["port"] for p in metrics_rule["ports"]] == ["metrics", "metrics-w1", "metrics-w2"]
    assert daemon_env(docs, "bus")["AGENTMESH_WORKERS"] == "3"
    # one worker (the default) and the other daemons: the one metrics port
    saga = container(by_kind(docs, "Deployment")[f"{RELEASE}-saga"])
    assert [p["name"] for p in saga["ports"]] == ["grpc", "metrics"]
    assert "/bus/config/workers': minimum: got 0" in render_error("bus.config.workers=0")
