"""Daemon bootstrap: the one way every AgentMesh daemon starts and stops.

    def build(daemon: Daemon) -> None:
        store = daemon.redis()                      # also adds a Redis health probe
        daemon.add_service(add_FooServiceServicer_to_server, FooServicer(store),
                           foo_pb2.DESCRIPTOR.services_by_name["FooService"])

    def main() -> None:
        run_daemon("foo", build)

What a daemon gets: a grpc.aio server with the runtime wrapper on every handler
(ids, auth, errors, metrics), `grpc.health.v1` driven by dependency probes, server
reflection, Prometheus `/metrics`, JSON logs, TLS/mTLS, and SIGTERM handling:
NOT_SERVING at once, in-flight RPCs drain within the grace period, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentmesh.runtime import tracing
from agentmesh.runtime.auth import TokenAuthenticator
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.collector import tune_collector
from agentmesh.runtime.config import ServerConfig, load_config
from agentmesh.runtime.health import DependencyMonitor, Probe
from agentmesh.runtime.interceptors import RuntimeServer
from agentmesh.runtime.logs import configure_logging
from agentmesh.runtime.metrics import serve_metrics
from agentmesh.runtime.reflection import enable_reflection
from agentmesh.runtime.settings import Settings

if TYPE_CHECKING:
    # Redis and Kafka clients are imported when a daemon asks for them: an
    # agent built on the SDK runs this same server without redis-py or
    # confluent-kafka installed (agentmesh[server] brings them).
    import redis.asyncio as aioredis

    from agentmesh.runtime.dataset_epoch import DatasetEpoch

log = logging.getLogger("agentmesh.server")

Hook = Callable[[], Awaitable[object] | object]

#: Seconds a draining daemon keeps refusing new calls with UNAVAILABLE after
#: its last call in flight ended, before it stops grpc (within the grace period).
DRAIN_REFUSE_S = 0.3


class Daemon:
    """A configured, not yet started daemon.

    Args:
        config: the daemon's settings.
        reuse_port: bind the gRPC port with SO_REUSEPORT, so that several
            processes serve one port and the kernel spreads connections over
            them (the bus gateway's `--workers`); off by default, so a second
            daemon on a taken port fails instead of sharing it.
    """

    def __init__(self, config: ServerConfig, *, reuse_port: bool = False) -> None:
        self.config = config
        auth = (
            TokenAuthenticator.from_file(config.auth_tokens_file)
            if config.auth_tokens_file
            else None
        )
        self._draining = asyncio.Event()
        # Handlers are wrapped as they are registered rather than by a server
        # interceptor, which grpc.aio would run on every call (see RuntimeServer).
        self._runtime_server = RuntimeServer(
            auth,
            self._draining,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        self.server: grpc.aio.Server = self._runtime_server
        self.health = health.aio.HealthServicer()
        self._services: list[str] = []
        self._probes: dict[str, Probe] = {}
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._redis: aioredis.Redis | None = None
        self._monitor: DependencyMonitor | None = None
        self._stop = asyncio.Event()
        #: OpenTelemetry `service.name` of this process (the agent SDK sets its agent type).
        self.service_name = f"agentmesh-{config.name}"
        self.port = 0
        self.metrics_port = -1

    # ---- building -------------------------------------------------------
    def add_service(
        self,
        register: Callable[[Any, grpc.aio.Server], None],
        servicer: object,
        descriptor: ServiceDescriptor,
    ) -> None:
        """Register a generated servicer and name it for health and reflection."""
        register(servicer, self.server)
        self._services.append(descriptor.full_name)

    def add_probe(self, name: str, probe: Probe) -> None:
        """Add a dependency probe; health is SERVING only while all probes pass."""
        self._probes[name] = probe

    def on_startup(self, hook: Hook) -> None:
        """Run `hook` after the port is bound and before health turns SERVING."""
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Run `hook` after RPCs have drained, in reverse order of registration."""
        self._shutdown.append(hook)

    def redis(self) -> aioredis.Redis:
        """The daemon's shared Redis client, created on first use with a health probe."""
        if self._redis is None:
            from agentmesh.runtime.deps import redis_from_config, redis_probe

            self._redis = redis_from_config(self.config)
            self.add_probe("redis", redis_probe(self._redis))
            client = self._redis
            self.on_shutdown(client.aclose)
        return self._redis

    def guard_fencing(self, client: aioredis.Redis) -> DatasetEpoch:
        """Turn health NOT_SERVING, with the reason, once the Redis behind
        this daemon's fencing tokens comes back without its data (see
        runtime.dataset_epoch); for daemons that drive work under leases."""
        from agentmesh.runtime.dataset_epoch import DatasetEpoch

        epoch = DatasetEpoch(client)
        self.add_probe("redis_dataset", epoch.probe)

        async def remember() -> None:
            with contextlib.suppress(Exception):  # Redis down: the probe retries
                await epoch.start()

        self.on_startup(remember)
        return epoch

    def require_kafka(self) -> str:
        """Add a Kafka health probe and return the bootstrap servers.

        Raises:
            ValueError: when no bootstrap servers are configured.
        """
        if not self.config.kafka_bootstrap:
            raise ValueError(
                "this daemon needs Kafka: set --kafka-bootstrap or AGENTMESH_KAFKA_BOOTSTRAP"
            )
        from agentmesh.runtime.deps import kafka_probe, kafka_security_config

        self.add_probe(
            "kafka",
            kafka_probe(
                self.config.kafka_bootstrap, security=kafka_security_config(self.config)
            ),
        )
        return self.config.kafka_bootstrap

    def channel(self, target: str) -> grpc.aio.Channel:
        """An outgoing channel to a peer with this daemon's token, CA and client
        certificate (`RuntimeConfig.client_cert_pair`), closed on shutdown."""
        cert, key = self.config.client_cert_pair
        ch = create_channel(
            target,
            token=self.config.auth_token,
            tls_ca_file=self.config.tls_ca_file,
            client_cert_file=cert,
            client_key_file=key,
        )
        self.on_shutdown(ch.close)
        return ch

    # ---- running --------------------------------------------------------
    def _credentials(self) -> grpc.ServerCredentials | None:
        c = self.config
        if not c.tls_enabled:
            return None
        client_ca = Path(c.tls_client_ca_file).read_bytes() if c.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(c.tls_key_file).read_bytes(), Path(c.tls_cert_file).read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    async def start(self, *, own_process: bool = False) -> int:
        """Bind, start serving and probing; returns the bound gRPC port.

        Args:
            own_process: the daemon is the process (its entry point, not a
                test or a host program): once started, its heap is frozen and
                the collector's threshold set (agentmesh.runtime.collector).
        """
        if tracing.configure_tracing(
            service_name=self.service_name,
            otlp_endpoint=self.config.otlp_endpoint,
            sample_ratio=self.config.trace_sample_ratio,
        ):
            # Last shutdown hook to run: spans of the drain reach the collector.
            self._shutdown.insert(0, tracing.shutdown_tracing)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(
            [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            self.server,
        )
        creds = self._credentials()
        addr = self.config.address
        self.port = (
            self.server.add_secure_port(addr, creds)
            if creds
            else self.server.add_insecure_port(addr)
        )
        if not self.port:
            raise OSError(f"cannot bind {addr}: is another process using the port?")
        self.metrics_port = serve_metrics(self.config.host, self.config.metrics_port)
        for svc in ["", *self._services]:
            await self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        for hook in self._startup:
            await _call(hook)
        # Everything alive now lives as long as the process: out of the
        # collector's walks (a fifth of the bus's busy time otherwise).
        # Not for an embedded daemon: the host's heap is not ours to freeze.
        gc_fields = (
            {"gc_frozen_objects": tune_collector(self.config.gc_threshold),
             "gc_threshold": self.config.gc_threshold}
            if own_process else {}
        )
        self._monitor = DependencyMonitor(
            self.health,
            self._services,
            self._probes,
            interval_s=self.config.health_interval_s,
        )
        await self._monitor.start()
        log.info(
            "serving",
            extra={
                "port": self.port,
                "metrics_port": self.metrics_port,
                "tls": self.config.tls_enabled,
                "services": self._services,
                **gc_fields,
            },
        )
        return self.port

    def request_stop(self) -> None:
        """Ask `serve_forever` to drain and exit (what SIGTERM does)."""
        self._stop.set()

    async def stop(self, *, stop_grpc: bool = True) -> None:
        """NOT_SERVING; answer new calls UNAVAILABLE and end server streams
        (resumable watches) with UNAVAILABLE; let in-flight RPCs finish
        within the grace period; then stop grpc and run shutdown hooks.

        grpc is stopped only once no call is in flight and new calls have
        been refused for a moment (DRAIN_REFUSE_S): its own shutdown cancels
        calls it has received but not handed over, which clients would see
        as CANCELLED and not retry (see DrainState).

        Args:
            stop_grpc: False leaves grpc's shutdown out, for a process that
                exits right after (`serve_forever(exit_process=True)`): the
                calls still arriving then see the connection close, which is
                UNAVAILABLE, where even a graceful grpc shutdown cancels the
                ones it had received but not handed over.
        """
        loop = asyncio.get_running_loop()
        grace_s = self.config.grace_period_s
        deadline = loop.time() + grace_s
        if self._monitor:
            await self._monitor.drain()
            # Let health watchers receive NOT_SERVING before their streams end.
            await asyncio.sleep(0.05)
        self._draining.set()
        log.info("draining", extra={"grace_period_s": grace_s})
        state = self._runtime_server.drain_state
        if state is not None:
            await state.wait_idle(timeout_s=max(0.0, deadline - loop.time()))
            await asyncio.sleep(max(0.0, min(DRAIN_REFUSE_S, deadline - loop.time())))
        if stop_grpc:
            await self.server.stop(max(0.0, deadline - loop.time()))
        for hook in reversed(self._shutdown):
            try:
                await _call(hook)
            except Exception:  # one failed hook must not keep the others from running
                log.exception("shutdown hook failed")
        log.info("stopped")

    async def serve_forever(self, *, exit_process: bool = False) -> None:
        """Start, wait for SIGTERM or SIGINT, then stop.

        Args:
            exit_process: end the process (status 0) once drained and the
                shutdown hooks ran, without grpc's own shutdown (see `stop`).
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start(own_process=exit_process)
        await self._stop.wait()
        await self.stop(stop_grpc=not exit_process)
        if exit_process:
            sys.stdout.flush()
            logging.shutdown()  # flush every handler: nothing runs after _exit
            os._exit(0)


async def _call(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result


Builder = Callable[[Daemon], Awaitable[None] | None]


def run_daemon(
    name: str,
    build: Builder,
    argv: Sequence[str] | None = None,
    *,
    settings: type[Settings] | None = None,
    reuse_port: bool = False,
    instead: Callable[[ServerConfig], int | None] | None = None,
) -> None:
    """Parse config, configure logs, build the daemon with `build` and serve until SIGTERM.

    `settings` is the daemon's own settings class; `build` reads the parsed
    instance as `daemon.config.settings_as(cls)` (see load_config).
    `reuse_port` is Daemon's. `instead`, given the parsed config, may run
    something else in place of the daemon (the bus's `--workers` supervisor)
    and return the process's exit status; None serves as usual.
    """
    config = load_config(name, argv, settings=settings)
    configure_logging(name, config.log_level, log_format=config.log_format)
    if instead is not None:
        status = instead(config)
        if status is not None:
            sys.exit(status)

    async def main() -> None:
        daemon = Daemon(config, reuse_port=reuse_port)
        result = build(daemon)
        if inspect.isawaitable(result):
            await result
        await daemon.serve_forever(exit_process=True)

    asyncio.run(main())
