"""How an agent serves and where it registers: the agent SDK's settings,
declared with the same mechanism as the daemons' (agentmesh.runtime.settings).

Each field is a constructor argument, a flag `--<name>` and an environment
variable `AGENTMESH_AGENT_<NAME>` (agentmesh.agent.cli); flags and variables
are parsed by the runtime's typed parsers (one boolean parser, range checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentmesh.runtime.settings import Settings, setting

#: Environment prefix of the agent settings. Agents read only their own
#: variables, not the daemons' `AGENTMESH_<NAME>`: an agent started in the
#: daemons' environment must not take a daemon's port or Redis.
ENV_PREFIX = "AGENTMESH_AGENT_"


@dataclass(frozen=True)
class AgentSettings(Settings):
    """How an agent serves and where it registers. Every field can be set from
    the constructor, and by `Agent.run` from flags or `AGENTMESH_AGENT_<NAME>`
    environment variables.

    Attributes:
        host: address to bind.
        port: gRPC port; 0 picks a free one (logged in the `serving` line).
        advertise_host: host put in the registered endpoint; defaults to `host`.
        metrics_port: Prometheus port; 0 picks a free one, -1 disables it.
        a2a_port: serve the actions over A2A too (agentmesh.agent.a2a_server:
            JSON-RPC and the agent card over HTTP on `host`); 0 picks a free
            port, -1 (the default) serves gRPC only.
        registry_target: registry `host:port`; empty means do not register.
        router_target: router `host:port` (its SafetyService): where
            `ctx.validate` asks and the agent's declared constraints are
            registered at start; empty means neither.
        bus_target: bus gateway `host:port`: where `@agent.on_message`
            subscribes and `agent.publish` / `ctx.publish` send; empty means none.
        redis_url: when set, idempotency results are kept in Redis so dedupe
            survives restarts; otherwise in memory.
        redis_password: Redis password when it is not in the URL.
        redis_sentinels / redis_sentinel_master / redis_sentinel_password:
            reach the Redis master through Sentinel (`host:port,host:port`),
            as the daemons do (`AGENTMESH_REDIS_SENTINELS`, ...).
        redis_cluster_nodes: Redis Cluster startup nodes (`host:port,...`,
            flag `--redis-cluster`), as the daemons' `AGENTMESH_REDIS_CLUSTER_NODES`;
            the URL's db must then be 0. An agent's idempotency keys and
            message claims are single-key commands, so they spread over the slots.
        idempotency_ttl_s: how long completed results are kept, seconds.
        heartbeat_interval_s: seconds between heartbeats.
        max_concurrency: calls handled at once; the rest queue (0 = unlimited).
        grace_period_s: SIGTERM drain budget, seconds.
        location: where the agent runs, for local-first discovery.
        token: bearer token presented to the registry.
        tls_ca_file: PEM CA trusted for the registry connection.
        tls_cert_file / tls_key_file: serve AgentService over TLS.
        tls_client_ca_file: require client certificates signed by this CA
            (mTLS); the daemons present theirs on calls to agents.
        auth_tokens_file: require bearer tokens from callers (runtime format).
        log_level: logging level name used by `run`.
        log_format: `json` or `text`, used by `run`.
        otlp_endpoint: OTLP/gRPC trace collector; set turns tracing on (so do the
            standard OTEL_EXPORTER_OTLP_* variables). `service.name` is the agent type.
        trace_sample_ratio: share of root traces sampled, 0..1 (parent-based).
        extra_metadata: registered with the agent; not a flag.
    """

    host: str = setting("127.0.0.1", help="address to bind")
    port: int = setting(0, help="gRPC port (0 = any free port)", minimum=0, maximum=65535)
    advertise_host: str = setting("", help="host in the registered endpoint")
    metrics_port: int = setting(
        -1, help="Prometheus port (0 = any free, -1 = off)", minimum=-1, maximum=65535
    )
    a2a_port: int = setting(
        -1, help="A2A (JSON-RPC + agent card) port (0 = any free, -1 = off)",
        minimum=-1, maximum=65535,
    )
    registry_target: str = setting("", help="registry host:port (empty = do not register)")
    router_target: str = setting(
        "", help="router host:port for ctx.validate and declared constraints (empty = none)"
    )
    bus_target: str = setting(
        "", help="bus gateway host:port for @agent.on_message and publish (empty = none)"
    )
    redis_url: str = setting("", help="Redis URL for durable idempotency (empty = in memory)")
    redis_password: str = setting("", help="Redis password when not in the URL")
    redis_sentinels: str = setting(
        "", help="host:port,... of Redis Sentinels (empty = no Sentinel)"
    )
    redis_sentinel_master: str = setting("mymaster", help="master set name the sentinels monitor")
    redis_sentinel_password: str = setting("", help="password of the sentinels themselves")
    redis_cluster_nodes: str = setting(
        "", help="Redis Cluster startup nodes host:port,... (turns Redis Cluster mode on)",
        flag="redis-cluster",
    )
    idempotency_ttl_s: float = setting(
        86_400.0, help="how long a completed result is kept", unit="s", minimum=0
    )
    heartbeat_interval_s: float = setting(
        5.0, help="time between heartbeats", unit="s", minimum=0.01
    )
    max_concurrency: int = setting(0, help="calls handled at once (0 = unlimited)", minimum=0)
    grace_period_s: float = setting(10.0, help="SIGTERM drain budget", unit="s", minimum=0)
    location: str = setting("", help="where the agent runs")
    token: str = setting("", help="bearer token for the registry")
    tls_ca_file: str = setting("", help="PEM CA for the registry connection")
    tls_cert_file: str = setting("", help="PEM server certificate")
    tls_key_file: str = setting("", help="PEM server key")
    tls_client_ca_file: str = setting("", help="PEM CA of client certificates; turns mTLS on")
    auth_tokens_file: str = setting("", help="JSON token file; turns caller auth on")
    log_level: str = setting("INFO", help="log level")
    log_format: str = setting("json", help="log format: json or text")
    otlp_endpoint: str = setting(
        "", help="OTLP/gRPC collector for traces, host:port or URL (turns tracing on)"
    )
    trace_sample_ratio: float = setting(
        1.0, help="share of root traces sampled (parent-based)", minimum=0.0, maximum=1.0
    )
    extra_metadata: dict[str, str] = field(default_factory=dict)
