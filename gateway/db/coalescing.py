"""Coalescing concurrent calls into batched ones (edge helper).

A :class:`Coalescer` takes items one at a time from many tasks and hands them
to ``send`` in lists, one call in flight at a time: a lone item goes at once,
and whatever arrives while a call is in flight goes in the next one (up to
``size`` per call). Nothing waits on purpose, so an idle gateway pays one
task hop per item, and a busy one pays one database round trip per batch
rather than per item.

One item must not fail the items it happened to share a call with: when
``send`` raises an error that ``split`` says may be one item's fault (the
database refusing a value, say, as opposed to being unreachable), the batch
is sent again in halves, and so on, until the error is pinned on single
items; the others get their results. A poisoned item among 64 costs about a
dozen extra calls, not 63.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await submit(item)`` returns ``send``'s result for that item (``send`` answers in order)."""

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R]]],
        size: int,
        name: str,
        *,
        split: Callable[[Exception], bool] = lambda exc: False,
    ) -> None:
        self._send = send
        self._size = size
        self._name = name
        self._split = split
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result.

        A caller that stops waiting (timeout, cancellation) does not withdraw
        the item: it is sent with its batch all the same.
        """
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, waiter))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
        return await waiter

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._size, len(self._queue)))]
                try:
                    await self._answer(batch)
                except BaseException:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.cancel()  # cancelled mid-call: the gateway is shutting down
                    raise
        finally:
            self._task = None

    async def _answer(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        """Send ``batch`` and resolve its waiters; halves it while an error may be one item's."""
        try:
            results = await self._send([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and self._split(exc):
                half = len(batch) // 2
                await self._answer(batch[:half])
                await self._answer(batch[half:])
                return
            for _, waiter in batch:  # an error no item can be blamed for: the batch shares it
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for (_, waiter), result in zip(batch, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)
