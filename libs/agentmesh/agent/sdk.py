"""The Agent SDK: declare handlers with decorators, then serve `AgentService`.

    agent = Agent("agent-calc-1", agent_type="carbon-calculator", version="1.0.0",
                  capabilities=["carbon_calculation"])

    @agent.action("calculate")
    async def calculate(input: dict, ctx: ActionContext) -> dict:
        return {"kg_co2e": input["spend_usd"] * input["factor"]}

    if __name__ == "__main__":
        agent.run()            # flags/env override the constructor; SIGTERM drains

What the SDK does for every call:
  * Dedupe by idempotency key. A completed key returns the stored output with
    `deduplicated=true`; a duplicate that arrives while the first call is still
    running waits for it and shares its outcome. Failures are not stored, so a
    retry runs again. The handler runs in a task shielded from the caller's
    cancellation, so a caller that gives up never tears an effect in half.
  * Compensation fences its action (saga/Temporal style). A Compensate whose
    key is `<K>/compensate` first waits for an Execute with key `<K>` still
    running in this process, passes that Execute's output (or the stored one)
    as `ctx.original_output` when the request carries none, and records a
    tombstone for `<K>` before its handler runs. From then on an Execute with
    key `<K>` does not run its handler: it fails with ABORTED, ErrorInfo reason
    `COMPENSATED`. So a late Execute, e.g. from a coordinator that died while
    it was in flight, never takes effect after its compensation. A Compensate
    whose deadline comes while it still waits for the Execute answers
    UNAVAILABLE, reason `EXECUTE_IN_FLIGHT`, shortly before the deadline; the
    compensation still runs once the Execute ends and a retry gets its result.
  * Deadlines: `ctx.remaining_s` is the time the caller has left.
  * Errors: handlers raise `agentmesh.runtime.errors` classes (or ordinary
    exceptions, mapped as in `map_exception`), which reach the caller as gRPC
    status codes with rich details.
  * Load: queue size, processing and response time, error rate, CPU and memory
    are tracked and sent with registry heartbeats.
  * Lifecycle: registers with the registry before it logs `serving`, heartbeats,
    and on SIGTERM deregisters first (so no new work is routed to it), then
    reports NOT_SERVING and drains in-flight calls within the grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from redis import exceptions as redis_exceptions

from agentmesh.agent.context import ActionContext
from agentmesh.agent.idempotency import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    StoredResult,
)
from agentmesh.agent.load import LoadTracker
from agentmesh.agent.structs import dict_to_struct, struct_to_dict
from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.config import ServerConfig
from agentmesh.runtime.context import current_principal
from agentmesh.runtime.errors import (
    DOMAIN,
    Aborted,
    AgentMeshError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    Unavailable,
    Unimplemented,
)
from agentmesh.runtime.logs import configure_logging
from agentmesh.runtime.server import Daemon

log = logging.getLogger("agentmesh.agent")

#: Output of an action: a JSON-compatible mapping, or None for `{}`.
ActionOutput = Mapping[str, Any] | None
#: `async def handler(input: dict, ctx: ActionContext) -> dict` (a plain `def` runs in a thread).
ActionHandler = Callable[[dict[str, Any], ActionContext], Awaitable[ActionOutput] | ActionOutput]
#: `def objective(positions: (n, d) float64 array, params: dict) -> (n,) fitness array`.
EvaluateHandler = Callable[[np.ndarray, dict[str, Any]], Any]

F = TypeVar("F", bound=Callable[..., Any])

#: Action name that matches any action without its own handler.
WILDCARD = "*"

_EXECUTE = "x"
_COMPENSATE = "c"
#: Store namespace of compensation tombstones, keyed by the compensated Execute key.
_TOMBSTONE = "t"

#: A Compensate key `<K>` + this suffix undoes the Execute with key `<K>`.
COMPENSATE_SUFFIX = "/compensate"
#: ErrorInfo reason of the ABORTED answer to an Execute whose key was compensated.
REASON_COMPENSATED = "COMPENSATED"
#: ErrorInfo reason of the UNAVAILABLE answer to a Compensate whose deadline
#: comes while it still waits for its Execute; it runs on, a retry joins it.
REASON_EXECUTE_IN_FLIGHT = "EXECUTE_IN_FLIGHT"


def compensated_key(compensate_key: str) -> str | None:
    """The Execute key a Compensate key undoes, or None when it follows no convention.

    `"sg_1/charge/compensate"` → `"sg_1/charge"`; map items and loop iterations
    keep their suffix (`"sg_1/ship[2]/compensate"` → `"sg_1/ship[2]"`, `"#k"` alike).
    """
    if compensate_key.endswith(COMPENSATE_SUFFIX) and len(compensate_key) > len(
        COMPENSATE_SUFFIX
    ):
        return compensate_key[: -len(COMPENSATE_SUFFIX)]
    return None


@dataclass
class AgentSettings:
    """How an agent serves and where it registers. Every field can be set from
    the constructor, and by `Agent.run` from flags or `AGENTMESH_AGENT_<NAME>`
    environment variables.

    Attributes:
        host: address to bind.
        port: gRPC port; 0 picks a free one (logged in the `serving` line).
        advertise_host: host put in the registered endpoint; defaults to `host`.
        metrics_port: Prometheus port; 0 picks a free one, -1 disables it.
        registry_target: registry `host:port`; empty means do not register.
        redis_url: when set, idempotency results are kept in Redis so dedupe
            survives restarts; otherwise in memory.
        redis_password: Redis password when it is not in the URL.
        redis_sentinels / redis_sentinel_master / redis_sentinel_password:
            reach the Redis master through Sentinel (`host:port,host:port`),
            as the daemons do (`AGENTMESH_REDIS_SENTINELS`, ...).
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
    """

    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str = ""
    metrics_port: int = -1
    registry_target: str = ""
    redis_url: str = ""
    redis_password: str = ""
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = ""
    idempotency_ttl_s: float = 86_400.0
    heartbeat_interval_s: float = 5.0
    max_concurrency: int = 0
    grace_period_s: float = 10.0
    location: str = ""
    token: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_tokens_file: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    extra_metadata: dict[str, str] = field(default_factory=dict)


def map_exception(exc: BaseException, action: str) -> AgentMeshError:
    """The AgentMeshError a handler exception reaches the caller as.

    AgentMeshError subclasses pass through. TimeoutError → DEADLINE_EXCEEDED,
    ValueError/TypeError/KeyError → INVALID_ARGUMENT, ConnectionError (also
    redis-py's connection and timeout errors) → UNAVAILABLE (retryable),
    NotImplementedError → UNIMPLEMENTED, anything else → INTERNAL with the
    exception type and message.
    """
    if isinstance(exc, AgentMeshError):
        return exc
    text = f"{action!r} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(text)
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return InvalidArgument(text)
    if isinstance(exc, (ConnectionError, redis_exceptions.ConnectionError,
                        redis_exceptions.TimeoutError)):
        return Unavailable(text, reason="AGENT_DEPENDENCY_DOWN")
    if isinstance(exc, NotImplementedError):
        return Unimplemented(text)
    return Internal(text)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an async handler; run a plain function in a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _duration_ms(ms: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(ms * 1e6))
    return d


@dataclass(frozen=True)
class _Outcome:
    output: struct_pb2.Struct
    deduplicated: bool
    processing_ms: float


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
        self._actions: dict[str, ActionHandler] = {}
        self._compensations: dict[str, ActionHandler] = {}
        self._objectives: dict[str, EvaluateHandler] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[_Outcome]] = {}
        #: Compensate keys whose task still waits for the Execute it undoes.
        self._awaiting_execute: set[str] = set()
        self._running: set[asyncio.Task[_Outcome]] = set()
        self._store: IdempotencyStore | None = None
        self._sem: asyncio.Semaphore | None = None
        self._daemon: Daemon | None = None
        self._registrar: Any = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self.load = LoadTracker(capacity=self.settings.max_concurrency)
        self.port = 0
        self.metrics_port = -1
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
    def objectives(self) -> list[str]:
        """Declared objective names."""
        return sorted(self._objectives)

    @property
    def endpoint(self) -> str:
        """`host:port` callers use to reach this agent (valid after `start`)."""
        return f"{self.settings.advertise_host or self.settings.host}:{self.port}"

    # ---- serving -----------------------------------------------------------
    async def _execute(
        self, request: agent_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse:
        handler = self._actions.get(request.action) or self._actions.get(WILDCARD)
        if handler is None:
            raise InvalidArgument(
                f"unknown action {request.action!r}; agent {self.agent_id} serves "
                f"{self.actions}",
                field_violations={"action": "not declared by this agent"},
            )
        ctx = ActionContext(
            agent_id=self.agent_id,
            action=request.action,
            kind="execute",
            idempotency_key=request.idempotency_key,
            attempt=request.attempt or 1,
            metadata=dict(request.metadata),
            deadline_monotonic=_deadline(context),
            principal=current_principal(),
        )
        inp = struct_to_dict(request.input)
        out = await self._run(_EXECUTE, ctx, lambda c: _call(handler, inp, c))
        return agent_pb2.ExecuteResponse(
            output=out.output,
            deduplicated=out.deduplicated,
            agent_id=self.agent_id,
            processing_duration=_duration_ms(out.processing_ms),
        )

    async def _compensate(
        self, request: agent_pb2.CompensateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.CompensateResponse:
        handler = self._compensations.get(request.action) or self._compensations.get(WILDCARD)
        if handler is None:
            raise InvalidArgument(
                f"unknown compensation {request.action!r}; agent {self.agent_id} compensates "
                f"{sorted(self._compensations)}",
                field_violations={"action": "no compensation declared for this action"},
            )
        ctx = ActionContext(
            agent_id=self.agent_id,
            action=request.action,
            kind="compensate",
            idempotency_key=request.idempotency_key,
            attempt=request.attempt or 1,
            metadata=dict(request.metadata),
            deadline_monotonic=_deadline(context),
            original_output=(
                struct_to_dict(request.original_output)
                if request.HasField("original_output")
                else None
            ),
            principal=current_principal(),
        )
        inp = struct_to_dict(request.input)
        out = await self._run(_COMPENSATE, ctx, lambda c: _call(handler, inp, c))
        return agent_pb2.CompensateResponse(
            output=out.output,
            deduplicated=out.deduplicated,
            agent_id=self.agent_id,
        )

    async def _evaluate(
        self, request: agent_pb2.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.EvaluateResponse:
        fn = self._objectives.get(request.objective)
        if fn is None:
            raise InvalidArgument(
                f"unknown objective {request.objective!r}; agent {self.agent_id} evaluates "
                f"{self.objectives}",
                field_violations={"objective": "not declared by this agent"},
            )
        d = request.dimensions
        flat = np.asarray(request.positions, dtype=np.float64)
        if d == 0 or flat.size % d:
            raise InvalidArgument(
                f"{flat.size} position values do not form rows of {d} dimensions",
                field_violations={"dimensions": "must be > 0 and divide len(positions)"},
            )
        positions = flat.reshape(-1, d)
        params = struct_to_dict(request.parameters)
        start = self.load.started()
        t0 = time.perf_counter()
        ok = False
        try:
            try:
                result = await _call(fn, positions, params)
            except Exception as exc:
                raise map_exception(exc, request.objective) from exc
            fitness = np.asarray(result, dtype=np.float64).reshape(-1)
            if fitness.size != positions.shape[0]:
                raise Internal(
                    f"objective {request.objective!r} returned {fitness.size} values for "
                    f"{positions.shape[0]} positions"
                )
            ok = True
            return agent_pb2.EvaluateResponse(fitness=fitness.tolist())
        finally:
            self.load.finished(start, processing_ms=(time.perf_counter() - t0) * 1e3, ok=ok)

    async def _run(
        self, namespace: str, ctx: ActionContext,
        call: Callable[[ActionContext], Awaitable[Any]],
    ) -> _Outcome:
        """Run `call(ctx)` at most once per idempotency key and track load.

        A keyed call that must follow another one still running here (a
        Compensate after its Execute, an Execute after its Compensate; see
        `_predecessor`) waits for it inside its own task.
        """
        start = self.load.started()
        ok = False
        processing_ms = 0.0
        try:
            if not ctx.idempotency_key:
                task = self._spawn(self._invoke(namespace, ctx, call, store=False))
                out = await asyncio.shield(task)
            else:
                k = (namespace, ctx.idempotency_key)
                running = self._inflight.get(k)
                if running is not None:
                    # A duplicate of a call still running: share its outcome.
                    first = await self._outcome(namespace, ctx, running)
                    out = _Outcome(first.output, True, first.processing_ms)
                else:
                    # Created without awaiting first, so every concurrent
                    # duplicate in this process finds this task, and the
                    # predecessor is picked in the same step: a task only ever
                    # waits for one created before it, so two cannot wait on
                    # each other.
                    after = self._predecessor(namespace, ctx.idempotency_key)
                    if after is not None and namespace == _COMPENSATE:
                        self._awaiting_execute.add(ctx.idempotency_key)
                    task = self._spawn(
                        self._invoke(namespace, ctx, call, store=True, after=after)
                    )
                    self._inflight[k] = task
                    task.add_done_callback(functools.partial(self._task_done, k))
                    out = await self._outcome(namespace, ctx, task)
            ok = True
            # A replayed or shared result cost this call no processing.
            processing_ms = 0.0 if out.deduplicated else out.processing_ms
            return out
        finally:
            self.load.finished(start, processing_ms=processing_ms, ok=ok)

    def _spawn(self, coro: Coroutine[Any, Any, _Outcome]) -> asyncio.Task[_Outcome]:
        # Handler tasks are shielded from the caller and tracked, so drain waits for them.
        task = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[_Outcome]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so a caller that went away leaves no warning

    def _task_done(self, key: tuple[str, str], task: asyncio.Task[_Outcome]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _outcome(
        self, namespace: str, ctx: ActionContext, task: asyncio.Task[_Outcome]
    ) -> _Outcome:
        """Await the shielded `task` for this caller.

        A Compensate still waiting for its Execute when the caller's deadline
        is near answers UNAVAILABLE (reason EXECUTE_IN_FLIGHT) instead of
        DEADLINE_EXCEEDED, so the caller knows the compensation itself did not
        fail and retries; `task` runs on and the retry joins it or reads its
        stored result.

        Raises:
            Unavailable: reason EXECUTE_IN_FLIGHT, as above.
        """
        key = ctx.idempotency_key
        left = ctx.remaining_s
        if namespace != _COMPENSATE or left is None or key not in self._awaiting_execute:
            return await asyncio.shield(task)
        # Answer a little before the deadline so the answer reaches the caller.
        margin_s = min(0.5, 0.3 * left)
        await asyncio.wait([task], timeout=max(0.0, left - margin_s))
        if not task.done() and key in self._awaiting_execute:
            raise Unavailable(
                f"compensation {key!r} waits for the Execute it undoes, still running on agent "
                f"{self.agent_id}; it runs when that ends, retry to get its result",
                reason=REASON_EXECUTE_IN_FLIGHT,
            )
        return await asyncio.shield(task)

    def _predecessor(self, namespace: str, key: str) -> asyncio.Task[_Outcome] | None:
        """The in-flight call a new call with `key` must wait for, if any.

        A Compensate `<K>/compensate` waits for the Execute `<K>` (so it undoes
        a finished effect); an Execute `<K>` waits for the Compensate
        `<K>/compensate` (and is then refused by its tombstone).
        """
        if namespace == _COMPENSATE:
            target = compensated_key(key)
            return None if target is None else self._inflight.get((_EXECUTE, target))
        return self._inflight.get((_COMPENSATE, key + COMPENSATE_SUFFIX))

    async def _lookup(self, items: Sequence[tuple[str, str]]) -> list[StoredResult | None]:
        """Read the store before anything runs; failures are UNAVAILABLE (safe to retry)."""
        assert self._store is not None
        try:
            return await self._store.get_many(items)
        except Exception as exc:  # nothing ran yet, so the caller may safely retry
            raise Unavailable(
                f"idempotency store unavailable: {type(exc).__name__}: {exc}",
                reason="IDEMPOTENCY_STORE_DOWN",
            ) from exc

    def _compensated_error(self, key: str, tombstone: StoredResult) -> Aborted:
        return Aborted(
            f"idempotency key {key!r} was compensated (compensation {tombstone.action!r} "
            f"at {tombstone.completed_ms} ms since the epoch) on agent {self.agent_id}; "
            "a late Execute must not take effect, so the action did not run",
            details=[
                error_details_pb2.ErrorInfo(
                    reason=REASON_COMPENSATED,
                    domain=DOMAIN,
                    metadata={"idempotency_key": key, "agent_id": self.agent_id},
                )
            ],
        )

    async def _prepare(
        self, namespace: str, ctx: ActionContext, after: asyncio.Task[_Outcome] | None
    ) -> tuple[ActionContext, StoredResult | None]:
        """Store reads before a keyed call runs: tombstone, stored result, original output.

        Returns:
            (the context to run with, the stored result of this key or None).

        Raises:
            Aborted: an Execute whose key has a compensation tombstone (reason COMPENSATED).
            Unavailable: the store cannot be read.
        """
        key = ctx.idempotency_key
        if namespace == _EXECUTE:
            tomb, stored = await self._lookup([(_TOMBSTONE, key), (_EXECUTE, key)])
            if tomb is not None:
                raise self._compensated_error(key, tomb)
            return ctx, stored
        target = compensated_key(key) if namespace == _COMPENSATE else None
        if target is None or ctx.original_output is not None:
            (stored,) = await self._lookup([(namespace, key)])
            return ctx, stored
        stored, executed = await self._lookup([(namespace, key), (_EXECUTE, target)])
        original: dict[str, Any] | None = None
        if after is not None and not after.cancelled() and after.exception() is None:
            original = struct_to_dict(after.result().output)
        elif executed is not None:
            original = executed.output
        return (ctx if original is None else replace(ctx, original_output=original)), stored

    async def _fence(self, ctx: ActionContext, target: str) -> None:
        """Record the tombstone of Execute key `target` before its compensation runs.

        Raises:
            Unavailable: the store cannot be written; the compensation has not run.
        """
        assert self._store is not None
        try:
            await self._store.put(
                _TOMBSTONE, target, StoredResult(ctx.action, {}, int(time.time() * 1000))
            )
        except Exception as exc:
            raise Unavailable(
                f"could not record the compensation tombstone of {target!r}: "
                f"{type(exc).__name__}: {exc}",
                reason="IDEMPOTENCY_STORE_DOWN",
            ) from exc

    async def _invoke(
        self, namespace: str, ctx: ActionContext,
        call: Callable[[ActionContext], Awaitable[Any]], *,
        store: bool, after: asyncio.Task[_Outcome] | None = None,
    ) -> _Outcome:
        assert self._store is not None
        if after is not None:
            # Outside the concurrency limit: `after` may still be queued for it.
            try:
                await asyncio.wait([after])
            finally:
                if namespace == _COMPENSATE:
                    self._awaiting_execute.discard(ctx.idempotency_key)
        if store:
            ctx, stored = await self._prepare(namespace, ctx, after)
            if stored is not None:
                if stored.action != ctx.action:
                    raise InvalidArgument(
                        f"idempotency key {ctx.idempotency_key!r} already completed action "
                        f"{stored.action!r}, not {ctx.action!r}",
                        field_violations={"idempotency_key": "reused for a different action"},
                    )
                return _Outcome(dict_to_struct(stored.output), True, 0.0)
            target = compensated_key(ctx.idempotency_key) if namespace == _COMPENSATE else None
            if target is not None:
                # Before the handler, so no Execute of `target` can start while
                # or after it runs (an Execute already running was awaited above).
                await self._fence(ctx, target)
        t0 = time.perf_counter()
        try:
            if self._sem is not None:
                async with self._sem:
                    t0 = time.perf_counter()  # processing time excludes the queue wait
                    raw = await call(ctx)
            else:
                raw = await call(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = map_exception(exc, ctx.action)
            if err is not exc:
                log.warning(
                    "handler failed",
                    extra={"action": ctx.action, "kind": ctx.kind, "code": err.code.name,
                           "error": str(exc)},
                )
            raise err from exc
        processing_ms = (time.perf_counter() - t0) * 1e3
        if raw is not None and not isinstance(raw, Mapping):
            raise Internal(
                f"{ctx.kind} handler {ctx.action!r} returned {type(raw).__name__}, not a dict"
            )
        try:
            output = dict_to_struct(raw or {})
        except TypeError as exc:
            raise Internal(f"{ctx.kind} handler {ctx.action!r} returned {exc}") from exc
        if store:
            try:
                # Stored as the Struct reads back, so a replay returns exactly this output.
                await self._store.put(
                    namespace,
                    ctx.idempotency_key,
                    StoredResult(ctx.action, struct_to_dict(output), int(time.time() * 1000)),
                )
            except Exception as exc:
                # The effect has happened: answer with it. Only the dedupe of a
                # later retry of this key is lost, so say so loudly.
                log.error(
                    "could not store idempotent result; a retry of this key would run again",
                    extra={"key": ctx.idempotency_key, "error": f"{type(exc).__name__}: {exc}"},
                )
        return _Outcome(output, False, processing_ms)

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
            tls_cert_file=s.tls_cert_file,
            tls_key_file=s.tls_key_file,
            tls_client_ca_file=s.tls_client_ca_file,
            auth_tokens_file=s.auth_tokens_file,
            auth_token=s.token,
            tls_ca_file=s.tls_ca_file,
            grace_period_s=s.grace_period_s,
            registry_target=s.registry_target,
        )

    async def start(self) -> int:
        """Bind, register (when a registry is configured), start heartbeats.

        Returns:
            The bound gRPC port.

        Raises:
            OSError: when the port cannot be bound.
            AgentMeshError: when registration is refused.
        """
        if not (self._actions or self._compensations or self._objectives):
            raise ValueError(f"agent {self.agent_id} declares no action, compensation or objective")
        s = self.settings
        daemon = Daemon(self._config())
        self._daemon = daemon
        servicer = _Servicer(self)
        daemon.add_service(
            agent_pb2_grpc.add_AgentServiceServicer_to_server,
            servicer,
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
        )
        if s.redis_url:
            self._store = RedisIdempotencyStore(
                daemon.redis(), agent_id=self.agent_id, ttl_s=s.idempotency_ttl_s
            )
        else:
            self._store = MemoryIdempotencyStore(ttl_s=s.idempotency_ttl_s)
        self._sem = asyncio.Semaphore(s.max_concurrency) if s.max_concurrency > 0 else None
        if s.registry_target:
            from agentmesh.agent.registration import Registrar

            self._registrar = Registrar(self, daemon.channel(s.registry_target))
            daemon.on_startup(self._register)
        self.port = await daemon.start()
        self.metrics_port = daemon.metrics_port
        return self.port

    async def _register(self) -> None:
        # Runs as a Daemon startup hook: the port is bound, the `serving` line
        # is not logged yet, so "serving" means "registered" to process launchers.
        assert self._daemon is not None and self._registrar is not None
        self.port = self._daemon.port
        await self._registrar.register()
        self._heartbeat_task = asyncio.create_task(
            self._registrar.heartbeat_loop(), name=f"heartbeat-{self.agent_id}"
        )

    async def stop(self) -> None:
        """Deregister, report NOT_SERVING, drain in-flight calls, release resources.

        Safe to call more than once.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            if self._heartbeat_task is not None:
                self._heartbeat_task.cancel()
                await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            if self._registrar is not None:
                await self._registrar.deregister()
            if self._daemon is not None:
                t0 = time.monotonic()
                await self._daemon.stop()
                # Handler tasks outlive callers that gave up; let them finish
                # so their results are stored and their effects complete.
                left = max(0.0, self.settings.grace_period_s - (time.monotonic() - t0))
                pending = list(self._running)
                if pending:
                    await asyncio.wait(pending, timeout=left or None)
            if self._store is not None:
                await self._store.close()
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
        """Parse flags/env (see `add_arguments`), configure JSON logs, serve until SIGTERM.

        Args:
            argv: arguments without the program name; None reads sys.argv.
            parser: a parser that already holds the caller's own flags; their
                values are available as `agent.args` before serving starts.
        """
        parser = parser or argparse.ArgumentParser(
            description=f"AgentMesh agent {self.agent_type}"
        )
        add_arguments(parser, self)
        self.args = parser.parse_args(argv)
        apply_arguments(self.args, self)
        configure_logging(
            f"agent:{self.agent_id}", self.settings.log_level,
            log_format=self.settings.log_format,
        )
        try:
            asyncio.run(self.serve())
        except (AgentMeshError, OSError, ValueError) as e:
            # A refused registration or a taken port: say so in one line, exit non-zero.
            log.error("agent failed to start", extra={"error": f"{type(e).__name__}: {e}"})
            raise SystemExit(1) from None


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


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


class _Servicer(agent_pb2_grpc.AgentServiceServicer):
    """Adapts AgentService RPCs to an Agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ExecuteResponse:
        """See AgentService.Execute."""
        return await self._agent._execute(request, context)

    async def Compensate(
        self, request: agent_pb2.CompensateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.CompensateResponse:
        """See AgentService.Compensate."""
        return await self._agent._compensate(request, context)

    async def Evaluate(
        self, request: agent_pb2.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.EvaluateResponse:
        """See AgentService.Evaluate."""
        return await self._agent._evaluate(request, context)


# ---- command line -----------------------------------------------------------
_ENV_PREFIX = "AGENTMESH_AGENT_"


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(_ENV_PREFIX + name.upper())
    if raw is None:
        return default
    return type(default)(raw) if not isinstance(default, bool) else raw.lower() in ("1", "true")


def add_arguments(parser: argparse.ArgumentParser, agent: Agent) -> None:
    """Add `--agent-id`, `--port`, `--registry-target`, ... with defaults from the
    agent's constructor, overridden by `AGENTMESH_AGENT_<FLAG>` environment variables."""
    s = agent.settings
    parser.add_argument("--agent-id", default=_env("id", agent.agent_id), help="agent id")
    parser.add_argument(
        "--capabilities", default=_env("capabilities", ",".join(agent.capabilities)),
        help="comma-separated capabilities",
    )
    parser.add_argument(
        "--tags", default=_env("tags", ",".join(agent.tags)), help="comma-separated tags"
    )
    parser.add_argument("--version", dest="agent_version", default=_env("version", agent.version))
    parser.add_argument("--agent-type", default=_env("type", agent.agent_type), help="agent kind")
    for name, help_ in (
        ("host", "address to bind"),
        ("port", "gRPC port (0 = any free port)"),
        ("advertise_host", "host in the registered endpoint"),
        ("metrics_port", "Prometheus port (0 = any free, -1 = off)"),
        ("registry_target", "registry host:port (empty = do not register)"),
        ("redis_url", "Redis URL for durable idempotency (empty = in memory)"),
        ("redis_password", "Redis password when not in the URL"),
        ("redis_sentinels", "host:port,... of Redis Sentinels (empty = no Sentinel)"),
        ("redis_sentinel_master", "master set name the sentinels monitor"),
        ("redis_sentinel_password", "password of the sentinels themselves"),
        ("idempotency_ttl_s", "seconds a completed result is kept"),
        ("heartbeat_interval_s", "seconds between heartbeats"),
        ("max_concurrency", "calls handled at once (0 = unlimited)"),
        ("grace_period_s", "SIGTERM drain budget, seconds"),
        ("location", "where the agent runs"),
        ("token", "bearer token for the registry"),
        ("tls_ca_file", "PEM CA for the registry connection"),
        ("tls_cert_file", "PEM server certificate"),
        ("tls_key_file", "PEM server key"),
        ("tls_client_ca_file", "PEM CA of client certificates; turns mTLS on"),
        ("auth_tokens_file", "JSON token file; turns caller auth on"),
        ("log_level", "log level"),
        ("log_format", "log format: json or text"),
    ):
        default = getattr(s, name)
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=type(default),
            default=_env(name, default), help=f"{help_} (default {default!r})",
        )


def apply_arguments(ns: argparse.Namespace, agent: Agent) -> None:
    """Apply what `add_arguments` parsed to `agent`."""
    agent.agent_id = ns.agent_id
    agent.capabilities = [c for c in ns.capabilities.split(",") if c]
    agent.tags = [t for t in ns.tags.split(",") if t]
    agent.version = ns.agent_version
    agent.agent_type = ns.agent_type
    values = {k: getattr(ns, k) for k in vars(agent.settings) if hasattr(ns, k)}
    agent.settings = replace(agent.settings, **values)
    agent.load.capacity = agent.settings.max_concurrency
