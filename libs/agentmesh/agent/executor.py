"""The idempotent executor: runs an agent's handlers at most once per
idempotency key, and fences each Execute against its compensation.

What it does for every keyed call:
  * Dedupe. A completed key returns the stored output with `deduplicated`
    set; a duplicate that arrives while the first call is still running waits
    for it and shares its outcome. Failures are not stored, so a retry runs
    again. The handler runs in a task shielded from the caller's cancellation,
    so a caller that gives up never tears an effect in half.
  * The compensation fence (saga/Temporal style). A Compensate names the
    Execute `<K>` it undoes (`ActionContext.compensated_idempotency_key`, from
    `CompensateRequest.compensated_idempotency_key`, or `<K>/compensate` from
    older callers; see `agentmesh.runtime.compensation`). It first waits for
    an Execute `<K>` still running in this process, passes that Execute's
    output (or the stored one) as `ctx.original_output` when the request
    carries none, and records a tombstone for `<K>` before its handler runs.
    From then on an Execute `<K>` does not run its handler: it fails with
    ABORTED, reason COMPENSATED. A Compensate whose deadline comes while it
    still waits answers UNAVAILABLE, reason EXECUTE_IN_FLIGHT, shortly before
    the deadline; the compensation still runs once the Execute ends and a
    retry gets its result.

Store namespaces: `x` completed Execute keys, `c` completed Compensate keys,
`t` tombstones keyed by the compensated Execute key.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import struct_pb2

from agentmesh.agent.context import ActionContext
from agentmesh.agent.idempotency import IdempotencyStore, StoredResult
from agentmesh.agent.load import LoadTracker
from agentmesh.agent.structs import dict_to_struct, struct_to_dict
from agentmesh.runtime.errors import (
    Aborted,
    AgentMeshError,
    DeadlineExceeded,
    ErrorReason,
    Internal,
    InvalidArgument,
    Unavailable,
    Unimplemented,
    error_info,
)
from agentmesh.runtime.redis_errors import is_redis_down

log = logging.getLogger("agentmesh.agent")

EXECUTE = "x"
COMPENSATE = "c"
#: Store namespace of compensation tombstones, keyed by the compensated Execute key.
TOMBSTONE = "t"


def map_exception(exc: BaseException, action: str) -> AgentMeshError:
    """The AgentMeshError a handler exception reaches the caller as.

    AgentMeshError subclasses pass through. TimeoutError → DEADLINE_EXCEEDED,
    ValueError/TypeError/KeyError → INVALID_ARGUMENT, ConnectionError (also
    redis-py's connection and timeout errors) → UNAVAILABLE with reason
    AGENT_DEPENDENCY_DOWN, NotImplementedError → UNIMPLEMENTED, anything else
    → INTERNAL with the exception type and message.
    """
    if isinstance(exc, AgentMeshError):
        return exc
    text = f"{action!r} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(text)
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return InvalidArgument(text)
    if isinstance(exc, ConnectionError) or is_redis_down(exc):
        return Unavailable(text, reason=ErrorReason.ERROR_REASON_AGENT_DEPENDENCY_DOWN)
    if isinstance(exc, NotImplementedError):
        return Unimplemented(text)
    return Internal(text)


async def call_handler(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an async handler; run a plain function in a worker thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


@dataclass(frozen=True)
class Outcome:
    """A finished call.

    Attributes:
        output: the handler's output (or the stored one).
        deduplicated: True when it is the result of an earlier call with the key.
        processing_ms: handler time without queueing, milliseconds (0 when replayed).
    """

    output: struct_pb2.Struct
    deduplicated: bool
    processing_ms: float


#: What the executor runs: the handler bound to its input, given the context.
Call = Callable[[ActionContext], Awaitable[Any]]


class IdempotentExecutor:
    """Runs calls at most once per idempotency key and fences compensations.

    `open` must be called (by `Agent.start`) before the first call.

    Args:
        load: where every call's queueing, processing time and outcome are counted.

    Attributes:
        agent_id: the serving agent's id, used in error messages (set by `open`).
        store: where completed results and tombstones are kept (set by `open`).
    """

    def __init__(self, *, load: LoadTracker) -> None:
        self.load = load
        self.agent_id = ""
        self.store: IdempotencyStore | None = None
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[tuple[str, str], asyncio.Task[Outcome]] = {}
        #: Compensated Execute key → the Compensate task fencing it, while it runs.
        self._fencing: dict[str, asyncio.Task[Outcome]] = {}
        #: Compensate keys whose task still waits for the Execute it undoes.
        self._awaiting_execute: set[str] = set()
        self._running: set[asyncio.Task[Outcome]] = set()

    def open(self, *, agent_id: str, store: IdempotencyStore, max_concurrency: int) -> None:
        """Bind to the agent's id and store; `max_concurrency` > 0 queues the rest."""
        self.agent_id = agent_id
        self.store = store
        self._sem = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None

    async def drain(self, *, timeout_s: float | None) -> None:
        """Wait for handler tasks that outlived their callers, so their results
        are stored and their effects complete; `timeout_s` None waits for all."""
        pending = list(self._running)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self) -> None:
        """Release the store."""
        if self.store is not None:
            await self.store.close()

    async def run(self, namespace: str, ctx: ActionContext, call: Call) -> Outcome:
        """Run `call(ctx)` at most once per idempotency key and track load.

        Args:
            namespace: EXECUTE or COMPENSATE.
            ctx: the call; a compensation names the Execute it undoes in
                `ctx.compensated_idempotency_key` ("" fences nothing).
            call: the handler bound to its input.

        Raises:
            AgentMeshError: the handler's error (see `map_exception`); ABORTED
                reason COMPENSATED for an Execute whose key was compensated;
                UNAVAILABLE reason EXECUTE_IN_FLIGHT or IDEMPOTENCY_STORE_DOWN.
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
                    out = Outcome(first.output, True, first.processing_ms)
                else:
                    # Created without awaiting first, so every concurrent
                    # duplicate in this process finds this task, and the
                    # predecessor is picked in the same step: a task only ever
                    # waits for one created before it, so two cannot wait on
                    # each other.
                    after = self._predecessor(namespace, ctx)
                    if after is not None and namespace == COMPENSATE:
                        self._awaiting_execute.add(ctx.idempotency_key)
                    task = self._spawn(
                        self._invoke(namespace, ctx, call, store=True, after=after)
                    )
                    self._inflight[k] = task
                    task.add_done_callback(functools.partial(self._task_done, k))
                    fenced = ctx.compensated_idempotency_key
                    if namespace == COMPENSATE and fenced:
                        self._fencing[fenced] = task
                        task.add_done_callback(functools.partial(self._fence_done, fenced))
                    out = await self._outcome(namespace, ctx, task)
            ok = True
            # A replayed or shared result cost this call no processing.
            processing_ms = 0.0 if out.deduplicated else out.processing_ms
            return out
        finally:
            self.load.finished(start, processing_ms=processing_ms, ok=ok)

    def _spawn(self, coro: Coroutine[Any, Any, Outcome]) -> asyncio.Task[Outcome]:
        # Handler tasks are shielded from the caller and tracked, so drain waits for them.
        task = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Outcome]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so a caller that went away leaves no warning

    def _task_done(self, key: tuple[str, str], task: asyncio.Task[Outcome]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    def _fence_done(self, fenced: str, task: asyncio.Task[Outcome]) -> None:
        if self._fencing.get(fenced) is task:
            del self._fencing[fenced]

    async def _outcome(
        self, namespace: str, ctx: ActionContext, task: asyncio.Task[Outcome]
    ) -> Outcome:
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
        if namespace != COMPENSATE or left is None or key not in self._awaiting_execute:
            return await asyncio.shield(task)
        # Answer a little before the deadline so the answer reaches the caller.
        margin_s = min(0.5, 0.3 * left)
        await asyncio.wait([task], timeout=max(0.0, left - margin_s))
        if not task.done() and key in self._awaiting_execute:
            raise Unavailable(
                f"compensation {key!r} waits for the Execute it undoes, still running on agent "
                f"{self.agent_id}; it runs when that ends, retry to get its result",
                reason=ErrorReason.ERROR_REASON_EXECUTE_IN_FLIGHT,
            )
        return await asyncio.shield(task)

    def _predecessor(self, namespace: str, ctx: ActionContext) -> asyncio.Task[Outcome] | None:
        """The in-flight call a new call must wait for, if any.

        A Compensate of `<K>` waits for the Execute `<K>` (so it undoes a
        finished effect); an Execute `<K>` waits for a Compensate of `<K>`
        (and is then refused by its tombstone).
        """
        if namespace == COMPENSATE:
            target = ctx.compensated_idempotency_key
            return self._inflight.get((EXECUTE, target)) if target else None
        return self._fencing.get(ctx.idempotency_key)

    async def _lookup(self, items: Sequence[tuple[str, str]]) -> list[StoredResult | None]:
        """Read the store before anything runs; failures are UNAVAILABLE (safe to retry)."""
        assert self.store is not None
        try:
            return await self.store.get_many(items)
        except Exception as exc:  # nothing ran yet, so the caller may safely retry
            raise Unavailable(
                f"idempotency store unavailable: {type(exc).__name__}: {exc}",
                reason=ErrorReason.ERROR_REASON_IDEMPOTENCY_STORE_DOWN,
            ) from exc

    def _compensated_error(self, key: str, tombstone: StoredResult) -> Aborted:
        return Aborted(
            f"idempotency key {key!r} was compensated (compensation {tombstone.action!r} "
            f"at {tombstone.completed_ms} ms since the epoch) on agent {self.agent_id}; "
            "a late Execute must not take effect, so the action did not run",
            details=[
                error_info(
                    ErrorReason.ERROR_REASON_COMPENSATED,
                    metadata={"idempotency_key": key, "agent_id": self.agent_id},
                )
            ],
        )

    async def _prepare(
        self, namespace: str, ctx: ActionContext, after: asyncio.Task[Outcome] | None
    ) -> tuple[ActionContext, StoredResult | None]:
        """Store reads before a keyed call runs: tombstone, stored result, original output.

        Returns:
            (the context to run with, the stored result of this key or None).

        Raises:
            Aborted: an Execute whose key has a compensation tombstone (reason COMPENSATED).
            Unavailable: the store cannot be read.
        """
        key = ctx.idempotency_key
        if namespace == EXECUTE:
            tomb, stored = await self._lookup([(TOMBSTONE, key), (EXECUTE, key)])
            if tomb is not None:
                raise self._compensated_error(key, tomb)
            return ctx, stored
        target = ctx.compensated_idempotency_key if namespace == COMPENSATE else ""
        if not target or ctx.original_output is not None:
            (stored,) = await self._lookup([(namespace, key)])
            return ctx, stored
        stored, executed = await self._lookup([(namespace, key), (EXECUTE, target)])
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
        assert self.store is not None
        try:
            await self.store.put(
                TOMBSTONE, target, StoredResult(ctx.action, {}, int(time.time() * 1000))
            )
        except Exception as exc:
            raise Unavailable(
                f"could not record the compensation tombstone of {target!r}: "
                f"{type(exc).__name__}: {exc}",
                reason=ErrorReason.ERROR_REASON_IDEMPOTENCY_STORE_DOWN,
            ) from exc

    async def _invoke(
        self, namespace: str, ctx: ActionContext, call: Call, *,
        store: bool, after: asyncio.Task[Outcome] | None = None,
    ) -> Outcome:
        assert self.store is not None
        if after is not None:
            # Outside the concurrency limit: `after` may still be queued for it.
            try:
                await asyncio.wait([after])
            finally:
                if namespace == COMPENSATE:
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
                return Outcome(dict_to_struct(stored.output), True, 0.0)
            target = ctx.compensated_idempotency_key if namespace == COMPENSATE else ""
            if target:
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
                await self.store.put(
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
        return Outcome(output, False, processing_ms)


__all__ = [
    "COMPENSATE",
    "EXECUTE",
    "TOMBSTONE",
    "Call",
    "IdempotentExecutor",
    "Outcome",
    "call_handler",
    "map_exception",
]
