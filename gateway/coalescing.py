"""Coalescing concurrent calls into batched ones (edge helper).

A :class:`Coalescer` takes items one at a time from many tasks and hands them
to ``send`` in lists, one call in flight at a time: a lone item goes at once,
and whatever arrives while a call is in flight goes in the next one (up to
``size`` per call). Nothing waits on purpose, so an idle gateway pays one
task hop per item, and a busy one pays one database round trip per batch
rather than per item.
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

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R]]], size: int, name: str) -> None:
        self._send = send
        self._size = size
        self._name = name
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
                    results = await self._send([item for item, _ in batch])
                except Exception as exc:  # every item of the batch shares its fate
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                except BaseException:
                    for _, waiter in batch:
                        waiter.cancel()  # cancelled mid-call: the gateway is shutting down
                    raise
                for (_, waiter), result in zip(batch, results, strict=True):
                    if not waiter.done():
                        waiter.set_result(result)
        finally:
            self._task = None
