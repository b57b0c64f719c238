"""One attempt on an A2A agent, for the one agent path (`AgentClient`).

An agent registered with RegisterA2AAgent has its agent card URL as its
catalog endpoint. `AgentClient` hands calls to such targets to `A2ACaller`,
which speaks A2A with the official SDK (`a2a-sdk` 1.x: `A2ACardResolver`,
`ClientFactory`, JSON-RPC binding) and turns the A2A task into the same
`CallOutcome` a gRPC agent gives, so guardrails, breakers, outlier ejection
and outcome recording apply unchanged.

The mapping (README, "Register an A2A agent"):

* the call's action (`ExecuteRequest.action`, `CompensateRequest.action`)
  is the skill, sent as message metadata `skill_id`; the input is the
  message's one data part; the idempotency key, attempt and call metadata
  ride in message metadata (`idempotency_key`, `attempt`, `agentmesh`), and
  a compensation adds `kind` = "compensate", `compensated_idempotency_key`
  and `original_output`;
* the task's terminal state is the outcome: COMPLETED -> OK (the result is
  the first data part of the artifacts, else of the status message; text
  parts become {"text": ...}); FAILED and REJECTED -> FAILED_PRECONDITION
  with the agent's status message; CANCELED -> CANCELLED; INPUT_REQUIRED
  and AUTH_REQUIRED -> FAILED_PRECONDITION (a mesh call cannot answer);
* a task that comes back SUBMITTED or WORKING is polled with GetTask
  (backoff 20 ms x1.5 up to 1 s) until it ends; when the attempt's timeout
  passes first the outcome is DEADLINE_EXCEEDED and the task is canceled;
* transport failures: connection refused -> UNAVAILABLE (not reached),
  other network errors, 502/503/504 and an unreadable card -> UNAVAILABLE,
  a timeout -> DEADLINE_EXCEEDED; JSON-RPC errors by kind (invalid params ->
  INVALID_ARGUMENT, unsupported -> UNIMPLEMENTED, task not found ->
  NOT_FOUND, the rest INTERNAL).

`Evaluate` (swarm fitness batches) has no A2A counterpart: UNIMPLEMENTED.
While tracing is on, every HTTP request carries the W3C trace context of the
call's CLIENT span.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    A2AClientTimeoutError,
    AgentCardResolutionError,
    Client,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
)
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)
from a2a.utils import errors as a2a_errors
from google.protobuf import any_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2

from agentmesh.agent.v1 import agent_pb2
from agentmesh.runtime import tracing
from agentmesh.runtime.errors import STATUS_DETAILS_KEY

S = grpc.StatusCode

#: Terminal A2A task states and the mesh outcome of each.
TERMINAL: dict[int, grpc.StatusCode] = {
    TaskState.TASK_STATE_COMPLETED: S.OK,
    TaskState.TASK_STATE_FAILED: S.FAILED_PRECONDITION,
    TaskState.TASK_STATE_REJECTED: S.FAILED_PRECONDITION,
    TaskState.TASK_STATE_CANCELED: S.CANCELLED,
    # interrupted states: the agent waits for a user the mesh call does not have
    TaskState.TASK_STATE_INPUT_REQUIRED: S.FAILED_PRECONDITION,
    TaskState.TASK_STATE_AUTH_REQUIRED: S.FAILED_PRECONDITION,
}
#: ErrorInfo domain of a failed A2A task.
A2A_DOMAIN = "a2a-protocol.org"
#: GetTask polling of a task still SUBMITTED or WORKING: first wait, growth, cap (s).
POLL_FIRST_S, POLL_FACTOR, POLL_MAX_S = 0.02, 1.5, 1.0
#: Timeout of a card fetch when the call has none, s.
CARD_TIMEOUT_S = 5.0

_JSONRPC_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (a2a_errors.InvalidParamsError, S.INVALID_ARGUMENT),
    (a2a_errors.InvalidRequestError, S.INVALID_ARGUMENT),
    (a2a_errors.ContentTypeNotSupportedError, S.INVALID_ARGUMENT),
    (a2a_errors.MethodNotFoundError, S.UNIMPLEMENTED),
    (a2a_errors.UnsupportedOperationError, S.UNIMPLEMENTED),
    (a2a_errors.VersionNotSupportedError, S.UNIMPLEMENTED),
    (a2a_errors.TaskNotFoundError, S.NOT_FOUND),
)


@dataclass(slots=True)
class A2AResult:
    """What one A2A attempt gave, before it becomes a CallOutcome.

    Attributes:
        code: the mesh outcome.
        message: the agent's status message or the error ("" on OK).
        response: ExecuteResponse / CompensateResponse on OK, else None.
        reached: False when the request provably never reached the agent.
        task_id: the A2A task id, "" when none was created.
        task_state: the task's last state, UNSPECIFIED when there was no task.
    """

    code: grpc.StatusCode
    message: str
    response: Any | None = None
    reached: bool = True
    task_id: str = ""
    task_state: int = TaskState.TASK_STATE_UNSPECIFIED

    def rpc_error(self, card_url: str) -> grpc.aio.AioRpcError:
        """The failure as the RPC error a gRPC agent would have returned, so
        every caller (retry classification, saga and task errors, router
        Invoke) treats it alike. When a task ended, an ErrorInfo of domain
        "a2a-protocol.org" carries its state as the reason, its id and the
        card URL."""
        trailing: list[tuple[str, str | bytes]] = []
        if self.task_state != TaskState.TASK_STATE_UNSPECIFIED:
            info = error_details_pb2.ErrorInfo(
                reason=TaskState.Name(self.task_state), domain=A2A_DOMAIN,
                metadata={"task_id": self.task_id, "agent_card_url": card_url},
            )
            detail = any_pb2.Any()
            detail.Pack(info)
            st = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
            trailing.append((STATUS_DETAILS_KEY, st.SerializeToString()))
        return grpc.aio.AioRpcError(
            self.code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), self.message
        )


class A2ACaller:
    """Calls A2A agents; one a2a-sdk Client per agent card URL, one shared
    HTTP connection pool.

    Args:
        headers: extra HTTP headers on every request (e.g. a bearer token).
        return_immediately: ask agents to answer SendMessage at once with the
            task and poll it (A2A `returnImmediately`), instead of holding one
            HTTP request open until the task ends; for networks whose proxies
            cut idle requests shorter than the tasks take.
    """

    def __init__(
        self, *, headers: dict[str, str] | None = None, return_immediately: bool = False
    ) -> None:
        self.return_immediately = return_immediately
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(None),
            event_hooks={"request": [_inject_trace_context]},
        )
        self._factory = ClientFactory(ClientConfig(streaming=False, httpx_client=self._http))
        self._clients: dict[str, Client] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        """Close every client and the connection pool."""
        self._clients.clear()
        await self._http.aclose()

    def forget(self, card_url: str) -> None:
        """Drop the client of an agent that went away (its card is read again next time)."""
        self._clients.pop(card_url, None)

    async def _client(self, card_url: str, timeout_s: float) -> Client:
        client = self._clients.get(card_url)
        if client is not None:
            return client
        lock = self._locks.setdefault(card_url, asyncio.Lock())
        async with lock:
            client = self._clients.get(card_url)
            if client is None:
                card = await A2ACardResolver(self._http, card_url).get_agent_card(
                    relative_card_path="/", http_kwargs={"timeout": timeout_s}
                )
                client = self._clients[card_url] = self._factory.create(card)
        return client

    async def call(
        self,
        card_url: str,
        method: str,
        request: Any,
        *,
        agent_id: str,
        timeout_s: float | None,
    ) -> A2AResult:
        """One attempt of `method` ("Execute", "Compensate", "Evaluate") on
        the A2A agent whose card is at `card_url`.

        Args:
            agent_id: the mesh id of the agent (set in the response).
            timeout_s: the attempt's timeout (the whole exchange, polling
                included); None for none.

        Never raises for an agent or transport failure: the result carries it.
        """
        if method == "Evaluate":
            return A2AResult(S.UNIMPLEMENTED, "A2A agents do not evaluate fitness batches",
                             reached=False)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        state: dict[str, str] = {}
        try:
            async with asyncio.timeout(timeout_s):
                client = await self._client(card_url, timeout_s or CARD_TIMEOUT_S)
                return await self._exchange(client, method, request, agent_id, deadline, state)
        except (TimeoutError, A2AClientTimeoutError):
            task_id = state.get("task_id", "")
            if task_id:
                await self._cancel_quietly(card_url, task_id)
            return A2AResult(S.DEADLINE_EXCEEDED, "the A2A agent did not finish in time",
                             task_id=task_id, task_state=int(state.get("task_state", 0)))
        except AgentCardResolutionError as e:
            return A2AResult(S.UNAVAILABLE, f"cannot read the agent card: {e}",
                             reached=False)
        except A2AClientError as e:
            return _transport_failure(e)
        except a2a_errors.A2AError as e:
            code = next((c for t, c in _JSONRPC_CODES if isinstance(e, t)), S.INTERNAL)
            return A2AResult(code, str(e) or type(e).__name__)
        except httpx.HTTPError as e:  # e.g. a redirect loop: outside the SDK's mapping
            return A2AResult(S.UNAVAILABLE, f"{type(e).__name__}: {e}")
        except (httpx.InvalidURL, ValueError) as e:  # a card whose URL httpx refuses
            return A2AResult(S.UNAVAILABLE, f"bad A2A agent URL: {e}", reached=False)

    async def _exchange(
        self,
        client: Client,
        method: str,
        request: Any,
        agent_id: str,
        deadline: float | None,
        state: dict[str, str],
    ) -> A2AResult:
        msg = _message(method, request)
        ctx = ClientCallContext(timeout=_left(deadline))
        task: Task | None = None
        send = SendMessageRequest(message=msg)
        send.configuration.return_immediately = self.return_immediately
        async for event in client.send_message(send, context=ctx):
            if event.HasField("message"):  # a direct reply, no task
                out = _output(event.message.parts)
                return A2AResult(S.OK, "", _response(method, agent_id, out))
            if event.HasField("task"):
                task = event.task
        if task is None:
            return A2AResult(S.INTERNAL, "the A2A agent answered with neither a task nor a message")
        state["task_id"] = task.id
        wait = POLL_FIRST_S
        while task.status.state not in TERMINAL:
            state["task_state"] = str(task.status.state)
            await asyncio.sleep(wait)
            wait = min(wait * POLL_FACTOR, POLL_MAX_S)
            task = await client.get_task(
                GetTaskRequest(id=task.id), context=ClientCallContext(timeout=_left(deadline))
            )
        code = TERMINAL[task.status.state]
        if code != S.OK:
            why = _text(task.status.message.parts) or TaskState.Name(task.status.state)
            return A2AResult(code, why, task_id=task.id, task_state=task.status.state)
        parts = [p for a in task.artifacts for p in a.parts] or list(task.status.message.parts)
        return A2AResult(S.OK, "", _response(method, agent_id, _output(parts)), task_id=task.id)

    async def _cancel_quietly(self, card_url: str, task_id: str) -> None:
        client = self._clients.get(card_url)
        if client is None:
            return
        try:
            async with asyncio.timeout(1.0):
                await client.cancel_task(CancelTaskRequest(id=task_id))
        except (TimeoutError, a2a_errors.A2AError):
            pass  # best effort: the task may have ended or be not cancelable


async def _inject_trace_context(request: httpx.Request) -> None:
    """W3C traceparent/tracestate/baggage of the current span (the agent
    call's CLIENT span) on every HTTP request, so the A2A agent's spans join
    the mesh's trace."""
    if tracing.enabled():
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        request.headers.update(carrier)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.001, deadline - time.monotonic())


