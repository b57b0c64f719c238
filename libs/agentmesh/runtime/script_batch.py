"""Group commit for one Redis Lua script: the calls that callers make in the
same event-loop turn go out as one non-transactional pipeline.

Why: a coordinator drives many sagas on one event loop, and their appends
(one fenced script call each) tend to come due together (agent replies
arrive in bursts). One pipeline of N EVALSHA is one socket write, one read
loop and one pooled connection, where N separate calls are N of each; the
redis-py client's per-command overhead is a large share of the
coordinator's CPU (perf/saga/RESULTS.md).

What stays the same: every call is still its own script run, atomic on its
own, with its own reply or error; a caller still awaits its own reply before
it goes on (write-ahead is the caller's, and unchanged). A turn with one call
sends it as the plain EVALSHA (no pipeline object). A pipeline is not a
transaction: the calls of one batch are independent, as concurrent calls on
separate connections are. Calls are sent in the order they were made.

Usage::

    append = ScriptBatch(redis.register_script(LUA))
    reply = await append(keys=[...], args=[...])   # same shape as AsyncScript
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

#: Most calls in one pipeline; a bigger burst goes out as several pipelines.
MAX_BATCH = 256

_Call = tuple[Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatch:
    """Calls of `script` coalesced per event-loop turn (see the module doc).

    Args:
        script: a script registered on the client that runs it (its
            `registered_client`; a RedisCluster routes each call by its keys,
            which must share a slot, as for any script).
        max_batch: most calls per pipeline.

    Attributes:
        batches: pipelines sent so far; calls: calls sent so far (for tests
            and the bench: calls / batches is the mean batch size).
    """

    def __init__(self, script: AsyncScript, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.script = script
        self.max_batch = max_batch
        self._queue: list[_Call] = []
        self._scheduled = False
        self._senders: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.calls = 0

    async def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script once with `keys` and `args`; its reply.

        Raises:
            redis.exceptions.ResponseError: this call's script error (its own;
                another call's error in the same batch is not raised here).
            redis.exceptions.RedisError: Redis failed (connection, timeout):
                as with a single call, the script may or may not have run.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, fut))
        if not self._scheduled:
            # The sender's first step runs after every callback already due
            # in this turn, so the calls other tasks make in this turn join
            # the batch; it is a task from here (not a flush callback that
            # starts one) so a lone call waits one loop iteration, not two.
            self._scheduled = True
            t = asyncio.ensure_future(self._drain())
            self._senders.add(t)
            t.add_done_callback(self._senders.discard)
        # A cancelled caller cancels only its own future: the batch's sender is
        # a task of its own and skips futures that are done.
        return await fut

    async def _drain(self) -> None:
        self._scheduled = False
        q, self._queue = self._queue, []
        if len(q) <= self.max_batch:
            await self._send(q)
            return
        await asyncio.gather(
            *(self._send(q[i : i + self.max_batch]) for i in range(0, len(q), self.max_batch))
        )

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._pipeline(batch)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # Redis lost its script cache (restart, SCRIPT FLUSH): a NOSCRIPT
                # call did not run, so it alone is sent again, once.
                redis = self.script.registered_client
                await redis.script_load(self.script.script)
                again = await self._pipeline([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    replies[i] = r
        except BaseException as e:
            # every caller of the batch gets it; a cancel of this sender goes on up
            for _, _, fut in batch:
                if not fut.done():
                    if isinstance(e, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        for (_, _, fut), r in zip(batch, replies, strict=True):
            if fut.done():
                continue
            if isinstance(r, Exception):
                fut.set_exception(r)
            else:
                fut.set_result(r)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        redis = self.script.registered_client
        self.batches += 1
        self.calls += len(batch)
        if len(batch) == 1:
            # A lone call (one saga at a time) goes as the plain command:
            # redis-py's pipeline object, its reset and its packing cost more
            # than the call itself. Same command, same reply or script error.
            keys, args, _ = batch[0]
            try:
                reply = await redis.execute_command(
                    "EVALSHA", self.script.sha, len(keys), *keys, *args
                )
            except ResponseError as e:
                return [e]
            return [reply]
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                # as a command: redis-py's cluster pipeline refuses its evalsha
                # method (see agentmesh.runtime.lease.call_many)
                pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Wait for the batches in flight (a stopping daemon calls this)."""
        if self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)


__all__ = ["MAX_BATCH", "ScriptBatch"]
