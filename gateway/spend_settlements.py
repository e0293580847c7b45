"""Settlements: storing what requests actually cost, in batches, without losing one (edge).

``SpendStore.settle`` turns a finished request into a :class:`Settle` and hands
it to :class:`Settlements`, which queues it and lets one flusher task store up
to ``SETTLE_BATCH`` at a time through the ``store_batch`` call it was given, at
most ``SETTLE_INTERVAL_S`` after the first of them was queued: one round trip
and one commit per batch instead of per request. The delay only keeps
reservations standing a few tens of milliseconds longer, so admission
meanwhile sees a little *more* committed spend than is real, never less.

Nothing is dropped in silence. A batch that cannot reach the database goes to
a bounded retry queue that the spend store's background task drains
(settling is idempotent per request id). A batch the database rejects for its
content is stored one settlement at a time, so one bad settlement does not
hold back the others. What is still unstored when the queue closes, or cannot
be kept, is written out as a ``spend.unsettled`` audit line.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from gateway.store import StoreUnavailable
from gateway.tasks import cancel_and_wait

SETTLE_BATCH = 100  # settlements per round trip
SETTLE_INTERVAL_S = 0.05  # how long a lone settlement waits for company
MAX_RETRY_QUEUE = 50_000

Log = Callable[[str, str], None]
Emit = Callable[..., None]
# Who hears a settlement's outcome: the future a submit() awaits, a callback of
# enqueue(), or nobody.
Sink = asyncio.Future[str] | Callable[[str], None] | None


class Settle(NamedTuple):
    request_id: str
    sub: str
    model: str | None
    keys: tuple[Any, ...]  # the counters to charge when no reservation row exists
    actual_micro: int
    at: datetime
    lease: str | None = None  # the lease the request was admitted against (spend_leases)
    move: int = 0  # what its settlement moves out of that lease


class Settlements:
    """The queue between ``settle`` calls and the database. ``await close()`` when done."""

    def __init__(
        self, store_batch: Callable[[Sequence[Settle]], Awaitable[list[str]]], *, log: Log, emit: Emit
    ) -> None:
        self._store_batch = store_batch
        self._log = log
        self._emit = emit
        # Settlements waiting for the flusher, each with who hears its outcome.
        self._pending: deque[tuple[Settle, Sink]] = deque()
        self._late: set[asyncio.Task[str]] = set()  # enqueue()d after close: one last attempt each
        self._batch_full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        # Settlements a batch could not store; retry() stores them in order.
        self._retry: deque[Settle] = deque()

    async def submit(self, item: Settle) -> str:
        """Queue ``item`` and return its outcome once its batch is stored (see ``SpendStore.settle``)."""
        if self._closed:
            return await self._after_close(item)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue(item, waiter)
        # Cancelling this wait does not withdraw the settlement: it stays queued.
        return await waiter

    def enqueue(self, item: Settle, done: Callable[[str], None] | None = None) -> None:
        """Queue ``item`` without waiting: ``done`` gets its outcome once its batch is stored.

        The request path settles this way: no task per request, and nothing a
        hang-up could cancel.
        """
        if self._closed:
            task = asyncio.get_running_loop().create_task(self._after_close(item), name="spend-settle-late")
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            if done is not None:
                task.add_done_callback(
                    lambda t: done("unsettled" if t.cancelled() or t.exception() else t.result())
                )
            return
        self._queue(item, done)

    def _queue(self, item: Settle, sink: Sink) -> None:
        self._pending.append((item, sink))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="spend-settle-flush")
        elif len(self._pending) >= SETTLE_BATCH:
            self._batch_full.set()

    async def retry(self) -> int:
        """Retry queued settlements in order, a batch per round trip; returns how many were stored."""
        done = 0
        while self._retry:
            batch = list(itertools.islice(self._retry, SETTLE_BATCH))
            await self._store(batch)
            for item in batch:
                # A full queue may have dropped (and reported) the oldest meanwhile.
                if self._retry and self._retry[0] is item:
                    self._retry.popleft()
            done += len(batch)
        if done:
            self._log("info", f"spend: {done} queued settlements stored")
        return done

    async def close(self, timeout_s: float) -> None:
        """Store what is queued, within ``timeout_s``; report the rest as ``spend.unsettled``."""
        self._closing = True
        self._batch_full.set()  # a waiting flusher stores its batch now
        problem = ""
        try:
            async with asyncio.timeout(timeout_s):
                while self._flusher is not None:
                    await self._flusher
                await self.retry()
        except StoreUnavailable as exc:
            problem = str(exc)
        except TimeoutError:
            problem = f"not done within {timeout_s:g} s"
        self._closed = True
        await cancel_and_wait(self._flusher)  # one a submit() started during the retry above
        left = [item for item, _ in self._pending] + list(self._retry)
        for _, sink in self._pending:
            _deliver(sink, "unsettled")
        self._pending.clear()
        self._retry.clear()
        problem = problem or "still queued when the store closed"
        if left:
            self._log("warn", f"spend: {len(left)} settlements not stored at shutdown ({problem})")
        for item in left:
            self._unsettled(item, f"not stored at shutdown: {problem}")

    async def _flush(self) -> None:
        """Store queued settlements batch by batch; ends when the queue is empty (started again on demand)."""
        try:
            while self._pending:
                if len(self._pending) < SETTLE_BATCH and not self._closing:
                    self._batch_full.clear()
                    try:
                        await asyncio.wait_for(self._batch_full.wait(), SETTLE_INTERVAL_S)
                    except TimeoutError:
                        pass
                batch = [self._pending.popleft() for _ in range(min(SETTLE_BATCH, len(self._pending)))]
                try:
                    outcomes = await self._store([item for item, _ in batch])
                except StoreUnavailable as exc:
                    # What queued up meanwhile would meet the same outage: it joins the
                    # (bounded) retry queue too rather than wait here a timeout per batch.
                    batch += self._pending
                    self._pending.clear()
                    for item, _ in batch:
                        self._queue_retry(item, exc)
                    outcomes = ["queued"] * len(batch)
                except Exception as exc:  # neither an outage nor a refusal: a bug; say so, per request
                    self._log("error", f"spend: storing {len(batch)} settlements failed: {exc!r}")
                    for item, _ in batch:
                        self._unsettled(item, f"failed: {exc!r}")
                    outcomes = [exc] * len(batch)
                except BaseException:
                    # Cancelled mid-call (close() ran out of time): the batch is still owed.
                    self._pending.extendleft(reversed(batch))
                    raise
                for (_, sink), outcome in zip(batch, outcomes, strict=True):
                    _deliver(sink, outcome)
        finally:
            self._flusher = None

    async def _store(self, items: Sequence[Settle]) -> list[str | BaseException]:
        """Store ``items`` in one round trip; StoreUnavailable when the batch can only be retried.

        A batch the database rejects for its content (a bug, not an outage) is
        stored one settlement at a time; each one rejected on its own is
        reported as a ``spend.unsettled`` audit line and comes back as its
        exception.
        """
        try:
            return list(await self._store_batch(items))
        except asyncpg.PostgresError as exc:  # transient refusals arrive as StoreUnavailable
            if len(items) == 1:
                self._unsettled(items[0], f"rejected by the database: {exc}")
                return [exc]
            self._log("error", f"spend: a settlement batch was rejected ({exc}); storing it one by one")
        out: list[str | BaseException] = []
        for item in items:
            out += await self._store([item])
        return out

    async def _after_close(self, item: Settle) -> str:
        """A settlement that arrives after close(): one attempt, reported loudly if it fails."""
        try:
            result = (await self._store([item]))[0]
        except StoreUnavailable as exc:
            self._unsettled(item, f"arrived after shutdown: {exc}")
            return "unsettled"
        if isinstance(result, BaseException):
            raise result
        return result

    def _queue_retry(self, item: Settle, exc: StoreUnavailable) -> None:
        if self._closed:  # nobody would retry it any more
            self._unsettled(item, f"not stored at shutdown: {exc}")
            return
        if len(self._retry) >= MAX_RETRY_QUEUE:
            self._unsettled(self._retry.popleft(), "retry queue full (database unreachable?)")
        if not self._retry:
            self._log("warn", f"spend: settling failed ({exc}); retrying in the background")
        self._retry.append(item)

    def _unsettled(self, item: Settle, reason: str) -> None:
        self._emit(
            "spend.unsettled",
            request_id=item.request_id,
            sub=item.sub,
            model=item.model,
            cost_micro=item.actual_micro,
            reason=reason,
        )


def _deliver(sink: Sink, outcome: str | BaseException) -> None:
    if sink is None:
        return
    if isinstance(sink, asyncio.Future):
        if sink.done():
            return
        if isinstance(outcome, BaseException):
            sink.set_exception(outcome)
        else:
            sink.set_result(outcome)
        return
    sink("failed" if isinstance(outcome, BaseException) else outcome)
