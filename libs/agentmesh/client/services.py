"""Typed wrappers, one per RPC. Written by `python -m agentmesh.client._codegen`
from the generated descriptors; do not edit by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from agentmesh.bus.v1 import bus_pb2
from agentmesh.client.base import ClientBase, Requests, _build
from agentmesh.registry.v1 import coordination_pb2 as registry_coordination_pb2
from agentmesh.registry.v1 import registry_pb2
from agentmesh.router.v1 import router_pb2
from agentmesh.router.v1 import safety_pb2 as router_safety_pb2
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2
from agentmesh.task.v1 import task_pb2


class ServiceMethods(ClientBase):
    """One method per RPC; see `agentmesh.client.base.ClientBase` for behaviour."""

    # ---- agentmesh.registry.v1.RegistryService -----------------------

    async def register_agent(
        self,
        request: registry_pb2.RegisterAgentRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_pb2.RegisterAgentResponse:
        """`agentmesh.registry.v1.RegistryService.RegisterAgent`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.registry.RegisterAgent,
            _build(registry_pb2.RegisterAgentRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.RegistryService/RegisterAgent",
        )

    async def deregister_agent(
        self,
        request: registry_pb2.DeregisterAgentRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_pb2.DeregisterAgentResponse:
        """`agentmesh.registry.v1.RegistryService.DeregisterAgent`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.registry.DeregisterAgent,
            _build(registry_pb2.DeregisterAgentRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.RegistryService/DeregisterAgent",
        )

    async def get_agent(
        self,
        request: registry_pb2.GetAgentRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_pb2.GetAgentResponse:
        """`agentmesh.registry.v1.RegistryService.GetAgent`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.registry.GetAgent,
            _build(registry_pb2.GetAgentRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.RegistryService/GetAgent",
        )

    async def list_agents(
        self,
        request: registry_pb2.ListAgentsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_pb2.ListAgentsResponse:
        """`agentmesh.registry.v1.RegistryService.ListAgents`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.registry.ListAgents,
            _build(registry_pb2.ListAgentsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.RegistryService/ListAgents",
        )

    async def heartbeat(
        self,
        request: registry_pb2.HeartbeatRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_pb2.HeartbeatResponse:
        """`agentmesh.registry.v1.RegistryService.Heartbeat`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.registry.Heartbeat,
            _build(registry_pb2.HeartbeatRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.RegistryService/Heartbeat",
        )

    def heartbeat_stream(
        self,
        requests: Requests[registry_pb2.HeartbeatStreamRequest],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[registry_pb2.HeartbeatStreamResponse]:
        """`agentmesh.registry.v1.RegistryService.HeartbeatStream`.

        A bidirectional stream; errors raise AgentMeshError.
        """
        return self._stream(
            self.registry.HeartbeatStream, requests, timeout_s=timeout_s, metadata=metadata
        )

    async def discover_agents(
        self,
        request: registry_pb2.DiscoverAgentsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_pb2.DiscoverAgentsResponse:
        """`agentmesh.registry.v1.RegistryService.DiscoverAgents`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.registry.DiscoverAgents,
            _build(registry_pb2.DiscoverAgentsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.RegistryService/DiscoverAgents",
        )

    def watch_agents(
        self,
        request: registry_pb2.WatchAgentsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
        """`agentmesh.registry.v1.RegistryService.WatchAgents`.

        A server stream (no default deadline); errors raise AgentMeshError.
        """
        return self._server_stream(
            self.registry.WatchAgents,
            _build(registry_pb2.WatchAgentsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
        )

    # ---- agentmesh.registry.v1.CoordinationService -------------------

    async def acquire_lock(
        self,
        request: registry_coordination_pb2.AcquireLockRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_coordination_pb2.AcquireLockResponse:
        """`agentmesh.registry.v1.CoordinationService.AcquireLock`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.coordination.AcquireLock,
            _build(registry_coordination_pb2.AcquireLockRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.CoordinationService/AcquireLock",
        )

    async def renew_lock(
        self,
        request: registry_coordination_pb2.RenewLockRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_coordination_pb2.RenewLockResponse:
        """`agentmesh.registry.v1.CoordinationService.RenewLock`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.coordination.RenewLock,
            _build(registry_coordination_pb2.RenewLockRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.CoordinationService/RenewLock",
        )

    async def release_lock(
        self,
        request: registry_coordination_pb2.ReleaseLockRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_coordination_pb2.ReleaseLockResponse:
        """`agentmesh.registry.v1.CoordinationService.ReleaseLock`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.coordination.ReleaseLock,
            _build(registry_coordination_pb2.ReleaseLockRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.CoordinationService/ReleaseLock",
        )

    async def create_proposal(
        self,
        request: registry_coordination_pb2.CreateProposalRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_coordination_pb2.CreateProposalResponse:
        """`agentmesh.registry.v1.CoordinationService.CreateProposal`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.coordination.CreateProposal,
            _build(registry_coordination_pb2.CreateProposalRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.CoordinationService/CreateProposal",
        )

    async def cast_vote(
        self,
        request: registry_coordination_pb2.CastVoteRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_coordination_pb2.CastVoteResponse:
        """`agentmesh.registry.v1.CoordinationService.CastVote`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.coordination.CastVote,
            _build(registry_coordination_pb2.CastVoteRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.CoordinationService/CastVote",
        )

    async def get_proposal(
        self,
        request: registry_coordination_pb2.GetProposalRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> registry_coordination_pb2.GetProposalResponse:
        """`agentmesh.registry.v1.CoordinationService.GetProposal`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.coordination.GetProposal,
            _build(registry_coordination_pb2.GetProposalRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.registry.v1.CoordinationService/GetProposal",
        )

    # ---- agentmesh.router.v1.RouterService ---------------------------

    async def route(
        self,
        request: router_pb2.RouteRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.RouteResponse:
        """`agentmesh.router.v1.RouterService.Route`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.Route,
            _build(router_pb2.RouteRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/Route",
        )

    async def route_batch(
        self,
        request: router_pb2.RouteBatchRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.RouteBatchResponse:
        """`agentmesh.router.v1.RouterService.RouteBatch`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.RouteBatch,
            _build(router_pb2.RouteBatchRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/RouteBatch",
        )

    def route_stream(
        self,
        requests: Requests[router_pb2.RouteStreamRequest],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[router_pb2.RouteStreamResponse]:
        """`agentmesh.router.v1.RouterService.RouteStream`.

        A bidirectional stream; errors raise AgentMeshError.
        """
        return self._stream(
            self.router.RouteStream, requests, timeout_s=timeout_s, metadata=metadata
        )

    async def invoke(
        self,
        request: router_pb2.InvokeRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.InvokeResponse:
        """`agentmesh.router.v1.RouterService.Invoke`.

        IDEMPOTENT when `idempotency_key` is set (retried like one); otherwise
        retried only when the call provably took no effect.
        """
        return await self._unary(
            self.router.Invoke,
            _build(router_pb2.InvokeRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/Invoke",
        )

    async def scatter_gather(
        self,
        request: router_pb2.ScatterGatherRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.ScatterGatherResponse:
        """`agentmesh.router.v1.RouterService.ScatterGather`.

        IDEMPOTENT when `idempotency_key` is set (retried like one); otherwise
        retried only when the call provably took no effect.
        """
        return await self._unary(
            self.router.ScatterGather,
            _build(router_pb2.ScatterGatherRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/ScatterGather",
        )

    async def create_route_rule(
        self,
        request: router_pb2.CreateRouteRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.CreateRouteRuleResponse:
        """`agentmesh.router.v1.RouterService.CreateRouteRule`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.router.CreateRouteRule,
            _build(router_pb2.CreateRouteRuleRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/CreateRouteRule",
        )

    async def get_route_rule(
        self,
        request: router_pb2.GetRouteRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.GetRouteRuleResponse:
        """`agentmesh.router.v1.RouterService.GetRouteRule`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.GetRouteRule,
            _build(router_pb2.GetRouteRuleRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/GetRouteRule",
        )

    async def list_route_rules(
        self,
        request: router_pb2.ListRouteRulesRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.ListRouteRulesResponse:
        """`agentmesh.router.v1.RouterService.ListRouteRules`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.ListRouteRules,
            _build(router_pb2.ListRouteRulesRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/ListRouteRules",
        )

    async def delete_route_rule(
        self,
        request: router_pb2.DeleteRouteRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.DeleteRouteRuleResponse:
        """`agentmesh.router.v1.RouterService.DeleteRouteRule`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.DeleteRouteRule,
            _build(router_pb2.DeleteRouteRuleRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/DeleteRouteRule",
        )

    async def report_load(
        self,
        request: router_pb2.ReportLoadRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.ReportLoadResponse:
        """`agentmesh.router.v1.RouterService.ReportLoad`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.ReportLoad,
            _build(router_pb2.ReportLoadRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/ReportLoad",
        )

    async def create_safety_rule(
        self,
        request: router_pb2.CreateSafetyRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.CreateSafetyRuleResponse:
        """`agentmesh.router.v1.RouterService.CreateSafetyRule`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.router.CreateSafetyRule,
            _build(router_pb2.CreateSafetyRuleRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/CreateSafetyRule",
        )

    async def get_safety_rule(
        self,
        request: router_pb2.GetSafetyRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.GetSafetyRuleResponse:
        """`agentmesh.router.v1.RouterService.GetSafetyRule`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.GetSafetyRule,
            _build(router_pb2.GetSafetyRuleRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/GetSafetyRule",
        )

    async def list_safety_rules(
        self,
        request: router_pb2.ListSafetyRulesRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.ListSafetyRulesResponse:
        """`agentmesh.router.v1.RouterService.ListSafetyRules`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.ListSafetyRules,
            _build(router_pb2.ListSafetyRulesRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/ListSafetyRules",
        )

    async def delete_safety_rule(
        self,
        request: router_pb2.DeleteSafetyRuleRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.DeleteSafetyRuleResponse:
        """`agentmesh.router.v1.RouterService.DeleteSafetyRule`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.DeleteSafetyRule,
            _build(router_pb2.DeleteSafetyRuleRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/DeleteSafetyRule",
        )

    async def list_target_states(
        self,
        request: router_pb2.ListTargetStatesRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_pb2.ListTargetStatesResponse:
        """`agentmesh.router.v1.RouterService.ListTargetStates`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.router.ListTargetStates,
            _build(router_pb2.ListTargetStatesRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.RouterService/ListTargetStates",
        )

    # ---- agentmesh.router.v1.SafetyService ---------------------------

    async def validate_operation(
        self,
        request: router_safety_pb2.ValidateOperationRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.ValidateOperationResponse:
        """`agentmesh.router.v1.SafetyService.ValidateOperation`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.safety.ValidateOperation,
            _build(router_safety_pb2.ValidateOperationRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/ValidateOperation",
        )

    async def create_constraint(
        self,
        request: router_safety_pb2.CreateConstraintRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.CreateConstraintResponse:
        """`agentmesh.router.v1.SafetyService.CreateConstraint`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.safety.CreateConstraint,
            _build(router_safety_pb2.CreateConstraintRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/CreateConstraint",
        )

    async def create_circuit_breaker(
        self,
        request: router_safety_pb2.CreateCircuitBreakerRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.CreateCircuitBreakerResponse:
        """`agentmesh.router.v1.SafetyService.CreateCircuitBreaker`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.safety.CreateCircuitBreaker,
            _build(router_safety_pb2.CreateCircuitBreakerRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/CreateCircuitBreaker",
        )

    async def record_outcome(
        self,
        request: router_safety_pb2.RecordOutcomeRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.RecordOutcomeResponse:
        """`agentmesh.router.v1.SafetyService.RecordOutcome`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.safety.RecordOutcome,
            _build(router_safety_pb2.RecordOutcomeRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/RecordOutcome",
        )

    async def get_circuit_breaker(
        self,
        request: router_safety_pb2.GetCircuitBreakerRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.GetCircuitBreakerResponse:
        """`agentmesh.router.v1.SafetyService.GetCircuitBreaker`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.safety.GetCircuitBreaker,
            _build(router_safety_pb2.GetCircuitBreakerRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/GetCircuitBreaker",
        )

    async def list_circuit_breakers(
        self,
        request: router_safety_pb2.ListCircuitBreakersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.ListCircuitBreakersResponse:
        """`agentmesh.router.v1.SafetyService.ListCircuitBreakers`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.safety.ListCircuitBreakers,
            _build(router_safety_pb2.ListCircuitBreakersRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/ListCircuitBreakers",
        )

    async def create_rate_limiter(
        self,
        request: router_safety_pb2.CreateRateLimiterRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.CreateRateLimiterResponse:
        """`agentmesh.router.v1.SafetyService.CreateRateLimiter`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.safety.CreateRateLimiter,
            _build(router_safety_pb2.CreateRateLimiterRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/CreateRateLimiter",
        )

    async def acquire_permit(
        self,
        request: router_safety_pb2.AcquirePermitRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.AcquirePermitResponse:
        """`agentmesh.router.v1.SafetyService.AcquirePermit`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.safety.AcquirePermit,
            _build(router_safety_pb2.AcquirePermitRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/AcquirePermit",
        )

    async def get_rate_limiter(
        self,
        request: router_safety_pb2.GetRateLimiterRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> router_safety_pb2.GetRateLimiterResponse:
        """`agentmesh.router.v1.SafetyService.GetRateLimiter`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.safety.GetRateLimiter,
            _build(router_safety_pb2.GetRateLimiterRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.router.v1.SafetyService/GetRateLimiter",
        )

    # ---- agentmesh.bus.v1.BusService ---------------------------------

    async def publish(
        self,
        request: bus_pb2.PublishRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.PublishResponse:
        """`agentmesh.bus.v1.BusService.Publish`.

        IDEMPOTENT when `message.id` is set (retried like one); otherwise
        retried only when the call provably took no effect.
        """
        return await self._unary(
            self.bus.Publish,
            _build(bus_pb2.PublishRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/Publish",
        )

    def publish_stream(
        self,
        requests: Requests[bus_pb2.PublishStreamRequest],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[bus_pb2.PublishStreamResponse]:
        """`agentmesh.bus.v1.BusService.PublishStream`.

        A bidirectional stream; errors raise AgentMeshError.
        """
        return self._stream(
            self.bus.PublishStream, requests, timeout_s=timeout_s, metadata=metadata
        )

    def subscribe(
        self,
        requests: Requests[bus_pb2.SubscribeRequest],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[bus_pb2.SubscribeResponse]:
        """`agentmesh.bus.v1.BusService.Subscribe`.

        A bidirectional stream; errors raise AgentMeshError.
        """
        return self._stream(
            self.bus.Subscribe, requests, timeout_s=timeout_s, metadata=metadata
        )

    async def bus_request(
        self,
        request: bus_pb2.RequestRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.RequestResponse:
        """`agentmesh.bus.v1.BusService.Request`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.bus.Request,
            _build(bus_pb2.RequestRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/Request",
        )

    async def bus_scatter_gather(
        self,
        request: bus_pb2.ScatterGatherRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.ScatterGatherResponse:
        """`agentmesh.bus.v1.BusService.ScatterGather`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.bus.ScatterGather,
            _build(bus_pb2.ScatterGatherRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/ScatterGather",
        )

    async def list_dead_letters(
        self,
        request: bus_pb2.ListDeadLettersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.ListDeadLettersResponse:
        """`agentmesh.bus.v1.BusService.ListDeadLetters`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.bus.ListDeadLetters,
            _build(bus_pb2.ListDeadLettersRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/ListDeadLetters",
        )

    async def redrive_dead_letters(
        self,
        request: bus_pb2.RedriveDeadLettersRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.RedriveDeadLettersResponse:
        """`agentmesh.bus.v1.BusService.RedriveDeadLetters`.

        IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect.
        """
        return await self._unary(
            self.bus.RedriveDeadLetters,
            _build(bus_pb2.RedriveDeadLettersRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/RedriveDeadLetters",
        )

    async def create_topic(
        self,
        request: bus_pb2.CreateTopicRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.CreateTopicResponse:
        """`agentmesh.bus.v1.BusService.CreateTopic`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.bus.CreateTopic,
            _build(bus_pb2.CreateTopicRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/CreateTopic",
        )

    async def list_topics(
        self,
        request: bus_pb2.ListTopicsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.ListTopicsResponse:
        """`agentmesh.bus.v1.BusService.ListTopics`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.bus.ListTopics,
            _build(bus_pb2.ListTopicsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/ListTopics",
        )

    async def verify_chain(
        self,
        request: bus_pb2.VerifyChainRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> bus_pb2.VerifyChainResponse:
        """`agentmesh.bus.v1.BusService.VerifyChain`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.bus.VerifyChain,
            _build(bus_pb2.VerifyChainRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.bus.v1.BusService/VerifyChain",
        )

    # ---- agentmesh.saga.v1.SagaService -------------------------------

    async def start_saga(
        self,
        request: saga_pb2.StartSagaRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.StartSagaResponse:
        """`agentmesh.saga.v1.SagaService.StartSaga`.

        IDEMPOTENT when `idempotency_key` is set (retried like one); otherwise
        retried only when the call provably took no effect.
        """
        return await self._unary(
            self.saga.StartSaga,
            _build(saga_pb2.StartSagaRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/StartSaga",
        )

    async def register_saga_definition(
        self,
        request: saga_pb2.RegisterSagaDefinitionRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.RegisterSagaDefinitionResponse:
        """`agentmesh.saga.v1.SagaService.RegisterSagaDefinition`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.RegisterSagaDefinition,
            _build(saga_pb2.RegisterSagaDefinitionRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/RegisterSagaDefinition",
        )

    async def get_saga_definition(
        self,
        request: saga_pb2.GetSagaDefinitionRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.GetSagaDefinitionResponse:
        """`agentmesh.saga.v1.SagaService.GetSagaDefinition`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.GetSagaDefinition,
            _build(saga_pb2.GetSagaDefinitionRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/GetSagaDefinition",
        )

    async def list_saga_definitions(
        self,
        request: saga_pb2.ListSagaDefinitionsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.ListSagaDefinitionsResponse:
        """`agentmesh.saga.v1.SagaService.ListSagaDefinitions`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.ListSagaDefinitions,
            _build(saga_pb2.ListSagaDefinitionsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/ListSagaDefinitions",
        )

    async def get_saga(
        self,
        request: saga_pb2.GetSagaRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.GetSagaResponse:
        """`agentmesh.saga.v1.SagaService.GetSaga`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.GetSaga,
            _build(saga_pb2.GetSagaRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/GetSaga",
        )

    async def list_sagas(
        self,
        request: saga_pb2.ListSagasRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.ListSagasResponse:
        """`agentmesh.saga.v1.SagaService.ListSagas`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.ListSagas,
            _build(saga_pb2.ListSagasRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/ListSagas",
        )

    async def cancel_saga(
        self,
        request: saga_pb2.CancelSagaRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.CancelSagaResponse:
        """`agentmesh.saga.v1.SagaService.CancelSaga`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.CancelSaga,
            _build(saga_pb2.CancelSagaRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/CancelSaga",
        )

    def watch_saga(
        self,
        request: saga_pb2.WatchSagaRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> AsyncIterator[saga_pb2.WatchSagaResponse]:
        """`agentmesh.saga.v1.SagaService.WatchSaga`.

        A server stream (no default deadline); errors raise AgentMeshError.
        """
        return self._server_stream(
            self.saga.WatchSaga,
            _build(saga_pb2.WatchSagaRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
        )

    async def get_saga_events(
        self,
        request: saga_pb2.GetSagaEventsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> saga_pb2.GetSagaEventsResponse:
        """`agentmesh.saga.v1.SagaService.GetSagaEvents`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.saga.GetSagaEvents,
            _build(saga_pb2.GetSagaEventsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.saga.v1.SagaService/GetSagaEvents",
        )

    # ---- agentmesh.task.v1.TaskService -------------------------------

    async def schedule_task(
        self,
        request: task_pb2.ScheduleTaskRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> task_pb2.ScheduleTaskResponse:
        """`agentmesh.task.v1.TaskService.ScheduleTask`.

        IDEMPOTENT when `idempotency_key` is set (retried like one); otherwise
        retried only when the call provably took no effect.
        """
        return await self._unary(
            self.task.ScheduleTask,
            _build(task_pb2.ScheduleTaskRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.task.v1.TaskService/ScheduleTask",
        )

    async def get_task(
        self,
        request: task_pb2.GetTaskRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> task_pb2.GetTaskResponse:
        """`agentmesh.task.v1.TaskService.GetTask`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.task.GetTask,
            _build(task_pb2.GetTaskRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.task.v1.TaskService/GetTask",
        )

    async def list_tasks(
        self,
        request: task_pb2.ListTasksRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> task_pb2.ListTasksResponse:
        """`agentmesh.task.v1.TaskService.ListTasks`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.task.ListTasks,
            _build(task_pb2.ListTasksRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.task.v1.TaskService/ListTasks",
        )

    async def cancel_task(
        self,
        request: task_pb2.CancelTaskRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> task_pb2.CancelTaskResponse:
        """`agentmesh.task.v1.TaskService.CancelTask`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.task.CancelTask,
            _build(task_pb2.CancelTaskRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.task.v1.TaskService/CancelTask",
        )

    def watch_task(
        self,
        request: task_pb2.WaitTaskRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> AsyncIterator[task_pb2.WaitTaskResponse]:
        """`agentmesh.task.v1.TaskService.WaitTask`.

        A server stream (no default deadline); errors raise AgentMeshError.
        """
        return self._server_stream(
            self.task.WaitTask,
            _build(task_pb2.WaitTaskRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
        )

    # ---- agentmesh.swarm.v1.SwarmService -----------------------------

    async def deploy_swarm(
        self,
        request: swarm_pb2.DeploySwarmRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> swarm_pb2.DeploySwarmResponse:
        """`agentmesh.swarm.v1.SwarmService.DeploySwarm`.

        IDEMPOTENT when `swarm_id` is set (retried like one); otherwise
        retried only when the call provably took no effect.
        """
        return await self._unary(
            self.swarm.DeploySwarm,
            _build(swarm_pb2.DeploySwarmRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.swarm.v1.SwarmService/DeploySwarm",
        )

    async def get_swarm(
        self,
        request: swarm_pb2.GetSwarmRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> swarm_pb2.GetSwarmResponse:
        """`agentmesh.swarm.v1.SwarmService.GetSwarm`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.swarm.GetSwarm,
            _build(swarm_pb2.GetSwarmRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.swarm.v1.SwarmService/GetSwarm",
        )

    async def list_swarms(
        self,
        request: swarm_pb2.ListSwarmsRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> swarm_pb2.ListSwarmsResponse:
        """`agentmesh.swarm.v1.SwarmService.ListSwarms`.

        NO_SIDE_EFFECTS: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.swarm.ListSwarms,
            _build(swarm_pb2.ListSwarmsRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.swarm.v1.SwarmService/ListSwarms",
        )

    async def stop_swarm(
        self,
        request: swarm_pb2.StopSwarmRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> swarm_pb2.StopSwarmResponse:
        """`agentmesh.swarm.v1.SwarmService.StopSwarm`.

        IDEMPOTENT: retried on the codes `is_retryable` allows for it.
        """
        return await self._unary(
            self.swarm.StopSwarm,
            _build(swarm_pb2.StopSwarmRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="/agentmesh.swarm.v1.SwarmService/StopSwarm",
        )

    def watch_swarm(
        self,
        request: swarm_pb2.WatchSwarmRequest | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> AsyncIterator[swarm_pb2.WatchSwarmResponse]:
        """`agentmesh.swarm.v1.SwarmService.WatchSwarm`.

        A server stream (no default deadline); errors raise AgentMeshError.
        """
        return self._server_stream(
            self.swarm.WatchSwarm,
            _build(swarm_pb2.WatchSwarmRequest, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
        )