def _message(method: str, request: Any) -> Message:
    """The A2A message for an Execute or Compensate request."""
    meta: dict[str, Any] = {
        "skill_id": request.action,
        "idempotency_key": request.idempotency_key,
        "attempt": request.attempt,
    }
    if request.metadata:
        meta["agentmesh"] = dict(request.metadata)
    if method == "Compensate":
        meta["kind"] = "compensate"  # a skill may name both an action and its compensation
        meta["compensated_idempotency_key"] = request.compensated_idempotency_key
        if request.HasField("original_output"):
            meta["original_output"] = json_format.MessageToDict(request.original_output)
    msg = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex)
    part = msg.parts.add()
    part.data.struct_value.CopyFrom(request.input)
    msg.metadata.update(meta)
    return msg


def _output(parts: list[Part] | Any) -> struct_pb2.Struct:
    """The call's output from A2A parts: the first data part (a non-object is
    wrapped as {"result": value}), else the text parts as {"text": ...}."""
    out = struct_pb2.Struct()
    for p in parts:
        if p.HasField("data"):
            if p.data.HasField("struct_value"):
                out.CopyFrom(p.data.struct_value)
            else:
                out.fields["result"].CopyFrom(p.data)
            return out
    text = _text(parts)
    if text:
        out.update({"text": text})
    return out


def _text(parts: Any) -> str:
    return "\n".join(p.text for p in parts if p.text)


def _response(method: str, agent_id: str, output: struct_pb2.Struct) -> Any:
    if method == "Compensate":
        return agent_pb2.CompensateResponse(agent_id=agent_id, output=output)
    return agent_pb2.ExecuteResponse(agent_id=agent_id, output=output)


def _transport_failure(e: A2AClientError) -> A2AResult:
    """An A2AClientError (network or HTTP status) as an outcome."""
    cause = e.__cause__
    if isinstance(cause, httpx.ConnectError):
        return A2AResult(S.UNAVAILABLE, f"cannot connect to the A2A agent: {cause}", reached=False)
    if isinstance(cause, httpx.HTTPStatusError):
        status = cause.response.status_code
        code = S.UNAVAILABLE if status in (429, 502, 503, 504) else S.INTERNAL
        return A2AResult(code, f"the A2A agent answered HTTP {status}")
    if isinstance(cause, httpx.TimeoutException):
        return A2AResult(S.DEADLINE_EXCEEDED, "the A2A agent did not answer in time")
    return A2AResult(S.UNAVAILABLE, str(e))
