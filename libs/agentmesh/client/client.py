"""`agentmesh.Client`: the async client of the whole mesh.

    async with Client(registry="127.0.0.1:50053", router="127.0.0.1:50052") as c:
        found = await c.discover_agents(selector={"capabilities": ["carbon_calculation"]})
        out = await c.invoke(message={"capabilities": ["carbon_calculation"]}, action="calculate",
                             input={"spend_usd": 10.0}, idempotency_key="req-1")

Every RPC has a typed method named after it in snake_case (generated into
`agentmesh.client.services_gen`). A method takes either the request message or its
fields as keywords, plus `timeout_s` and `metadata`, and returns the response
message. Errors are `agentmesh.runtime.errors.AgentMeshError` subclasses. Each
service also has a sub-client, `c.registry`, `c.coordination`, `c.router`,
`c.safety`, `c.bus`, `c.saga`, `c.swarm` and `c.task`, with the same methods
(`c.saga.start_saga(...)`) and the typed raw stub as `.stub`
(`c.bus.stub.Publish`). Higher-level helpers are below (`wait_task`
returns a task's result or raises TaskFailed / TaskTimedOut / TaskCancelled;
`breaker`, `permit` and `validate` use the router's SafetyService; `lock` is a
renewed CoordinationService lock (agentmesh.client.lock); `run_saga` and
`deploy_swarm(wait=True)` start and wait (agentmesh.client.workflows)).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc

from agentmesh.agent.structs import dict_to_struct, struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.bus.v1 import bus_pb2
from agentmesh.client import workflows
from agentmesh.client.base import Requests
from agentmesh.client.election import Election
from agentmesh.client.lock import Lease, default_owner
from agentmesh.client.safety import CircuitOpen, retry_delay_s
from agentmesh.client.services_gen import ServiceMethods
from agentmesh.client.subscriber import RECONNECT_CHANNEL_OPTIONS, Subscriber
from agentmesh.client.tasks import error_for
from agentmesh.router.v1 import router_pb2, safety_pb2
from agentmesh.runtime.channels import create_channel
from agentmesh.runtime.errors import ResourceExhausted, Unavailable, from_rpc_error
from agentmesh.saga.v1 import saga_pb2
from agentmesh.swarm.v1 import swarm_pb2
from agentmesh.task.v1 import task_pb2


class Client(ServiceMethods):
    """Async client of every AgentMesh daemon; see the module docstring and
    `agentmesh.client.base.ClientBase` for the constructor."""

    async def __aenter__(self) -> Client:
        return self

    def subscribe_stream(
        self,
        requests: Requests[bus_pb2.SubscribeRequest],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[bus_pb2.SubscribeResponse]:
        """The raw BusService.Subscribe stream (SubscribeRequest in, SubscribeResponse
        out), the same as `client.bus.subscribe`; `subscribe` is the helper over it."""
        return self.bus.subscribe(requests, timeout_s=timeout_s, metadata=metadata)

    def subscribe(
        self,
        patterns: Sequence[str] | str,
        *,
        group: str,
        auto_ack: bool = True,
        max_unacked: int = 100,
        ack_deadline_ms: int = 30_000,
        max_deliveries: int = 5,
        start_position: str = "earliest",
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Subscriber:
        """Messages of the topics matching `patterns`, as an async iterator.

            async for msg in client.subscribe(["orders.*"], group="billing"):
                handle(msg.payload)          # acked when the loop asks for the next one

        With `auto_ack=False` settle each message yourself: `await msg.ack()`
        or `await msg.nack(delay_ms=500)`. The stream resumes after a
        gateway restart (unacked messages come again: at least once,
        deduplicate by `msg.id`). `break` closes the stream; the message in
        hand then is not acked unless you acked it. Also an async context
        manager (`async with client.subscribe(...) as sub:`), which opens the
        stream on entry. See `agentmesh.client.subscriber.Subscriber`.

        Args:
            patterns: topic patterns (`*` one level, `#` any levels).
            group: consumer group; subscribers of one group share the messages.
            auto_ack: ack the previous message when the next one is asked for.
            max_unacked: flow control: most delivered, unsettled messages.
            ack_deadline_ms: an unsettled message is redelivered after this long.
            max_deliveries: deliveries after which a message goes to `<topic>.dlq`.
            start_position: "earliest" or "latest", for a group without offsets.
            metadata: extra gRPC metadata of each stream.

        Raises:
            ValueError: an unknown start_position, no pattern or no group.
            AgentMeshError: while iterating, a status a reopen cannot fix
                (INVALID_ARGUMENT for a bad pattern, PERMISSION_DENIED, ...).
        """
        from agentmesh.bus.v1 import bus_pb2_grpc

        return Subscriber(
            bus_pb2_grpc.BusServiceStub(self._stream_channel("bus")),
            patterns, group=group, auto_ack=auto_ack, max_unacked=max_unacked,
            ack_deadline_ms=ack_deadline_ms, max_deliveries=max_deliveries,
            start_position=start_position, metadata=metadata,
        )

    def _stream_channel(self, daemon: str) -> grpc.aio.Channel:
        """A channel for long streams to `daemon`, reconnecting fast after a restart."""
        key = f"{self.targets[daemon]}#streams"
        ch = self._channels.get(key)
        if ch is None:
            ch = create_channel(
                self.targets[daemon], token=self.token, tls_ca_file=self.tls_ca_file,
                client_cert_file=self.client_cert_file, client_key_file=self.client_key_file,
                options=RECONNECT_CHANNEL_OPTIONS,
            )
            self._channels[key] = ch
        return ch

    async def iter_agents(self, *, page_size: int = 500, **fields: Any) -> AsyncIterator[Any]:
        """Every registered agent (agentmesh.registry.v1.Agent), following page tokens.

        Args:
            page_size: agents per ListAgents page.
            fields: other ListAgentsRequest fields, e.g. `status="AGENT_STATUS_ACTIVE"`.
        """
        token = ""
        while True:
            resp = await self.list_agents(page_size=page_size, page_token=token, **fields)
            for a in resp.agents:
                yield a
            token = resp.next_page_token
            if not token:
                return

    async def discover(
        self,
        *,
        capabilities: list[str] | None = None,
        service_types: list[str] | None = None,
        tags: list[str] | None = None,
        version_constraint: str = "",
        min_health_score: float = 0.0,
        preferred_location: str = "",
        max_results: int = 0,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Agents matching a selector, in discovery order (agentmesh.registry.v1.Agent list)."""
        resp = await self.discover_agents(
            selector={
                "capabilities": capabilities or [],
                "service_types": service_types or [],
                "tags": tags or [],
                "version_constraint": version_constraint,
                "min_health_score": min_health_score,
                "preferred_location": preferred_location,
            },
            max_results=max_results,
            timeout_s=timeout_s,
        )
        return list(resp.agents)

    def agent(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """Raw AgentService stub of one agent at `endpoint` (`host:port`)."""
        return agent_pb2_grpc.AgentServiceStub(self.channel(endpoint))

    async def execute(
        self,
        endpoint: str,
        action: str,
        input: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
        attempt: int = 1,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[dict[str, Any], agent_pb2.ExecuteResponse]:
        """Call one agent directly, bypassing the router.

        Returns:
            (output as a dict, the full ExecuteResponse).

        Raises:
            AgentMeshError: the agent's status as the mesh error.
        """
        req = agent_pb2.ExecuteRequest(
            action=action,
            input=dict_to_struct(input or {}),
            idempotency_key=idempotency_key,
            attempt=attempt,
            metadata=dict(metadata or {}),
        )
        try:
            resp = await self.agent(endpoint).Execute(
                req, timeout=self.default_timeout_s if timeout_s is None else timeout_s
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return struct_to_dict(resp.output), resp

    # ---- SafetyService helpers ------------------------------------------------
    @asynccontextmanager
    async def breaker(
        self,
        name: str,
        *,
        failure_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> AsyncIterator[safety_pb2.CircuitBreaker]:
        """Guard a block with the named circuit breaker `name` (SafetyService).

            async with client.breaker("scada"):
                await write_setpoint()

        Reads the breaker; while it is OPEN raises CircuitOpen without running
        the block. Otherwise runs it and records its outcome: a success when
        it finishes, a failure when it raises one of `failure_on` (the
        exception then propagates). Cancellation records nothing. Every
        client and router replica shares the breaker's state.

        Args:
            name: a breaker made with `create_circuit_breaker`.
            failure_on: exception types that count as failures.

        Yields:
            The breaker as read before the block.

        Raises:
            CircuitOpen: the breaker is OPEN (`retry_after_s` says for how long).
            NotFound: no breaker with this name.
        """
        b = (await self.get_circuit_breaker(name=name)).breaker
        if b.state == router_pb2.BREAKER_STATE_OPEN:
            raise CircuitOpen(b)
        try:
            yield b
        except failure_on:
            await self.record_outcome(name=name, success=False)
            raise
        await self.record_outcome(name=name, success=True)

    async def permit(
        self,
        name: str,
        key: str = "",
        count: int = 1,
        *,
        wait_s: float = 0.0,
        timeout_s: float | None = None,
    ) -> None:
        """Take `count` permits of the named rate limiter `name` for `key`.

        Not retried behind the caller's back (a retry would take permits
        again): a refusal raises at once, unless `wait_s` allows waiting the
        server's RetryInfo delay and asking again.

        Args:
            name: a limiter made with `create_rate_limiter`.
            key: whose bucket; required on a per-key limiter.
            count: permits to take, all or none.
            wait_s: longest total wait for permits, s; 0 fails at once.
            timeout_s: deadline of each call, s; default the client's.

        Raises:
            ResourceExhausted: no permits (its RetryInfo says when), or none within `wait_s`.
            NotFound: no limiter with this name.
            InvalidArgument: empty key on a per-key limiter, count above max_requests.
        """
        req = safety_pb2.AcquirePermitRequest(name=name, key=key, count=count)
        give_up = time.monotonic() + wait_s
        while True:
            try:
                await self.safety.stub.AcquirePermit(
                    req, timeout=self.default_timeout_s if timeout_s is None else timeout_s
                )
                return
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                delay = retry_delay_s(err) if isinstance(err, ResourceExhausted) else None
                if delay is None or time.monotonic() + delay > give_up:
                    raise err from e
            await asyncio.sleep(delay)

    async def validate(
        self,
        operation_type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        agent_id: str = "",
        sender_id: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> safety_pb2.ValidateOperationResponse:
        """Dry-run the mesh's safety rules on an operation (ValidateOperation).

        Returns:
            The verdict: `is_safe`, every violation, and the blocking ones.
        """
        return await self.validate_operation(
            safety_pb2.ValidateOperationRequest(
                operation_type=operation_type,
                agent_id=agent_id,
                parameters=dict_to_struct(dict(parameters or {})),
                sender_id=sender_id,
                metadata=dict(metadata or {}),
            )
        )

    async def wait_task(
        self, task_id: str, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Wait for a task (TaskService.WaitTask) and return its result.

        The stream is resumed from the last revision seen when it breaks
        (UNAVAILABLE, e.g. a coordinator replica restarting).

        Args:
            task_id: the task, from `schedule_task`.
            timeout_s: longest wait in all, s; None waits until the task ends.

        Returns:
            The agent's output (the task's `result`) as a dict.

        Raises:
            TaskFailed / TaskTimedOut / TaskCancelled: the task ended without
                a result (`e.task` holds it, with `error`).
            NotFound: no such task.
            DeadlineExceeded: `timeout_s` passed first.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        after = 0
        while True:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            last = None
            try:
                async for resp in self.watch_task(
                    task_id=task_id, after_revision=after, terminal_only=True, timeout_s=left
                ):
                    last = resp.task
                    after = resp.task.revision
            except Unavailable:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            if last is None:  # already terminal at `after`: read it
                last = (await self.get_task(task_id=task_id)).task
            err = error_for(last)
            if err is not None:
                raise err
            if last.state == task_pb2.TASK_STATE_COMPLETED:
                return struct_to_dict(last.result)


    # ---- coordination and workflow helpers -----------------------------------
    def elect(
        self,
        role: str,
        *,
        ttl_ms: int = 10_000,
        owner: str | None = None,
        campaign_timeout_s: float | None = None,
    ) -> Election:
        """Leader election (the seeds' MASTER_SLAVE) on the role's lock.

            async with client.elect("scheduler", ttl_ms=3000) as term:
                await store.write(row, fencing_token=term.fencing_token)

        Enters once this candidate leads (every candidate campaigns on the same
        CoordinationService lock), renews the term in the background, steps
        down on exit. A leader that stops renewing is replaced after `ttl_ms`
        by a candidate with a larger fencing token; its block is cancelled and
        the `async with` raises LockLost (see `agentmesh.client.election`).

        Args:
            role: the role's lock name.
            ttl_ms: term lease TTL, ms.
            owner: this candidate's name; default `<host>/<pid>/<random>`.
            campaign_timeout_s: longest wait to be elected, s; None waits forever.

        Raises:
            DeadlineExceeded: not elected within `campaign_timeout_s` (on entry).
            LockLost: the term was lost while the block ran (on exit).
        """
        return Election(
            self, role, ttl_ms=ttl_ms, owner=owner, campaign_timeout_s=campaign_timeout_s
        )

    def lock(
        self,
        name: str,
        *,
        ttl_ms: int = 10_000,
        wait_timeout_s: float = 30.0,
        owner: str | None = None,
        renew_interval_ms: int | None = None,
    ) -> Lease:
        """A CoordinationService lock held while an `async with` block runs.

            async with client.lock("invoices", ttl_ms=5000, wait_timeout_s=10) as lease:
                await store.write(row, fencing_token=lease.fencing_token)

        Acquires (waiting up to `wait_timeout_s`), renews every `ttl_ms / 3` in
        the background, releases on exit. When a renewal is refused the block's
        task is cancelled and the `async with` raises LockLost (see
        `agentmesh.client.lock` for exactly how).

        Args:
            name: the lock (CoordinationService `resource`, at most 256 characters).
            ttl_ms: lease TTL, ms (10 ms to 1 h).
            wait_timeout_s: longest wait for a lock held by another owner, s; 0 tries once.
            owner: who holds it; default a fresh `<host>/<pid>/<random>` (with auth
                on, pass the caller's identity).
            renew_interval_ms: renewal period, ms; default `ttl_ms / 3`.

        Raises:
            LockNotAcquired: another owner held it for the whole wait (on entry).
            LockLost: the lease was lost while the block ran (on exit).
            InvalidArgument / PermissionDenied / Unavailable: from the registry.
        """
        return Lease(
            self, name, ttl_ms=ttl_ms, wait_timeout_s=wait_timeout_s,
            owner=owner or default_owner(), renew_interval_ms=renew_interval_ms,
        )

    async def run_saga(
        self,
        definition_or_name: saga_pb2.SagaDefinition | Mapping[str, Any] | str,
        input: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
        definition_version: int = 0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Start a saga and wait for it; return its output.

        Args:
            definition_or_name: an inline definition (message or dict) or the
                name of a registered one.
            input: the saga input.
            idempotency_key: makes the start idempotent (a retry joins the saga).
            definition_version: version of a registered definition; 0 the latest.
            timeout_s: longest wait for the saga to end, s; None waits.

        Returns:
            The saga's output: the completed steps' outputs by step name.

        Raises:
            SagaCompensated / SagaFailed / SagaCancelled: it ended otherwise
                (`step`, `step_status`, `error`, `compensations`, `saga`).
            InvalidArgument / NotFound: from StartSaga.
            DeadlineExceeded: not final after `timeout_s`.
        """
        return await workflows.run_saga(
            self, definition_or_name, input, idempotency_key=idempotency_key,
            definition_version=definition_version, timeout_s=timeout_s,
        )

    async def wait_saga(
        self, saga_id: str, *, timeout_s: float | None = None
    ) -> saga_pb2.Saga:
        """Wait for a started saga to end and return it, whatever its final state
        (`agentmesh.client.workflows.wait_saga`; `run_saga` raises instead)."""
        return (await workflows.follow_saga(self, saga_id, timeout_s=timeout_s)).saga

    async def deploy_swarm(
        self,
        task: swarm_pb2.SwarmTask | Mapping[str, Any],
        *,
        swarm_id: str = "",
        wait: bool = False,
        timeout_s: float | None = None,
    ) -> swarm_pb2.Swarm:
        """Deploy a swarm; with `wait`, follow it to the end (the raw call is
        `client.swarm.deploy_swarm`).

        Args:
            task: the SwarmTask (message or dict in its JSON form).
            swarm_id: optional caller-chosen id (makes retries idempotent).
            wait: wait for the swarm to end.
            timeout_s: with `wait`, longest wait, s; None waits.

        Returns:
            The swarm: as deployed (PENDING/RUNNING), or with `wait` COMPLETED
            with its result (`optimization` or `partitions`).

        Raises:
            SwarmFailed / SwarmStopped: with `wait`, it ended without completing.
            InvalidArgument / FailedPrecondition / AlreadyExists: from DeploySwarm.
            DeadlineExceeded: not final after `timeout_s`.
        """
        swarm = (await self.swarm.deploy_swarm(task=task, swarm_id=swarm_id)).swarm
        if not wait:
            return swarm
        return await workflows.wait_swarm(self, swarm.swarm_id, timeout_s=timeout_s)
