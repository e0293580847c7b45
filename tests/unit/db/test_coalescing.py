"""gateway.db.coalescing: batches form from what queues while a call is in flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.db.coalescing import Coalescer


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


class Poisoned(Exception):
    """What a database says about one item's value."""


async def refuse_poison(items: list[int]) -> list[int]:
    if any(i < 0 for i in items):
        raise Poisoned(f"refused {items}")
    return [i * 10 for i in items]


async def test_one_poisoned_item_fails_alone_and_its_batch_mates_get_their_results():
    calls: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        calls.append(items)
        return await refuse_poison(items)

    c: Coalescer[int, int] = Coalescer(send, size=64, name="t", split=lambda exc: isinstance(exc, Poisoned))
    items = [*range(1, 40), -1, *range(40, 64)]  # 64 items, queued before the first call
    results = await asyncio.gather(*(c.submit(i) for i in items), return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception)] == [results[39]]
    assert isinstance(results[39], Poisoned)
    assert [r for i, r in zip(items, results, strict=True) if i >= 0] == [i * 10 for i in items if i >= 0]
    # Halving pins the item: a handful of calls more, not one per item.
    assert len(calls) <= 1 + 2 * 6


async def test_an_error_no_item_can_be_blamed_for_fails_the_batch_without_splitting():
    calls: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        calls.append(items)
        raise ConnectionError("database unreachable")

    c: Coalescer[int, int] = Coalescer(send, size=64, name="t", split=lambda exc: isinstance(exc, Poisoned))
    results = await asyncio.gather(*(c.submit(i) for i in range(10)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert calls == [list(range(10))]  # one call, shared by all
