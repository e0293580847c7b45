"""Batched, loss-resistant writing of usage rows.

Theory of operation: request handlers call :meth:`Recorder.submit`, which only
appends to an in-memory queue. One background task takes up to
``batch_rows`` rows from the front of the queue, at most ``flush_interval_s``
after the first of them arrived, and writes them with a single statement.

Rules:

* Rows leave the queue only once the database has them. While the database is
  unreachable the same batch is retried with capped exponential backoff.
  The insert skips rows already stored, so a retry after a reply that got lost
  cannot count a request twice.
* The queue is bounded. Rows that do not fit, rows the database rejects as
  invalid, and rows still waiting when :meth:`drain` runs out of time are
  written to stderr as ``usage.unstored`` audit events (one ``os.write`` per
  line): loud, and recoverable from the logs, never dropped in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from gateway import audit
from gateway.client_text import LOG_CHARS, capped
from gateway.db.store import StoreUnavailable, UsageRow, describe
from gateway.db.tasks import cancel_and_wait

BATCH_ROWS = 200
FLUSH_INTERVAL_S = 0.25
# About 50 MB of rows at worst: minutes of traffic for one process during an
# outage, and well short of hurting the process if the outage lasts longer.
MAX_PENDING_ROWS = 100_000
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0
# While shutting down, waiting half a minute between attempts would waste the
# drain budget.
RETRY_MAX_CLOSING_S = 1.0
WRITE_TIMEOUT_S = 10.0


class UsageSink(Protocol):
    async def insert_usage(self, rows: list[UsageRow], timeout: float = ...) -> None: ...


class Recorder:
    def __init__(
        self,
        store: UsageSink,
        *,
        batch_rows: int = BATCH_ROWS,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_pending_rows: int = MAX_PENDING_ROWS,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        log: Callable[[str, str], None] = audit.log,
        emit: Callable[..., None] = audit.emit,
    ) -> None:
        self._store = store
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._max_pending_rows = max_pending_rows
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._write_timeout_s = write_timeout_s
        self._log = log
        self._emit = emit
        self._pending: deque[UsageRow] = deque()
        # Set when the writer should look at the queue again: the first row of
        # a batch arrived, a batch filled up, or drain() began.
        self._wake = asyncio.Event()
        self._closing = False
        self._draining = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.stored = 0
        self.unstored = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, row: UsageRow) -> None:
        """Queue ``row`` for writing. Never blocks, never raises for a full queue."""
        row = _capped(row)
        if self._closed:
            self._spill([row], "recorder already stopped")
            return
        if len(self._pending) >= self._max_pending_rows:
            self._spill([row], "usage buffer full (database unreachable?)")
            return
        self._pending.append(row)
        if len(self._pending) == 1 or len(self._pending) >= self._batch_rows:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def drain(self, timeout_s: float) -> bool:
        """Write everything queued, then stop. True when every row reached the database.

        Rows still queued after ``timeout_s`` go to stderr as audit events. A
        batch in flight at that moment may also have reached the database; the
        audit line then duplicates a stored row rather than losing one.
        """
        self._closing = True
        self._wake.set()
        self._draining.set()
        await self.start()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            await cancel_and_wait(self._task)
        finally:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._spill(left, "not stored before shutdown")
        return not left

    async def _run(self) -> None:
        while self._pending or not self._closing:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self._batch_rows and not self._closing:
                # Give a batch one interval to fill up before writing it.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            if not await self._write_front():
                await self._back_off()

    async def _write_front(self) -> bool:
        """Try to store the oldest batch; False when the database is unreachable."""
        batch = list(itertools.islice(self._pending, self._batch_rows))
        try:
            await self._store.insert_usage(batch, timeout=self._write_timeout_s)
        except StoreUnavailable as exc:
            self._note_failure(exc, len(batch))
            return False
        except Exception as exc:  # the database refused the data itself: a bug, not an outage
            self._log("error", f"usage batch rejected ({describe(exc)}); writing its rows one at a time")
            try:
                await self._write_one_by_one(batch)
            except StoreUnavailable as unreachable:
                self._note_failure(unreachable, len(batch))
                return False
        else:
            self.stored += len(batch)
        for _ in batch:
            self._pending.popleft()
        self._note_success()
        return True

    async def _write_one_by_one(self, batch: list[UsageRow]) -> None:
        # Only on the rare rejected batch: find the bad rows so that one of them
        # does not take 199 good ones down with it.
        for row in batch:
            try:
                await self._store.insert_usage([row], timeout=self._write_timeout_s)
            except StoreUnavailable:
                raise
            except Exception as exc:
                self._spill([row], f"rejected by the database: {describe(exc)}")
            else:
                self.stored += 1

    async def _back_off(self) -> None:
        ceiling = RETRY_MAX_CLOSING_S if self._closing else self._retry_max_s
        delay = min(ceiling, self._retry_initial_s * 2 ** min(self._failures - 1, 30))
        # Jitter keeps a fleet of workers from retrying in lock step.
        delay *= random.uniform(0.5, 1.0)
        if self._closing:
            await asyncio.sleep(delay)
            return
        # A long wait is cut short when drain() begins, so shutdown does not
        # spend its budget asleep.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._draining.wait(), delay)

    def _note_failure(self, exc: StoreUnavailable, rows: int) -> None:
        self._failures += 1
        if self._failures == 1:
            self._log("warn", f"could not store {rows} usage records, will keep retrying: {exc}")

    def _note_success(self) -> None:
        if self._failures:
            self._log("info", f"usage records stored again after {self._failures} failed attempts")
            self._failures = 0

    def _spill(self, rows: list[UsageRow], reason: str) -> None:
        for row in rows:
            self._emit("usage.unstored", reason=reason, usage=_plain(row))
        self.unstored += len(rows)


# Columns holding what the client sent (or named in its request); kept to what
# a log line keeps, so one request never writes a megabyte-long row.
_CLIENT_COLUMNS = ("model", "email", "path", "upstream_request_id")


def _capped(row: UsageRow) -> UsageRow:
    cut = {
        name: capped(value)
        for name in _CLIENT_COLUMNS
        if (value := getattr(row, name)) is not None and len(value) > LOG_CHARS
    }
    return msgspec.structs.replace(row, **cut) if cut else row


def _plain(row: UsageRow) -> dict[str, Any]:
    return msgspec.to_builtins(row)
