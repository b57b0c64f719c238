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
        redis_url: Redis URL, `redis://host:port/db`.
        kafka_bootstrap: Kafka bootstrap servers; empty when the daemon does not use Kafka.
        tls_cert_file / tls_key_file: PEM server certificate and key; both set turns TLS on.
        tls_client_ca_file: PEM CA for client certificates; set turns mTLS on (required).
        auth_tokens_file: JSON file mapping bearer tokens to identities; set turns auth on.
        auth_token: bearer token this daemon presents on its own outgoing calls.
        tls_ca_file: PEM CA this daemon trusts on its own outgoing TLS calls.
        grace_period_s: SIGTERM drain budget in seconds.
        health_interval_s: how often dependencies are probed, seconds.
        log_level: logging level name.
        registry_target / router_target / bus_target: where peer daemons listen.
        extra: daemon-specific options by name.
    """

    name: str
    port: int
    metrics_port: int
    host: str = "127.0.0.1"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_ca_file: str = ""
    auth_tokens_file: str = ""
    auth_token: str = ""
    grace_period_s: float = 10.0
    health_interval_s: float = 1.0
    log_level: str = "INFO"
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


_HELP = {
    "host": "address to bind",
    "port": "gRPC port",
    "metrics_port": "Prometheus /metrics port (0 = any free port, -1 = off)",
    "redis_url": "Redis URL",
    "kafka_bootstrap": "Kafka bootstrap servers (host:port,...)",
    "tls_cert_file": "PEM server certificate (turns TLS on with --tls-key-file)",
    "tls_key_file": "PEM server private key",
    "tls_client_ca_file": "PEM CA of client certificates (turns mTLS on)",
    "tls_ca_file": "PEM CA trusted for outgoing calls",
    "auth_tokens_file": "JSON {token: identity} file (turns bearer auth on)",
    "auth_token": "bearer token for outgoing calls",
    "grace_period_s": "SIGTERM drain grace period, seconds",
    "health_interval_s": "dependency probe interval, seconds",
    "log_level": "log level",
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
        SystemExit: on a bad flag or a value of the wrong type (argparse's message).
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
    return ServerConfig(name=name, extra=extra, **values)  # type: ignore[arg-type]
