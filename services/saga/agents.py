"""Calls to agents: resolve a step's target, then AgentService.Execute/Compensate.

Targets:
  * agent id → the registry's hash `am:reg:agent:{id}` field `endpoint`
    (agentmesh.catalog.agent_key; cached for `endpoint_ttl_ms`).
  * selector → the router's Route with STRATEGY_CONSISTENT_HASH on the step's
    idempotency key, so every attempt of a step, and its compensation, goes to
    the same agent while the candidate set is stable (agents dedupe per key,
    so a retry must not hop to another agent). The coordinator then calls the
    agent itself, because Router.Invoke carries neither the attempt number
    nor Compensate. When the router is not configured, unreachable or does not
    implement Route, the registry's catalog is read directly
    (agentmesh.catalog.find_agents: the whole AgentSelector, status
    ACTIVE/DEGRADED) and one agent is picked by rendezvous hashing on the
    same key. Like the router's CONSISTENT_HASH, the pick spreads keys over
    every matching agent: preferred_location orders candidates but does not
    narrow a hash pick, so both paths agree on the key → agent mapping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import grpc
import redis.asyncio as aioredis
from google.rpc import error_details_pb2

from agentmesh import catalog
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.common.v1 import common_pb2
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.saga.v1 import saga_pb2
from services.saga.state import dict_to_struct, struct_to_dict


class CallError(Exception):
    """A failed agent call.

    Attributes:
        code: gRPC status code name, e.g. "UNAVAILABLE".
        message: the error message.
        reason: the agent's google.rpc.ErrorInfo reason, "" when none; e.g.
            "COMPENSATED" (ABORTED: the Agent SDK refuses an Execute whose key
            was already compensated).
    """

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @classmethod
    def from_rpc(cls, e: grpc.aio.AioRpcError) -> CallError:
        """The CallError for an agent's failed RPC, keeping its ErrorInfo reason."""
        info = from_rpc_error(e).detail(error_details_pb2.ErrorInfo)
        reason = info.reason if isinstance(info, error_details_pb2.ErrorInfo) else ""
        return cls(e.code().name, e.details() or "", reason=reason)


def _rendezvous(key: str, candidates: list[str]) -> str:
    """Highest-random-weight choice (Thaler & Ravishankar 1998): stable per key."""
    return max(candidates, key=lambda c: hashlib.sha1(f"{c}|{key}".encode()).digest())


