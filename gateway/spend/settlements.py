"""Settlements: storing what requests actually cost, in batches, without losing one (edge).

``SpendStore.settle`` turns a finished request into a :class:`Settle` and hands
it to :class:`Settlements`, which queues it and lets one flusher task store up
to ``SETTLE_BATCH`` at a time through the ``store_batch`` call it was given, at
most ``SETTLE_INTERVAL_S`` after the first of them was queued: one round trip
and one commit per batch instead of per request. The delay only keeps
reservations standing a few tens of milliseconds longer, so admission
meanwhile sees a little *more* committed spend than is real, never less.

Every request served is charged exactly once, whatever the database did:

* Storing is idempotent per request id (the database keeps one row per id and
  reports a repeat as "duplicate"), so a settlement may always be sent again:
  after a lost reply, a killed connection, a timeout.
* A batch that cannot reach the database (any connection-level failure:
  ``gateway.db.store.is_unavailable``) waits in the owed queue, which the spend
  store's background task retries every second, in order, a batch per round
  trip, until it lands.
* A batch the database refuses for something else is stored in halves until
  the refusal is pinned on single settlements; the others land. A settlement
  refused for its values (``gateway.db.store.is_data_error``) is tried once more
  without its model (only a label: the charge matters more); one refused even
  so can never be stored and is written out as a ``spend.unsettled`` audit
  line with its cost. One refused for any other reason is kept in the owed
  queue and retried.
* The owed queue is bounded by ``max_owed`` (``MAX_OWED``), but never by
  dropping: once it is full the spend store admits no request until the
  database takes some of it (:attr:`Settlements.full`), so what is owed can
  exceed the bound only by the requests already running at that moment.
* What is still owed when the queue closes (shutdown, after storing for up to
  ``timeout_s``) is counted in the log and written out, one ``spend.unsettled``
  line each. A process killed outright loses its owed queue: the unflushed
  window is what ``MAX_OWED`` bounds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from gateway.db.store import StoreUnavailable, describe, is_data_error, is_unavailable
from gateway.db.tasks import cancel_and_wait

SETTLE_BATCH = 100  # settlements per round trip
SETTLE_INTERVAL_S = 0.05  # how long a lone settlement waits for company
# Settlements one process may owe a database that does not answer (about 250
# bytes each: some 25 MB at the bound). Past it, requests are refused until the
# database takes some: the bound is also what a process killed during an outage
# can lose.
MAX_OWED = 100_000
LABEL_CHARS = 200  # of a client-supplied label (the model) in a log line


class Owed(StoreUnavailable):
    """The owed queue is full (the database has not answered for a while): admit nothing."""


class _Again:
    """The outcome of a settlement that could not be stored now and must be tried again."""

    def __repr__(self) -> str:
        return "AGAIN"


AGAIN = _Again()
Outcome = str | BaseException | _Again

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
    lease: str | None = None  # the lease the request was admitted against (spend.leases)
    move: int = 0  # what its settlement moves out of that lease


class Settlements:
    """The queue between ``settle`` calls and the database. ``await close()`` when done."""

    def __init__(
        self,
        store_batch: Callable[[Sequence[Settle]], Awaitable[list[str]]],
        *,
        log: Log,
        emit: Emit,
        max_owed: int = MAX_OWED,
    ) -> None:
        self._store_batch = store_batch
        self._log = log
        self._emit = emit
        self.max_owed = max_owed
        # Settlements waiting for the flusher, each with who hears its outcome.
        self._pending: deque[tuple[Settle, Sink]] = deque()
        self._late: set[asyncio.Task[str]] = set()  # enqueue()d after close: one last attempt each
        self._batch_full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        # Settlements owed to the database: a batch could not store them; retry() does, in order.
        self._retry: deque[Settle] = deque()
        self._kept_warned = False  # a settlement kept for a reason other than an outage was logged

    @property
    def owed(self) -> int:
        """Settlements not stored yet: waiting for their batch or for the database to answer."""
        return len(self._pending) + len(self._retry)

    @property
    def full(self) -> bool:
        """As many settlements as the bound are unstored: admit nothing until the database takes some.

        Counted with those still waiting for their batch: in normal running
        that is a few tens of milliseconds' worth, far below the bound, and
        it makes the bound exact for requests served one after another.
        """
        return self.owed >= self.max_owed

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
        """Store the owed settlements, a batch per round trip, in order; returns how many were stored.

        StoreUnavailable when the database still cannot be reached (the rest
        stays owed, in order). Settlements put back for another reason wait
        for the next call.
        """
        done = 0
        kept: list[Settle] = []
        budget = len(self._retry)
        try:
            while self._retry and budget > 0:
                batch = [self._retry.popleft() for _ in range(min(SETTLE_BATCH, len(self._retry), budget))]
                budget -= len(batch)
                try:
                    outcomes = await self._store(batch)
                except BaseException:  # unreachable again, or cancelled: still owed, still first
                    self._retry.extendleft(reversed(batch))
                    raise
                again = [item for item, outcome in zip(batch, outcomes, strict=True) if outcome is AGAIN]
                done += sum(1 for outcome in outcomes if isinstance(outcome, str))
                kept += again
                if len(again) == len(batch):
                    break  # the database refuses them all (not an outage): the rest waits a tick too
        finally:
            self._retry.extend(kept)
        if not kept:
            self._kept_warned = False
        if done:
            self._log("info", f"spend: {done} owed settlements stored ({len(self._retry)} still owed)")
        return done

    async def close(self, timeout_s: float) -> None:
        """Store what is queued, within ``timeout_s``; report the rest as ``spend.unsettled``."""
        self._closing = True
        self._batch_full.set()  # a waiting flusher stores its batch now
        owed = self.owed
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
            self._log(
                "warn",
                f"spend: {len(left)} of {owed} queued settlements not stored at shutdown ({problem}); "
                "each is in a spend.unsettled audit line",
            )
        else:
            self._log("info", f"spend: 0 settlements unstored at shutdown ({owed} were queued)")
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
                    # What queued up meanwhile would meet the same outage: it is owed too
                    # rather than wait here a timeout per batch.
                    batch += self._pending
                    self._pending.clear()
                    for item, _ in batch:
                        self._owe(item, exc)
                    outcomes = ["queued"] * len(batch)
                except BaseException:
                    # Cancelled mid-call (close() ran out of time): the batch is still owed.
                    self._pending.extendleft(reversed(batch))
                    raise
                for (item, sink), outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, _Again):
                        self._owe(item, None)
                        outcome = "queued"
                    _deliver(sink, outcome)
        finally:
            self._flusher = None

    async def _store(self, items: Sequence[Settle], *, whole: bool = True) -> list[Outcome]:
        """Store ``items`` in one round trip; the outcome of each (see the module's docstring).

        StoreUnavailable when the database cannot be reached for the whole
        batch (``whole``); for a part of a batch being halved, its items come
        back AGAIN instead, so the parts already stored are not sent again.
        """
        try:
            return list(await self._store_batch(items))
        except Exception as exc:
            if is_unavailable(exc):
                if whole:
                    if isinstance(exc, StoreUnavailable):
                        raise
                    raise StoreUnavailable(describe(exc)) from exc
                return [AGAIN] * len(items)
            if len(items) == 1:
                return [await self._alone(items[0], exc)]
            if whole:
                self._log(
                    "error",
                    f"spend: a batch of {len(items)} settlements was refused ({_short(exc)}); storing it in parts",
                )
        half = len(items) // 2
        return await self._store(items[:half], whole=False) + await self._store(items[half:], whole=False)

    async def _alone(self, item: Settle, exc: Exception) -> Outcome:
        """The outcome of one settlement the database refused on its own."""
        if is_data_error(exc) and item.model is not None:
            # The model is only a label on the stored row; the charge matters more.
            try:
                outcome = (await self._store_batch([item._replace(model=None)]))[0]
            except Exception as again:
                if is_unavailable(again):
                    return AGAIN
                exc = again
            else:
                self._log(
                    "warn",
                    f"spend: request {item.request_id} settled without its model, which the database refused ({_short(exc)})",
                )
                return outcome
        if is_data_error(exc):  # its values can never be stored: say so, with the cost
            self._unsettled(item, f"rejected by the database: {_short(exc)}")
            return exc
        # Neither an outage nor its values: a fault of ours or of the database. Owed, and retried.
        if not self._kept_warned:
            self._log("error", f"spend: storing a settlement failed ({exc!r}); it stays owed and is retried")
            self._kept_warned = True
        return AGAIN

    async def _after_close(self, item: Settle) -> str:
        """A settlement that arrives after close(): one attempt, reported loudly if it fails."""
        try:
            result = (await self._store([item]))[0]
        except StoreUnavailable as exc:
            self._unsettled(item, f"arrived after shutdown: {exc}")
            return "unsettled"
        if result is AGAIN:
            self._unsettled(item, "arrived after shutdown and could not be stored")
            return "unsettled"
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, str)
        return result

    def _owe(self, item: Settle, exc: StoreUnavailable | None) -> None:
        if self._closed:  # nobody would retry it any more
            self._unsettled(item, f"not stored at shutdown: {exc or 'refused'}")
            return
        if not self._retry and exc is not None:
            self._log("warn", f"spend: settling failed ({exc}); owed, retried every second until stored")
        self._retry.append(item)

    def _unsettled(self, item: Settle, reason: str) -> None:
        self._emit(
            "spend.unsettled",
            request_id=item.request_id,
            sub=item.sub,
            model=label(item.model),
            cost_micro=item.actual_micro,
            reason=reason,
        )


def label(text: str | None) -> str | None:
    """A client-supplied string as it may go in a log line: bounded, and always encodable."""
    if text is None:
        return None
    return text[:LABEL_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def _short(exc: BaseException) -> str:
    # Driver messages can quote the offending value whole.
    return label(f"{type(exc).__name__}: {describe(exc)}") or ""


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
