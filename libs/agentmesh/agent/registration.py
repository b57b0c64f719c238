"""The registrar: an agent's registration and heartbeats with the registry
daemon (agentmesh.registry.v1).

`Registrar.start` registers (retrying what `agentmesh.runtime.retry` calls
retryable for RegisterAgent, an IDEMPOTENT upsert) and starts the heartbeat
loop; `Registrar.stop` ends the loop and deregisters, so no new work is routed
to an agent that is about to drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf import duration_pb2

from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from agentmesh.runtime.errors import AgentMeshError, from_rpc_error
from agentmesh.runtime.retry import idempotency_of, is_retryable_error

if TYPE_CHECKING:
    from agentmesh.agent.sdk import Agent

log = logging.getLogger("agentmesh.agent.registration")

#: Per-call deadline for registry calls, seconds.
CALL_TIMEOUT_S = 5.0
#: Deadline of the deregistration on shutdown; short, so a dead registry
#: does not eat the drain budget.
DEREGISTER_TIMEOUT_S = 2.0
#: How long `register` keeps retrying an unreachable registry, seconds.
REGISTER_TIMEOUT_S = 20.0
_REGISTER = "/agentmesh.registry.v1.RegistryService/RegisterAgent"


class Registrar:
    """Keeps one agent registered: register, heartbeat with load, deregister.

    Args:
        agent: the agent; its descriptor and endpoint are read at call time.
        channel: channel to the registry (closed by the agent's daemon).
    """

    def __init__(self, agent: Agent, channel: grpc.aio.Channel) -> None:
        self._agent = agent
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self.last_status: int = registry_pb2.AGENT_STATUS_UNSPECIFIED
        self.last_health: float = 0.0
        self.heartbeats_sent = 0
        self.registered = False
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register, then heartbeat in the background until `stop`.

        Raises:
            AgentMeshError: when registration is refused or the registry stays
                unreachable (see `register`).
        """
        await self.register()
        self._heartbeat_task = asyncio.create_task(
            self.heartbeat_loop(), name=f"heartbeat-{self._agent.agent_id}"
        )

    async def stop(self) -> None:
        """Stop heartbeating and deregister (best effort). Safe to call twice."""
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.deregister()

    def descriptor(self) -> registry_pb2.Agent:
        """The agent as the registry should store it."""
        a = self._agent
        s = a.settings
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(int(s.heartbeat_interval_s * 1e9))
        return registry_pb2.Agent(
            agent_id=a.agent_id,
            agent_type=a.agent_type,
            version=a.version,
            capabilities=a.capabilities,
            service_types=a.service_types,
            tags=a.tags,
            endpoint=a.endpoint,
            location=s.location,
            sla=registry_pb2.ServiceLevel(max_concurrency=max(0, s.max_concurrency)),
            metadata={
                **a.metadata,
                "actions": ",".join(a.actions),
                "objectives": ",".join(a.objectives),
            },
            heartbeat_interval=interval,
        )

    async def register(self) -> None:
        """Register, retrying retryable failures (UNAVAILABLE, ...) for REGISTER_TIMEOUT_S.

        Raises:
            AgentMeshError: when the registry refuses (e.g. INVALID_ARGUMENT) or
                stays unreachable.
        """
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        delay_s = 0.1
        while True:
            try:
                resp = await self._stub.RegisterAgent(
                    registry_pb2.RegisterAgentRequest(agent=self.descriptor()),
                    timeout=CALL_TIMEOUT_S,
                )
                break
            except grpc.aio.AioRpcError as e:
                retry = is_retryable_error(e, idempotency=idempotency_of(_REGISTER))
                if not retry or time.monotonic() >= deadline:
                    raise from_rpc_error(e) from e
                await asyncio.sleep(delay_s)
                delay_s = min(2.0, delay_s * 2)
        self.registered = True
        self.last_status = resp.agent.status
        self.last_health = resp.agent.health_score
        log.info(
            "registered",
            extra={"agent_id": self._agent.agent_id, "endpoint": self._agent.endpoint,
                   "new_registration": resp.created},
        )

    async def heartbeat(self) -> registry_pb2.HeartbeatResponse:
        """Send one heartbeat with the current load; re-register on NOT_FOUND.

        Raises:
            AgentMeshError: when the registry fails the call.
        """
        req = registry_pb2.HeartbeatRequest(
            agent_id=self._agent.agent_id, load=self._agent.load.snapshot()
        )
        try:
            resp = await self._stub.Heartbeat(req, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                # Expired (e.g. the agent was paused longer than its TTL): come back.
                log.warning("registry forgot this agent; registering again")
                await self.register()
                resp = await self._stub.Heartbeat(req, timeout=CALL_TIMEOUT_S)
            else:
                raise from_rpc_error(e) from e
        self.heartbeats_sent += 1
        self.last_status = resp.status
        self.last_health = resp.health_score
        return resp

    async def heartbeat_loop(self) -> None:
        """Heartbeat every `heartbeat_interval_s` (sooner if the registry asks) until cancelled."""
        interval_s = self._agent.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                resp = await self.heartbeat()
                asked = resp.heartbeat_interval.ToNanoseconds() / 1e9
                interval_s = self._agent.settings.heartbeat_interval_s
                if 0 < asked < interval_s:
                    interval_s = asked
            except (AgentMeshError, grpc.aio.AioRpcError) as e:
                log.warning("heartbeat failed", extra={"error": str(e)})

    async def deregister(self, reason: str = "shutdown") -> None:
        """Remove the agent from the catalog; best effort, errors are logged."""
        if not self.registered:
            return
        try:
            await self._stub.DeregisterAgent(
                registry_pb2.DeregisterAgentRequest(agent_id=self._agent.agent_id, reason=reason),
                timeout=DEREGISTER_TIMEOUT_S,
            )
            self.registered = False
            log.info("deregistered", extra={"agent_id": self._agent.agent_id})
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                self.registered = False
            else:
                log.warning("deregister failed", extra={"code": e.code().name,
                                                         "error": e.details()})
