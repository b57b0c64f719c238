"""Daemon configuration from flags and `AGENTMESH_*` environment variables.

Precedence, highest first: command-line flag, `AGENTMESH_<DAEMON>_<KEY>`,
`AGENTMESH_<KEY>`, the documented default. For example the registry's gRPC port
comes from `--port`, then `AGENTMESH_REGISTRY_PORT`, then `AGENTMESH_PORT`,
then 50053. Shared settings such as `AGENTMESH_REDIS_URL` are usually set once
for the whole stack.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

#: Default (gRPC port, metrics port) per daemon, from DESIGN.md.
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "bus": (50051, 9101),
    "router": (50052, 9102),
    "registry": (50053, 9103),
    "saga": (50054, 9104),
    "swarm": (50055, 9105),
}


@dataclass(frozen=True)
class ExtraOption:
    """A daemon-specific setting, read like the common ones.

    Attributes:
        name: snake_case key; the flag is `--<name with dashes>` and the
            environment variable `AGENTMESH_[<DAEMON>_]<NAME>`.
        default: default value, as a string.
        help: one line for `--help`.
    """

    name: str
    default: str
    help: str


@dataclass(frozen=True)
class ServerConfig:
    """Settings shared by every daemon.

    Attributes:
        name: daemon name, one of DEFAULT_PORTS.
        host: address to bind; loopback by default.
        port: gRPC port.
        metrics_port: Prometheus `/metrics` port; 0 picks a free port, -1 disables it.
        redis_url: Redis URL, `redis://[user:password@]host:port/db` (`rediss://` for TLS).
            With Sentinel, only its user, password, db and scheme are used; the
            master's address comes from the sentinels.
        redis_password: Redis password; overrides the URL's, so it can come from a Secret.
        redis_sentinels: Sentinel nodes, `host:port,host:port`; set turns Sentinel on.
        redis_sentinel_master: name of the master set the sentinels monitor.
        redis_sentinel_password: password of the sentinels themselves (their `requirepass`).
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
        registry_target / router_target / bus_target: where peer daemons listen.
        extra: daemon-specific options by name.
    """

    name: str
    port: int
    metrics_port: int
    host: str = "127.0.0.1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str = ""
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = ""
    kafka_bootstrap: str = ""
    kafka_security_protocol: str = ""
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_ca_file: str = ""
    kafka_ssl_cert_file: str = ""
    kafka_ssl_key_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_ca_file: str = ""
    auth_tokens_file: str = ""
    auth_token: str = ""
    grace_period_s: float = 10.0
    health_interval_s: float = 1.0
    log_level: str = "INFO"
    log_format: str = "json"
    registry_target: str = "127.0.0.1:50053"
    router_target: str = "127.0.0.1:50052"
    bus_target: str = "127.0.0.1:50051"
    extra: dict[str, str] = field(default_factory=dict)

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


_HELP = {
    "host": "address to bind",
    "port": "gRPC port",
    "metrics_port": "Prometheus /metrics port (0 = any free port, -1 = off)",
    "redis_url": "Redis URL",
    "redis_password": "Redis password (overrides the URL's)",
    "redis_sentinels": "Redis Sentinel nodes host:port,... (turns Sentinel on)",
    "redis_sentinel_master": "master set name the sentinels monitor",
    "redis_sentinel_password": "password of the sentinels",
    "kafka_bootstrap": "Kafka bootstrap servers (host:port,...)",
    "kafka_security_protocol": "Kafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
    "kafka_sasl_mechanism": "Kafka sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
    "kafka_sasl_username": "Kafka SASL username",
    "kafka_sasl_password": "Kafka SASL password",
    "kafka_ssl_ca_file": "PEM CA of the Kafka brokers",
    "kafka_ssl_cert_file": "PEM client certificate for Kafka",
    "kafka_ssl_key_file": "PEM client key for Kafka",
    "tls_cert_file": "PEM server certificate (turns TLS on with --tls-key-file)",
    "tls_key_file": "PEM server private key",
    "tls_client_ca_file": "PEM CA of client certificates (turns mTLS on)",
    "tls_ca_file": "PEM CA trusted for outgoing calls",
    "auth_tokens_file": "JSON {token: identity} file (turns bearer auth on)",
    "auth_token": "bearer token for outgoing calls",
    "grace_period_s": "SIGTERM drain grace period, seconds",
    "health_interval_s": "dependency probe interval, seconds",
    "log_level": "log level",
    "log_format": "log format: json or text",
    "registry_target": "registry daemon address",
    "router_target": "router daemon address",
    "bus_target": "bus gateway address",
}


def _env(daemon: str, key: str, environ: dict[str, str] | os._Environ[str]) -> str | None:
    specific = f"AGENTMESH_{daemon.upper()}_{key.upper()}"
    if specific in environ:
        return environ[specific]
    return environ.get(f"AGENTMESH_{key.upper()}")


def load_config(
    name: str,
    argv: Sequence[str] | None = None,
    *,
    extra_options: Sequence[ExtraOption] = (),
    environ: dict[str, str] | None = None,
) -> ServerConfig:
    """Build a ServerConfig from flags, environment and defaults.

    Args:
        name: daemon name, a key of DEFAULT_PORTS.
        argv: command-line arguments without the program name; None reads sys.argv.
        extra_options: daemon-specific settings.
        environ: environment to read; None reads os.environ.

    Raises:
        SystemExit: on a bad flag, a value of the wrong type, or settings that
            cannot work together (config_problems), with argparse's message.
    """
    env = os.environ if environ is None else environ
    port, metrics_port = DEFAULT_PORTS[name]
    base = ServerConfig(name=name, port=port, metrics_port=metrics_port)
    parser = argparse.ArgumentParser(
        prog=f"agentmesh-{name}",
        description=f"AgentMesh {name} daemon. Every flag can also be set as "
        f"AGENTMESH_{name.upper()}_<FLAG> or AGENTMESH_<FLAG>.",
    )
    values: dict[str, object] = {}
    for f in fields(ServerConfig):
        if f.name in ("name", "extra"):
            continue
        default = getattr(base, f.name)
        raw = _env(name, f.name, env)
        typ = type(default)
        try:
            value = typ(raw) if raw is not None else default
        except ValueError:
            parser.error(f"AGENTMESH_{f.name.upper()}={raw!r} is not a valid {typ.__name__}")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=typ,
            default=value,
            help=f"{_HELP.get(f.name, f.name)} (default {default!r})",
        )
    for opt in extra_options:
        raw = _env(name, opt.name, env)
        parser.add_argument(
            "--" + opt.name.replace("_", "-"),
            dest="x_" + opt.name,
            default=raw if raw is not None else opt.default,
            help=f"{opt.help} (default {opt.default!r})",
        )
    ns = parser.parse_args(argv)
    for key, value in vars(ns).items():
        if not key.startswith("x_"):
            values[key] = value
    extra = {opt.name: str(getattr(ns, "x_" + opt.name)) for opt in extra_options}
    config = ServerConfig(name=name, extra=extra, **values)  # type: ignore[arg-type]
    if problems := config_problems(config):
        parser.error("; ".join(problems))
    return config
