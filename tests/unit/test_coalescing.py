"""gateway.coalescing: batches form from what queues while a call is in flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coalescing import Coalescer


class Recorder:
    """A send function that records its batches and can be held mid-call."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [i * 10 for i in items]


async def test_a_lone_item_goes_at_once_and_later_ones_share_the_next_call():
    send = Recorder()
    c: Coalescer[int, int] = Coalescer(send, size=3, name="t")
    assert await c.submit(1) == 10
    send.gate.clear()
    first = asyncio.ensure_future(c.submit(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the call for 2 is in flight
    rest = [asyncio.ensure_future(c.submit(i)) for i in range(3, 8)]
    await asyncio.sleep(0)
    send.gate.set()
    assert await first == 20 and await asyncio.gather(*rest) == [30, 40, 50, 60, 70]
    assert send.batches == [[1], [2], [3, 4, 5], [6, 7]]  # at most `size` per call, in arrival order


async def test_a_failed_call_fails_its_batch_only():
    send = Recorder()
    c: Coalescer[int, int] = Coalescer(send, size=10, name="t")
    send.fail = RuntimeError("down")
    with pytest.raises(RuntimeError, match="down"):
        await c.submit(1)
    send.fail = None
    assert await c.submit(2) == 20


async def test_a_caller_that_gives_up_does_not_withdraw_its_item():
    send = Recorder()
    c: Coalescer[int, int] = Coalescer(send, size=10, name="t")
    send.gate.clear()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await c.submit(1)
    send.gate.set()
    assert await c.submit(2) == 20
    assert send.batches == [[1], [2]]
