"""Daemon configuration from flags and `AGENTMESH_*` environment variables.

Precedence, highest first: command-line flag, `AGENTMESH_<DAEMON>_<KEY>`,
`AGENTMESH_<KEY>`, the documented default. For example the registry's gRPC
port comes from `--port`, then `AGENTMESH_REGISTRY_PORT`, then
`AGENTMESH_PORT`, then 50053. Shared settings such as `AGENTMESH_REDIS_URL` are
usually set once for the whole stack.

The common settings are ServerConfig; each daemon adds its own frozen
`Settings` dataclass (agentmesh.runtime.settings), parsed on the same command
line and read back as `config.settings_as(cls)`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from agentmesh.runtime.collector import DEFAULT_THRESHOLD0
from agentmesh.runtime.settings import (
    Settings,
    add_flags,
    daemon_env_prefixes,
    setting,
    values_of,
)

_S = TypeVar("_S", bound=Settings)

#: Default (gRPC port, metrics port) per daemon, from DESIGN.md.
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "bus": (50051, 9101),
    "router": (50052, 9102),
    "registry": (50053, 9103),
    "saga": (50054, 9104),
    "swarm": (50055, 9105),
}


@dataclass(frozen=True)
class ServerConfig(Settings):
    """Settings shared by every daemon (each field is a flag and an env variable).

    Attributes:
        name: daemon name, one of DEFAULT_PORTS.
        host: address to bind; loopback by default.
        port: gRPC port (default per daemon, DEFAULT_PORTS).
        metrics_port: Prometheus `/metrics` port; 0 picks a free port, -1 disables it.
        redis_url: Redis URL, `redis://[user:password@]host:port/db` (`rediss://` for TLS).
            With Sentinel, only its user, password, db and scheme are used; the
            master's address comes from the sentinels.
        redis_password: Redis password; overrides the URL's, so it can come from a Secret.
        redis_sentinels: Sentinel nodes, `host:port,host:port`; set turns Sentinel on.
        redis_sentinel_master: name of the master set the sentinels monitor.
        redis_sentinel_password: password of the sentinels themselves (their `requirepass`).
        redis_cluster_nodes: Redis Cluster startup nodes, `host:port,host:port`
            (flag `--redis-cluster`); set turns cluster mode on (redis-py's
            RedisCluster, which finds the other nodes itself). The URL then
            gives only user, password and TLS, and its db must be 0. Exclusive
            with `redis_sentinels`.
        kafka_bootstrap: Kafka bootstrap servers; empty when the daemon does not use Kafka.
        kafka_security_protocol: librdkafka `security.protocol` (PLAINTEXT, SSL,
            SASL_PLAINTEXT, SASL_SSL); empty keeps librdkafka's default, PLAINTEXT.
        kafka_sasl_mechanism: `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
        kafka_sasl_username / kafka_sasl_password: SASL credentials.
        kafka_ssl_ca_file: PEM CA that signs the brokers' certificates (`ssl.ca.location`).
        kafka_ssl_cert_file / kafka_ssl_key_file: PEM client certificate and key for
            brokers that require TLS client authentication.
        tls_cert_file / tls_key_file: PEM server certificate and key; both set turns TLS on.
        tls_client_ca_file: PEM CA for client certificates; set turns mTLS on (required).
        auth_tokens_file: JSON file mapping bearer tokens to identities; set turns auth on.
        auth_token: bearer token this daemon presents on its own outgoing calls.
        tls_ca_file: PEM CA this daemon trusts on its own outgoing TLS calls.
        grace_period_s: SIGTERM drain budget in seconds.
        health_interval_s: how often dependencies are probed, seconds.
        log_level: logging level name.
        log_format: `json` (one object per line, for log shippers) or `text` (for people).
        registry_target / router_target / bus_target / swarm_target: where
            peer daemons listen: `host:port`, replicas `host:port,host:port` or
            `dns:///name:port` (balanced round robin over healthy replicas,
            agentmesh.runtime.channels).
        otlp_endpoint: OTLP/gRPC trace collector (agentmesh.runtime.tracing); "" is off
            unless the standard OTEL_EXPORTER_OTLP_ENDPOINT is set.
        trace_sample_ratio: share of root traces sampled, 0..1; a caller's decision is kept.
        gc_threshold: the cyclic collector's young-generation threshold once
            the daemon has started (agentmesh.runtime.collector; CPython's own is 700).
        settings: the daemon's own typed settings (the `settings` class given to
            load_config), or None; read it with `settings_as`.
    """

    name: str
    port: int = setting(0, help="gRPC port (0 = any free port)", minimum=0, maximum=65535)
    metrics_port: int = setting(
        -1, help="Prometheus /metrics port (0 = any free port, -1 = off)", minimum=-1,
        maximum=65535,
    )
    host: str = setting("127.0.0.1", help="address to bind")
    redis_url: str = setting("redis://127.0.0.1:6379/0", help="Redis URL")
    redis_password: str = setting("", help="Redis password (overrides the URL's)")
    redis_sentinels: str = setting(
        "", help="Redis Sentinel nodes host:port,... (turns Sentinel on)"
    )
    redis_sentinel_master: str = setting("mymaster", help="master set name the sentinels monitor")
    redis_sentinel_password: str = setting("", help="password of the sentinels")
    redis_cluster_nodes: str = setting(
        "", help="Redis Cluster startup nodes host:port,... (turns Redis Cluster mode on)",
        flag="redis-cluster",
    )
    kafka_bootstrap: str = setting("", help="Kafka bootstrap servers (host:port,...)")
    kafka_security_protocol: str = setting(
        "", help="Kafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    )
    kafka_sasl_mechanism: str = setting(
        "", help="Kafka sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    )
    kafka_sasl_username: str = setting("", help="Kafka SASL username")
    kafka_sasl_password: str = setting("", help="Kafka SASL password")
    kafka_ssl_ca_file: str = setting("", help="PEM CA of the Kafka brokers")
    kafka_ssl_cert_file: str = setting("", help="PEM client certificate for Kafka")
    kafka_ssl_key_file: str = setting("", help="PEM client key for Kafka")
    tls_cert_file: str = setting(
        "", help="PEM server certificate (turns TLS on with --tls-key-file)"
    )
    tls_key_file: str = setting("", help="PEM server private key")
    tls_client_ca_file: str = setting("", help="PEM CA of client certificates (turns mTLS on)")
    tls_ca_file: str = setting("", help="PEM CA trusted for outgoing calls")
    auth_tokens_file: str = setting("", help="JSON {token: identity} file (turns bearer auth on)")
    auth_token: str = setting("", help="bearer token for outgoing calls")
    grace_period_s: float = setting(10.0, help="SIGTERM drain grace period", unit="s", minimum=0)
    health_interval_s: float = setting(
        1.0, help="dependency probe interval", unit="s", minimum=0.01
    )
    log_level: str = setting("INFO", help="log level")
    log_format: str = setting("json", help="log format: json or text")
    registry_target: str = setting("127.0.0.1:50053", help="registry daemon address")
    router_target: str = setting("127.0.0.1:50052", help="router daemon address")
    bus_target: str = setting("127.0.0.1:50051", help="bus gateway address")
    swarm_target: str = setting("127.0.0.1:50055", help="swarm engine address")
    otlp_endpoint: str = setting(
        "", help="OTLP/gRPC collector for traces, host:port or URL (turns tracing on; "
        "OTEL_EXPORTER_OTLP_ENDPOINT also does)"
    )
    trace_sample_ratio: float = setting(
        1.0, help="share of root traces sampled (parent-based)", minimum=0.0, maximum=1.0
    )
    gc_threshold: int = setting(
        DEFAULT_THRESHOLD0,
        help="allocations between young-generation garbage collections after startup "
        "(objects alive at startup are frozen; CPython's default is 700)",
        minimum=1,
    )
    settings: Any = field(default=None, compare=False)

    def settings_as(self, cls: type[_S]) -> _S:
        """The daemon's typed settings, checked to be a `cls`.

        Raises:
            TypeError: load_config was given another settings class, or none.
        """
        if not isinstance(self.settings, cls):
            raise TypeError(
                f"agentmesh-{self.name} was configured with "
                f"{type(self.settings).__name__}, not {cls.__name__}: pass "
                f"settings={cls.__name__} to run_daemon/load_config"
            )
        return self.settings

    @property
    def address(self) -> str:
        """`host:port` the gRPC server binds."""
        return f"{self.host}:{self.port}"

    @property
    def tls_enabled(self) -> bool:
        """True when a server certificate and key are configured."""
        return bool(self.tls_cert_file and self.tls_key_file)

    @property
    def client_cert_pair(self) -> tuple[str, str]:
        """(certificate, key) PEM files this daemon presents on its outgoing TLS calls.

        It is the daemon's own server pair, as in a mesh where each workload has
        one identity (Istio, Linkerd), so peers that require mTLS accept the
        daemon's calls to them. ("", "") when outgoing TLS (`tls_ca_file`) or
        the server pair is not configured; the pair must then carry no
        extendedKeyUsage or include clientAuth.
        """
        if self.tls_ca_file and self.tls_enabled:
            return self.tls_cert_file, self.tls_key_file
        return "", ""

    @property
    def redis_sentinel_nodes(self) -> list[tuple[str, int]]:
        """`redis_sentinels` as (host, port) pairs; empty when Sentinel is off.

        Raises:
            ValueError: when an entry is not `host:port` with a numeric port.
        """
        return parse_host_ports(self.redis_sentinels, what="AGENTMESH_REDIS_SENTINELS")

    @property
    def redis_cluster_startup_nodes(self) -> list[tuple[str, int]]:
        """`redis_cluster_nodes` as (host, port) pairs; empty when cluster mode is off.

        Raises:
            ValueError: when an entry is not `host:port` with a numeric port.
        """
        return parse_host_ports(self.redis_cluster_nodes, what="AGENTMESH_REDIS_CLUSTER_NODES")


#: librdkafka `security.protocol` values.
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms the mesh supports (librdkafka names). OAUTHBEARER and GSSAPI
#: need callbacks or a Kerberos setup, which the mesh does not wire.
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Values of `log_format`.
LOG_FORMATS = ("json", "text")


def parse_host_ports(raw: str, *, what: str) -> list[tuple[str, int]]:
    """Split `host:port,host:port` into pairs (`[v6addr]:port` works too).

    Args:
        raw: comma-separated list; blank entries are skipped, empty gives [].
        what: the setting's name, for the error message.

    Raises:
        ValueError: when an entry has no numeric port in 1..65535.
    """
    nodes: list[tuple[str, int]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what}: {item!r} is not host:port (e.g. redis-sentinel:26379)")
        nodes.append((host, int(port)))
    return nodes


def redis_mode_problems(*, sentinels: str, cluster_nodes: str, url: str) -> list[str]:
    """What is wrong with a Redis Cluster setting: bad nodes, Sentinel as well, a db.

    Shared by the daemons' ServerConfig and the agent SDK's settings.

    Args:
        sentinels: the `redis_sentinels` setting.
        cluster_nodes: the `redis_cluster_nodes` setting.
        url: the Redis URL (a cluster has only db 0).

    Returns:
        One message per problem, naming the variable to fix; empty when fine.
    """
    if not cluster_nodes:
        return []
    problems: list[str] = []
    try:
        parse_host_ports(cluster_nodes, what="AGENTMESH_REDIS_CLUSTER_NODES")
    except ValueError as exc:
        problems.append(str(exc))
    if sentinels:
        problems.append(
            "AGENTMESH_REDIS_CLUSTER_NODES and AGENTMESH_REDIS_SENTINELS are both set: "
            "Redis Cluster fails over by itself, set only one"
        )
    parts = urlsplit(url)
    db = parts.path.strip("/") or dict(parse_qsl(parts.query)).get("db", "")
    if db not in ("", "0"):
        problems.append(
            f"AGENTMESH_REDIS_URL selects db {db}: Redis Cluster has only db 0 "
            f"(drop the /{db} from the URL)"
        )
    return problems


def config_problems(config: ServerConfig) -> list[str]:
    """Settings that cannot work together, each as a message that says what to fix.

    Checked at startup so a typo in a Helm value fails the pod at once
    instead of surfacing as a connection error later.
    """
    problems: list[str] = []
    if config.log_format.lower() not in LOG_FORMATS:
        problems.append(f"AGENTMESH_LOG_FORMAT={config.log_format!r}: use json or text")
    try:
        parse_host_ports(config.redis_sentinels, what="AGENTMESH_REDIS_SENTINELS")
    except ValueError as exc:
        problems.append(str(exc))
    problems.extend(redis_mode_problems(
        sentinels=config.redis_sentinels, cluster_nodes=config.redis_cluster_nodes,
        url=config.redis_url,
    ))
    if config.redis_sentinels and not config.redis_sentinel_master:
        problems.append(
            "AGENTMESH_REDIS_SENTINELS is set: also set AGENTMESH_REDIS_SENTINEL_MASTER"
        )
    protocol = config.kafka_security_protocol.upper()
    if protocol and protocol not in KAFKA_SECURITY_PROTOCOLS:
        problems.append(
            f"AGENTMESH_KAFKA_SECURITY_PROTOCOL={config.kafka_security_protocol!r}: "
            f"use one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
        )
    mechanism = config.kafka_sasl_mechanism.upper()
    if mechanism and mechanism not in KAFKA_SASL_MECHANISMS:
        problems.append(
            f"AGENTMESH_KAFKA_SASL_MECHANISM={config.kafka_sasl_mechanism!r}: "
            f"use one of {', '.join(KAFKA_SASL_MECHANISMS)}"
        )
    sasl = protocol.startswith("SASL_")
    if (mechanism or config.kafka_sasl_username) and not sasl:
        problems.append(
            "Kafka SASL settings are set but AGENTMESH_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol or 'PLAINTEXT'!r}: set it to SASL_SSL (or SASL_PLAINTEXT)"
        )
    if sasl and not (config.kafka_sasl_username and config.kafka_sasl_password):
        problems.append(
            f"AGENTMESH_KAFKA_SECURITY_PROTOCOL={protocol}: set AGENTMESH_KAFKA_SASL_USERNAME "
            "and AGENTMESH_KAFKA_SASL_PASSWORD"
        )
    if bool(config.kafka_ssl_cert_file) != bool(config.kafka_ssl_key_file):
        problems.append(
            "Kafka TLS client auth needs both AGENTMESH_KAFKA_SSL_CERT_FILE and "
            "AGENTMESH_KAFKA_SSL_KEY_FILE"
        )
    tls_files = config.kafka_ssl_ca_file or config.kafka_ssl_cert_file
    if tls_files and protocol not in ("SSL", "SASL_SSL"):
        problems.append(
            "Kafka TLS files are set but AGENTMESH_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol or 'PLAINTEXT'!r}: set it to SSL or SASL_SSL"
        )
    return problems


def load_config(
    name: str,
    argv: Sequence[str] | None = None,
    *,
    settings: type[Settings] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Build a ServerConfig from flags, environment and defaults.

    Args:
        name: daemon name, a key of DEFAULT_PORTS.
        argv: command-line arguments without the program name; None reads sys.argv.
        settings: the daemon's own settings class; its flags join the common
            ones on one parser (one `--help`), and the parsed instance is
            `ServerConfig.settings` (`config.settings_as(cls)`).
        environ: environment to read; None reads os.environ.

    Raises:
        SystemExit: on a bad flag, a value of the wrong type or out of range
            (the message names the flag or environment variable), or settings
            that cannot work together (config_problems), with argparse's message.
    """
    env = os.environ if environ is None else environ
    prefixes = daemon_env_prefixes(name)
    port, metrics_port = DEFAULT_PORTS[name]
    parser = argparse.ArgumentParser(
        prog=f"agentmesh-{name}",
        # the full usage would list every flag above each error message
        usage="%(prog)s [--flag VALUE ...] (see --help)",
        description=f"AgentMesh {name} daemon. Every flag can also be set as "
        f"AGENTMESH_{name.upper()}_<FLAG> or AGENTMESH_<FLAG> (in that order; "
        "a flag wins). Booleans take true/false, 1/0, yes/no or on/off.",
    )
    problems = add_flags(
        parser.add_argument_group("common settings"),
        ServerConfig,
        prefixes=prefixes,
        environ=env,
        defaults={"port": port, "metrics_port": metrics_port},
    )
    if settings is not None:
        problems += add_flags(
            parser.add_argument_group(f"{name} settings"), settings, prefixes=prefixes,
            environ=env,
        )
    if problems:
        parser.error("; ".join(problems))
    ns = parser.parse_args(argv)
    try:
        typed = None if settings is None else settings(**values_of(settings, ns))
        config = ServerConfig(name=name, settings=typed, **values_of(ServerConfig, ns))
    except ValueError as exc:
        parser.error(str(exc))
    if problems := config_problems(config):
        parser.error("; ".join(problems))
    return config
