"""cancel_and_wait stops a task even when one cancellation is swallowed."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh.runtime.tasks import cancel_and_wait


async def test_a_swallowed_cancel_is_repeated_until_the_task_ends() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                # What Python 3.11's asyncio.wait_for does when its inner
                # future completes as the cancel lands: the loop carries on.
                if swallowed == 0:
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, retry_s=0.01), 5)
    assert swallowed == 1 and task.cancelled()


async def test_the_task_error_is_raised() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)
