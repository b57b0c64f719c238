"""The Agent SDK: declare handlers with decorators, then serve `AgentService`.

    agent = Agent("agent-calc-1", agent_type="carbon-calculator", version="1.0.0",
                  capabilities=["carbon_calculation"])

    @agent.action("calculate")
    async def calculate(input: dict, ctx: ActionContext) -> dict:
        return {"kg_co2e": input["spend_usd"] * input["factor"]}

    if __name__ == "__main__":
        agent.run()            # flags/env override the constructor; SIGTERM drains

`Agent` is the declaration and lifecycle facade. The work is done by:
  * `agentmesh.agent.executor.IdempotentExecutor` — dedupe by idempotency key
    and the compensation fence (an Execute whose key was compensated fails
    with ABORTED, reason COMPENSATED; a Compensate that waits for its Execute
    past its deadline answers UNAVAILABLE, reason EXECUTE_IN_FLIGHT);
  * `agentmesh.agent.servicer.AgentServicer` — the AgentService RPCs: deadlines
    (`ctx.remaining_s`), the compensated key, Evaluate;
  * `agentmesh.agent.registration.Registrar` — registers before the agent logs
    `serving`, heartbeats with load, deregisters first on SIGTERM;
  * `agentmesh.agent.cli` — flags and `AGENTMESH_AGENT_*` variables (`run`).
  * `agentmesh.agent.settings.AgentSettings` — the serving settings, declared
    like the daemons' (agentmesh.runtime.settings).

Errors: handlers raise `agentmesh.runtime.errors` classes (or ordinary
exceptions, mapped as in `map_exception`), which reach the caller as gRPC
status codes with rich details. Load (queue size, processing and response
time, error rate, CPU and memory) is tracked and sent with heartbeats. On
SIGTERM the agent deregisters first (so no new work is routed to it), then
reports NOT_SERVING and drains in-flight calls within the grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from agentmesh.agent.bus import BusLink, MessageContext, MessageSubscription
from agentmesh.agent.cli import add_arguments, apply_arguments, run_agent
from agentmesh.agent.context import ActionContext
from agentmesh.agent.executor import IdempotentExecutor, map_exception
from agentmesh.agent.idempotency import MemoryIdempotencyStore, RedisIdempotencyStore
from agentmesh.agent.load import LoadTracker
from agentmesh.agent.message_dedupe import RedisMessageClaims
from agentmesh.agent.registration import Registrar
from agentmesh.agent.safety import SafetyLink
from agentmesh.agent.servicer import WILDCARD, AgentServicer
from agentmesh.agent.settings import AgentSettings
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.bus.v1 import bus_pb2
from agentmesh.client.bus_messages import Message
from agentmesh.router.v1 import safety_pb2
from agentmesh.runtime.agent_ids import inbox_topic
from agentmesh.runtime.compensation import COMPENSATE_SUFFIX, strip_compensate_suffix
from agentmesh.runtime.config import ServerConfig
from agentmesh.runtime.errors import ErrorReason, reason_name
from agentmesh.runtime.server import Daemon

if TYPE_CHECKING:
    from agentmesh.agent.a2a_server import A2AServer

log = logging.getLogger("agentmesh.agent")

#: Output of an action: a JSON-compatible mapping, or None for `{}`.
ActionOutput = Mapping[str, Any] | None
#: `async def handler(input: dict, ctx: ActionContext) -> dict` (a plain `def` runs in a thread).
ActionHandler = Callable[[dict[str, Any], ActionContext], Awaitable[ActionOutput] | ActionOutput]
#: `def objective(positions: (n, d) float64 array, params: dict) -> (n,) fitness array`.
EvaluateHandler = Callable[[np.ndarray, dict[str, Any]], Any]

F = TypeVar("F", bound=Callable[..., Any])

#: ErrorInfo reason string of the ABORTED answer to an Execute whose key was
#: compensated (`ErrorReason.ERROR_REASON_COMPENSATED`).
REASON_COMPENSATED = reason_name(ErrorReason.ERROR_REASON_COMPENSATED)
#: ErrorInfo reason string of the UNAVAILABLE answer to a Compensate whose
#: deadline came while it still waited for its Execute
#: (`ErrorReason.ERROR_REASON_EXECUTE_IN_FLIGHT`).
REASON_EXECUTE_IN_FLIGHT = reason_name(ErrorReason.ERROR_REASON_EXECUTE_IN_FLIGHT)


def compensated_key(compensate_key: str) -> str | None:
    """The Execute key an old-style Compensate key undoes, or None without the suffix.

    Kept for callers of the SDK; the convention lives in
    `agentmesh.runtime.compensation` (`fenced_key` also reads the
    `compensated_idempotency_key` field).
    """
    return strip_compensate_suffix(compensate_key)


class Agent:
    """An agent: named handlers served over `agentmesh.agent.v1.AgentService`.

    Args:
        agent_id: unique id, `agent-[a-z0-9-]+`.
        agent_type: the agent's kind, e.g. "carbon-calculator".
        version: semantic version.
        capabilities: what it can do, used by discovery.
        service_types: service types it offers.
        tags: free-form tags.
        metadata: free-form registry metadata.
        constraints: typed safety constraints (`agentmesh.router.v1.Constraint`)
            registered with the router's SafetyService at start (needs
            `router_target`); the mesh then enforces them on every call.
        settings: serving settings; keyword overrides below are applied on top.
        **overrides: any AgentSettings field, e.g. `port=0, registry_target="..."`.
    """

    def __init__(
        self,
        agent_id: str,
        *,
        agent_type: str = "agent",
        version: str = "0.1.0",
        capabilities: Sequence[str] = (),
        service_types: Sequence[str] = (),
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        constraints: Sequence[safety_pb2.Constraint] = (),
        settings: AgentSettings | None = None,
        **overrides: Any,
    ) -> None:
        self.agent_id = agent_id
        self.agent_type = agent_type
        self.version = version
        self.capabilities = list(capabilities)
        self.service_types = list(service_types)
        self.tags = list(tags)
        self.metadata = dict(metadata or {})
        self.settings = replace(settings or AgentSettings(), **overrides)
        self.constraints = list(constraints)
        #: The router's SafetyService, once `start` has run with a router_target.
        self.safety: SafetyLink | None = None
        self._actions: dict[str, ActionHandler] = {}
        self._compensations: dict[str, ActionHandler] = {}
        self._objectives: dict[str, EvaluateHandler] = {}
        self._message_subs: list[MessageSubscription] = []
        #: The bus gateway link, once `start` has run with a bus_target.
        self.bus: BusLink | None = None
        self._daemon: Daemon | None = None
        self._registrar: Registrar | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self.load = LoadTracker(capacity=self.settings.max_concurrency)
        #: Runs keyed calls once and fences compensations (opened by `start`).
        self.executor = IdempotentExecutor(load=self.load)
        self.port = 0
        self.metrics_port = -1
        #: The A2A endpoint (agentmesh.agent.a2a_server) once `start` has run
        #: with `a2a_port` >= 0, else None.
        self.a2a: A2AServer | None = None
        #: Parsed command line after `run`, including the caller's own flags.
        self.args = argparse.Namespace()

    # ---- declaring handlers ----------------------------------------------
    def action(self, name: str) -> Callable[[F], F]:
        """Decorator: `fn(input: dict, ctx: ActionContext) -> dict` handles Execute(`name`).

        Use `"*"` to handle every action that has no handler of its own.
        """
        return self._register_handler(self._actions, name, "action")

    def compensation(self, name: str) -> Callable[[F], F]:
        """Decorator: `fn(input: dict, ctx: ActionContext) -> dict` handles Compensate(`name`).

        `ctx.original_output` holds the compensated action's output when it
        completed. `"*"` handles every compensation without its own handler.
        """
        return self._register_handler(self._compensations, name, "compensation")

    def evaluate(self, objective: str) -> Callable[[F], F]:
        """Decorator: `fn(positions: ndarray (n, d), params: dict) -> ndarray (n,)`
        handles Evaluate(`objective`). It must be pure; lower fitness is better.
        """

        def deco(fn: F) -> F:
            if objective in self._objectives:
                raise ValueError(f"objective {objective!r} is already declared")
            self._objectives[objective] = fn
            return fn

        return deco

    def on_message(
        self,
        patterns: str | Sequence[str] = (),
        *,
        group: str | None = None,
        inbox: bool = False,
        max_deliveries: int = 5,
        ack_deadline_ms: int = 30_000,
        retry_delay_ms: int = 200,
        start_position: str = "earliest",
    ) -> Callable[[F], F]:
        """Decorator: `fn(payload, ctx: MessageContext)` handles bus messages
        (see `agentmesh.agent.bus`; needs the `bus_target` setting).

        Args:
            patterns: topic patterns (`*` one level, `#` any levels).
            group: consumer group; default the agent type, so replicas of one
                type share the messages (with `inbox`, the agent id).
            inbox: also (or only) the agent's inbox `agents.<agent_id>`,
                where messages with `recipient_id` = this agent go.
            max_deliveries: deliveries before the gateway writes `<topic>.dlq`.
            ack_deadline_ms: a delivery not handled in this long is redelivered.
            retry_delay_ms: redelivery delay after the first failure (doubles).
            start_position: "earliest" or "latest" for a group without offsets.

        Raises:
            ValueError: neither patterns nor inbox.
        """
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        if not pats and not inbox:
            raise ValueError("on_message needs topic patterns or inbox=True")

        def deco(fn: F) -> F:
            # The inbox topic and default group are resolved at start: flags
            # (`--agent-id`, applied by `run`) may still change the id.
            self._message_subs.append(MessageSubscription(
                patterns=tuple(pats), group=group or "", handler=fn, inbox=inbox,
                max_deliveries=max_deliveries,
                ack_deadline_ms=ack_deadline_ms, retry_delay_ms=retry_delay_ms,
                start_position=start_position))
            return fn

        return deco

    @property
    def message_subscriptions(self) -> list[MessageSubscription]:
        """Declared `on_message` handlers."""
        return list(self._message_subs)

    def _bus_link(self) -> BusLink:
        if self.bus is None:
            raise RuntimeError(
                f"agent {self.agent_id} has no bus link: set bus_target and start it first")
        return self.bus

    async def publish(self, payload: Any = None, **kw: Any) -> bus_pb2.PublishResponse:
        """Publish a bus message with this agent as `sender_id` (`BusLink.publish`:
        `topic=` or `recipient_id=`, `message_type=`, `key=`, `headers=`, ...).

        Raises:
            RuntimeError: the agent is not started or has no bus_target.
            AgentMeshError: the gateway's status.
        """
        return await self._bus_link().publish(payload, **kw)

    async def request(self, payload: Any = None, **kw: Any) -> Message:
        """BusService.Request with this agent as `sender_id` (`BusLink.request`).

        Raises:
            RuntimeError: the agent is not started or has no bus_target.
            RemoteError / AgentMeshError: as `BusLink.request`.
        """
        return await self._bus_link().request(payload, **kw)

    def _register_handler(
        self, table: dict[str, ActionHandler], name: str, what: str
    ) -> Callable[[F], F]:
        if not name:
            raise ValueError(f"{what} name must not be empty")

        def deco(fn: F) -> F:
            if name in table:
                raise ValueError(f"{what} {name!r} is already declared")
            table[name] = fn
            return fn

        return deco

    @property
    def actions(self) -> list[str]:
        """Declared action names."""
        return sorted(self._actions)

    @property
    def compensations(self) -> list[str]:
        """Declared compensation names."""
        return sorted(self._compensations)

    @property
    def objectives(self) -> list[str]:
        """Declared objective names."""
        return sorted(self._objectives)

    def action_handler(self, name: str) -> ActionHandler | None:
        """The handler of action `name` (or the `"*"` one), None when undeclared."""
        return self._actions.get(name) or self._actions.get(WILDCARD)

    def compensation_handler(self, name: str) -> ActionHandler | None:
        """The handler of compensation `name` (or the `"*"` one), None when undeclared."""
        return self._compensations.get(name) or self._compensations.get(WILDCARD)

    def objective_handler(self, name: str) -> EvaluateHandler | None:
        """The function of objective `name`, None when undeclared."""
        return self._objectives.get(name)

    @property
    def registrar(self) -> Registrar | None:
        """The registrar once `start` has run with a registry target, else None."""
        return self._registrar

    @property
    def endpoint(self) -> str:
        """`host:port` callers use to reach this agent (valid after `start`)."""
        return f"{self.settings.advertise_host or self.settings.host}:{self.port}"


    # ---- lifecycle ----------------------------------------------------------
    def _config(self) -> ServerConfig:
        s = self.settings
        return ServerConfig(
            name="agent",
            host=s.host,
            port=s.port,
            metrics_port=s.metrics_port,
            redis_url=s.redis_url or "redis://127.0.0.1:6379/0",
            redis_password=s.redis_password,
            redis_sentinels=s.redis_sentinels,
            redis_sentinel_master=s.redis_sentinel_master,
            redis_sentinel_password=s.redis_sentinel_password,
            redis_cluster_nodes=s.redis_cluster_nodes,
            tls_cert_file=s.tls_cert_file,
            tls_key_file=s.tls_key_file,
            tls_client_ca_file=s.tls_client_ca_file,
            auth_tokens_file=s.auth_tokens_file,
            auth_token=s.token,
            tls_ca_file=s.tls_ca_file,
            grace_period_s=s.grace_period_s,
            registry_target=s.registry_target,
            otlp_endpoint=s.otlp_endpoint,
            trace_sample_ratio=s.trace_sample_ratio,
        )

    async def start(self) -> int:
        """Bind, register (when a registry is configured), start heartbeats.

        Returns:
            The bound gRPC port.

        Raises:
            OSError: when the port cannot be bound.
            AgentMeshError: when registration is refused, or a declared
                constraint is (AlreadyExists: one of that name differs).
            ValueError: no handler, or constraints without a router_target.
        """
        if not (self._actions or self._compensations or self._objectives or self._message_subs):
            raise ValueError(
                f"agent {self.agent_id} declares no action, compensation, objective or "
                "message handler")
        s = self.settings
        if self._message_subs and not s.bus_target:
            raise ValueError(f"agent {self.agent_id} has message handlers but no bus_target")
        daemon = Daemon(self._config())
        daemon.service_name = self.agent_type or self.agent_id
        self._daemon = daemon
        daemon.add_service(
            agent_pb2_grpc.add_AgentServiceServicer_to_server,
            AgentServicer(self),
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
        )
        # Redis Cluster nodes alone (the URL left empty) also mean a durable store.
        durable = bool(s.redis_url or s.redis_cluster_nodes)
        store = (
            RedisIdempotencyStore(daemon.redis(), agent_id=self.agent_id, ttl_s=s.idempotency_ttl_s)
            if durable
            else MemoryIdempotencyStore(ttl_s=s.idempotency_ttl_s)
        )
        self.executor.open(agent_id=self.agent_id, store=store, max_concurrency=s.max_concurrency)
        if self.constraints and not s.router_target:
            raise ValueError(
                f"agent {self.agent_id} declares constraints but has no router_target"
            )
        if s.router_target:
            self.safety = SafetyLink(daemon.channel(s.router_target), agent_id=self.agent_id)
            if self.constraints:
                daemon.on_startup(self._register_constraints)
        if s.bus_target:
            claims = RedisMessageClaims(daemon.redis()) if durable else None
            self.bus = BusLink(self, s.bus_target, token=s.token, tls_ca_file=s.tls_ca_file,
                               claims=claims)
            # Subscribed before `serving` is logged and before registration.
            daemon.on_startup(self._subscribe)
        if s.registry_target:
            self._registrar = Registrar(self, daemon.channel(s.registry_target))
            daemon.on_startup(self._register)
        if s.a2a_port >= 0:
            await self._start_a2a()
        self.port = await daemon.start()
        self.metrics_port = daemon.metrics_port
        return self.port

    async def _start_a2a(self) -> None:
        # Before the gRPC daemon, so its port is known once `serving` is logged.
        from agentmesh.agent.a2a_server import A2AServer  # lazy: the a2a extra

        s = self.settings
        self.a2a = A2AServer(self, host=s.host, port=s.a2a_port, advertise_host=s.advertise_host)
        port = await self.a2a.start()
        log.info("a2a serving", extra={"agent_id": self.agent_id, "a2a_port": port,
                                       "agent_card_url": self.a2a.card_url})

    async def _register_constraints(self) -> None:
        # Before registration, so the agent is never discoverable while the
        # guardrails it declares are not in force yet.
        assert self.safety is not None
        await self.safety.register(self.constraints)

    async def _subscribe(self) -> None:
        assert self.bus is not None
        subs = []
        for m in self._message_subs:
            pats = (*m.patterns, inbox_topic(self.agent_id)) if m.inbox else m.patterns
            group = m.group or (self.agent_id if m.inbox and not m.patterns
                                else self.agent_type or self.agent_id)
            subs.append(replace(m, patterns=pats, group=group))
        await self.bus.start(subs)

    async def _register(self) -> None:
        # Runs as a Daemon startup hook: the port is bound, the `serving` line
        # is not logged yet, so "serving" means "registered" to process launchers.
        assert self._daemon is not None and self._registrar is not None
        self.port = self._daemon.port
        await self._registrar.start()

    async def stop(self) -> None:
        """Deregister, report NOT_SERVING, drain in-flight calls, release resources.

        Safe to call more than once.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            if self._registrar is not None:
                await self._registrar.stop()
            if self.a2a is not None:
                await self.a2a.stop()  # finishes the A2A requests in flight
            if self.bus is not None:
                # In-flight handlers finish and ack; the rest is redelivered.
                await self.bus.stop(timeout_s=self.settings.grace_period_s)
            if self._daemon is not None:
                t0 = time.monotonic()
                await self._daemon.stop()
                # Handler tasks outlive callers that gave up; let them finish
                # so their results are stored and their effects complete.
                left = max(0.0, self.settings.grace_period_s - (time.monotonic() - t0))
                await self.executor.drain(timeout_s=left or None)
            await self.executor.close()
        finally:
            self._stopped.set()

    async def serve(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop (deregister and drain)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("stopping", extra={"agent_id": self.agent_id})
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def run(
        self, argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None
    ) -> None:
        """Parse flags/env (see `agentmesh.agent.cli.add_arguments`), configure
        logs, serve until SIGTERM.

        Args:
            argv: arguments without the program name; None reads sys.argv.
            parser: a parser that already holds the caller's own flags; their
                values are available as `agent.args` before serving starts.

        Raises:
            SystemExit: 1 when the agent cannot start (a refused registration,
                a taken port).
        """
        run_agent(self, argv, parser=parser)


async def serve_all(agents: Sequence[Agent]) -> None:
    """Serve several agents in one process until SIGTERM/SIGINT, then stop them all.

    Each agent keeps its own server, port and registration; the signal
    handlers are installed once (an agent's own `serve` would replace them).

    Raises:
        Exception: the first start failure, after every started agent is stopped.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Agent] = []
    try:
        for a in agents:
            await a.start()
            started.append(a)
        await stop.wait()
    finally:
        await asyncio.gather(*(a.stop() for a in started), return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


__all__ = [
    "COMPENSATE_SUFFIX",
    "REASON_COMPENSATED",
    "REASON_EXECUTE_IN_FLIGHT",
    "WILDCARD",
    "ActionHandler",
    "ActionOutput",
    "Agent",
    "AgentSettings",
    "EvaluateHandler",
    "MessageContext",
    "add_arguments",
    "apply_arguments",
    "compensated_key",
    "map_exception",
    "serve_all",
]