class AgentCaller:
    """Resolves targets and calls agents.

    Args:
        redis: the registry's Redis (same instance as the coordinator's).
        token: bearer token for agent calls.
        tls_ca_file: PEM CA for TLS agent endpoints ("" = plaintext).
        client_cert_file / client_key_file: PEM identity presented to agents
            and the router that require mTLS ("" = none).
        router_target: router daemon host:port; "" disables the router path.
        endpoint_ttl_ms: how long a resolved agent endpoint is reused.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        token: str = "",
        tls_ca_file: str = "",
        client_cert_file: str = "",
        client_key_file: str = "",
        router_target: str = "",
        endpoint_ttl_ms: float = 1000.0,
    ) -> None:
        self.r: Any = redis  # redis-py's stubs type replies as bytes | str | ...
        self.token = token
        self.tls_ca_file = tls_ca_file
        self.client_cert_file = client_cert_file
        self.client_key_file = client_key_file
        self.router_target = router_target
        self.endpoint_ttl_ms = endpoint_ttl_ms
        self._endpoints: dict[str, tuple[str, float]] = {}
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._router: Any = None
        self._router_ok = bool(router_target)

    async def close(self) -> None:
        """Close every channel."""
        for ch in self._channels:
            await ch.close()

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = create_channel(
            target,
            token=self.token,
            tls_ca_file=self.tls_ca_file,
            client_cert_file=self.client_cert_file,
            client_key_file=self.client_key_file,
        )
        self._channels.append(ch)
        return ch

    def _stub(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            ch = self._channel(endpoint)
            stub = self._stubs[endpoint] = agent_pb2_grpc.AgentServiceStub(ch)
        return stub

    async def _agent_endpoint(self, agent_id: str) -> str:
        now = time.monotonic() * 1000
        hit = self._endpoints.get(agent_id)
        if hit and hit[1] > now:
            return hit[0]
        raw = await self.r.hget(catalog.agent_key(agent_id), "endpoint")
        if not raw:
            raise CallError("UNAVAILABLE", f"agent {agent_id!r} is not registered")
        ep = raw.decode() if isinstance(raw, bytes) else str(raw)
        self._endpoints[agent_id] = (ep, now + self.endpoint_ttl_ms)
        return ep

    async def _route(self, selector: common_pb2.AgentSelector, *, action: str, key: str) -> str:
        if self._router_ok:
            try:
                return await self._route_via_router(selector, action=action, key=key)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._router_ok = False
                elif e.code() == grpc.StatusCode.UNAVAILABLE and "NO_HEALTHY_TARGET" in (
                    e.details() or ""
                ):
                    raise CallError("UNAVAILABLE", f"router: {e.details()}") from e
                elif e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise CallError(e.code().name, f"router: {e.details()}") from e
        return await self._route_via_registry(selector, key=key)

    async def _route_via_router(
        self, selector: common_pb2.AgentSelector, *, action: str, key: str
    ) -> str:
        from agentmesh.router.v1 import router_pb2, router_pb2_grpc

        if self._router is None:
            ch = self._channel(self.router_target)
            self._router = router_pb2_grpc.RouterServiceStub(ch)
        resp = await self._router.Route(
            router_pb2.RouteRequest(
                message=router_pb2.RouteMessage(
                    message_type=action, routing_key=key, selector=selector
                ),
                strategy=router_pb2.STRATEGY_CONSISTENT_HASH,
            ),
            timeout=2.0,
        )
        if not resp.targets:
            raise CallError("UNAVAILABLE", "router returned no target")
        return str(resp.targets[0].endpoint)

    async def _route_via_registry(self, selector: common_pb2.AgentSelector, *, key: str) -> str:
        try:
            found = await catalog.find_agents(self.r, selector)
        except catalog.ConstraintError as e:
            # definitions are validated; this guards ones stored before that check
            raise CallError("INVALID_ARGUMENT", f"selector.version_constraint: {e}") from e
        if not found:
            raise CallError("UNAVAILABLE", "no healthy agent matches the selector")
        live = {a.agent_id: a.endpoint for a in found}
        return live[_rendezvous(key, sorted(live))]

    async def resolve(self, step: saga_pb2.Step, *, route_key: str) -> str:
        """host:port of the agent that runs `step` for `route_key`.

        Raises:
            CallError: UNAVAILABLE when nothing can be resolved.
        """
        if step.WhichOneof("target") == "agent_id":
            return await self._agent_endpoint(step.agent_id)
        return await self._route(step.selector, action=step.action, key=route_key)

    async def execute(
        self,
        step: saga_pb2.Step,
        *,
        input: Mapping[str, Any],
        key: str,
        attempt: int,
        timeout_ms: float,
        metadata: Mapping[str, str],
    ) -> dict[str, Any]:
        """Run the step's action; returns its output.

        Raises:
            CallError: with the agent's status code (DEADLINE_EXCEEDED on timeout).
        """
        endpoint = await self.resolve(step, route_key=key)
        try:
            resp = await self._stub(endpoint).Execute(
                agent_pb2.ExecuteRequest(
                    action=step.action,
                    input=dict_to_struct(dict(input)),
                    idempotency_key=key,
                    attempt=attempt,
                    metadata=dict(metadata),
                ),
                timeout=timeout_ms / 1000.0,
            )
        except grpc.aio.AioRpcError as e:
            self._endpoints.pop(step.agent_id, None)
            raise CallError.from_rpc(e) from e
        return struct_to_dict(resp.output)

    async def compensate(
        self,
        step: saga_pb2.Step,
        *,
        input: Mapping[str, Any],
        original_output: Mapping[str, Any] | None,
        key: str,
        route_key: str,
        attempt: int,
        timeout_ms: float,
        metadata: Mapping[str, str],
    ) -> None:
        """Run the step's compensation.

        Raises:
            CallError: with the agent's status code.
        """
        endpoint = await self.resolve(step, route_key=route_key)
        req = agent_pb2.CompensateRequest(
            action=step.compensation_action,
            input=dict_to_struct(dict(input)),
            idempotency_key=key,
            attempt=attempt,
            metadata=dict(metadata),
        )
        if original_output is not None:
            req.original_output.CopyFrom(dict_to_struct(dict(original_output)))
        try:
            await self._stub(endpoint).Compensate(req, timeout=timeout_ms / 1000.0)
        except grpc.aio.AioRpcError as e:
            self._endpoints.pop(step.agent_id, None)
            raise CallError.from_rpc(e) from e
