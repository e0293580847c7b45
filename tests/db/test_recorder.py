"""gateway.db.recorder against a real PostgreSQL: batching, drain, outages, overflow."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from gateway.config.schema import Store as StoreCfg  # the config section itself
from gateway.db.recorder import Recorder
from gateway.db.store import Store, StoreUnavailable, UsageRow
from gateway.devenv.postgres import Cluster


class Lines(list):
    def __call__(self, level: str, message: str) -> None:
        self.append((level, message))


@pytest.fixture(scope="module")
def pg_cluster():
    with Cluster.start() as cluster:
        yield cluster


@pytest.fixture
def db_url(pg_cluster):
    return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(db_url):
    opened = await Store.open(StoreCfg(db_url, connect_timeout_seconds=2), log=Lines())
    await opened.migrate()
    yield opened
    await opened.close()


def usage_row(n: int, **changes) -> UsageRow:
    row = UsageRow(
        request_id=f"req_{n:06d}",
        ts=datetime(2026, 11, 24, 12, 0, tzinfo=UTC) + timedelta(milliseconds=n),
        sub=f"user-{n % 3}",
        model="claude-sonnet-4-5",
        upstream="anthropic",
        status=200,
        input_tokens=n,
        output_tokens=2 * n,
        path="/v1/messages",
    )
    return msgspec.structs.replace(row, **changes)


async def stored_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [
            r["request_id"]
            for r in await conn.fetch("SELECT request_id FROM usage_records ORDER BY request_id")
        ]
    finally:
        await conn.close()


def unstored_events(err: str) -> list[dict]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in events if e["evt"] == "usage.unstored"]


async def eventually(check, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def test_full_batches_are_written_without_waiting_for_the_interval(store, db_url):
    recorder = Recorder(store, batch_rows=50, flush_interval_s=60)
    await recorder.start()
    for n in range(120):
        recorder.submit(usage_row(n))

    async def two_batches_written():
        return recorder.stored == 100

    await eventually(two_batches_written)
    assert recorder.pending == 20  # the partial batch waits for its interval
    assert await recorder.drain(5)
    assert await stored_ids(db_url) == [f"req_{n:06d}" for n in range(120)]


async def test_a_partial_batch_is_written_after_the_flush_interval(store, db_url):
    recorder = Recorder(store, flush_interval_s=0.05)
    await recorder.start()
    for n in range(3):
        recorder.submit(usage_row(n))

    async def written():
        return len(await stored_ids(db_url)) == 3

    await eventually(written)
    assert await recorder.drain(5)


async def test_drain_writes_everything_queued(store, db_url, capfd):
    recorder = Recorder(store)
    await recorder.start()
    for n in range(1000):
        recorder.submit(usage_row(n))
    assert await recorder.drain(10)
    assert recorder.pending == 0 and recorder.stored == 1000
    assert len(await stored_ids(db_url)) == 1000
    assert unstored_events(capfd.readouterr().err) == []


async def test_drain_of_a_recorder_that_was_never_started_still_writes(store, db_url):
    recorder = Recorder(store)
    recorder.submit(usage_row(1))
    assert await recorder.drain(5)
    assert await stored_ids(db_url) == ["req_000001"]


async def test_rows_wait_out_an_outage_and_are_stored_exactly_once(pg_cluster, store, db_url, capfd):
    log = Lines()
    recorder = Recorder(
        store, batch_rows=40, flush_interval_s=0.02, retry_initial_s=0.05, retry_max_s=0.2, log=log
    )
    await recorder.start()
    for n in range(100):
        recorder.submit(usage_row(n))

    async def first_rows_stored():
        return recorder.stored == 100

    await eventually(first_rows_stored)
    pg_cluster.pause()
    try:
        for n in range(100, 300):
            recorder.submit(usage_row(n))

        async def failing():
            return any("will keep retrying" in message for _, message in log)

        await eventually(failing)
        await asyncio.sleep(0.5)  # several more failed attempts
        assert recorder.pending > 0
    finally:
        pg_cluster.resume()
    assert await recorder.drain(30)
    assert await stored_ids(db_url) == [f"req_{n:06d}" for n in range(300)]
    assert any("stored again" in message for _, message in log)
    assert unstored_events(capfd.readouterr().err) == []


class LosesFirstReply:
    """A sink that stores the first batch for real, then reports a timeout anyway:
    what the recorder sees when the database commits but the reply is lost."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    async def insert_usage(self, rows, timeout=10.0):
        self.calls += 1
        await self.store.insert_usage(rows, timeout=timeout)
        if self.calls == 1:
            raise StoreUnavailable("writing usage records: timed out")


async def test_a_retry_after_a_lost_reply_does_not_double_count(store, db_url):
    sink = LosesFirstReply(store)
    recorder = Recorder(sink, retry_initial_s=0.01)
    for n in range(10):
        recorder.submit(usage_row(n))
    assert await recorder.drain(5)
    assert sink.calls == 2
    assert await stored_ids(db_url) == [f"req_{n:06d}" for n in range(10)]


async def test_overflow_goes_to_stderr_as_whole_audit_lines(store, capfd):
    recorder = Recorder(store, max_pending_rows=5)  # not started: nothing leaves the queue
    for n in range(8):
        recorder.submit(usage_row(n))
    err = capfd.readouterr().err
    events = unstored_events(err)
    assert [e["usage"]["request_id"] for e in events] == ["req_000005", "req_000006", "req_000007"]
    assert all(e["reason"].startswith("usage buffer full") for e in events)
    assert events[0]["usage"]["ts"] == "2026-11-24T12:00:00.005000Z"
    assert recorder.unstored == 3 and recorder.pending == 5
    assert await recorder.drain(5)


async def test_rows_left_when_drain_times_out_go_to_stderr(pg_cluster, store, capfd):
    recorder = Recorder(store, retry_initial_s=0.05, retry_max_s=0.1, log=Lines())
    await recorder.start()
    pg_cluster.pause()
    try:
        for n in range(5):
            recorder.submit(usage_row(n))
        assert not await recorder.drain(0.5)
    finally:
        pg_cluster.resume()
    events = unstored_events(capfd.readouterr().err)
    assert sorted(e["usage"]["request_id"] for e in events) == [f"req_{n:06d}" for n in range(5)]
    assert all(e["reason"] == "not stored before shutdown" for e in events)
    recorder.submit(usage_row(9))  # after drain: still loud, never silent
    assert unstored_events(capfd.readouterr().err)[0]["reason"] == "recorder already stopped"


async def test_a_row_the_database_rejects_does_not_take_its_batch_down(store, db_url, capfd):
    log = Lines()
    recorder = Recorder(store, log=log)
    for n in range(10):
        recorder.submit(usage_row(n, ms_total=2**40 if n == 4 else 100))
    assert await recorder.drain(5)
    assert await stored_ids(db_url) == [f"req_{n:06d}" for n in range(10) if n != 4]
    events = unstored_events(capfd.readouterr().err)
    assert [e["usage"]["request_id"] for e in events] == ["req_000004"]
    assert events[0]["reason"].startswith("rejected by the database")
    assert any(level == "error" and "rejected" in message for level, message in log)


def test_submit_never_awaits():
    assert not asyncio.iscoroutinefunction(Recorder.submit)


async def test_drain_does_not_sleep_through_a_long_backoff(pg_cluster, store, db_url):
    recorder = Recorder(store, retry_initial_s=60, retry_max_s=60, log=Lines())
    await recorder.start()
    pg_cluster.pause()
    try:
        recorder.submit(usage_row(1))
        await asyncio.sleep(0.5)  # first attempt fails; the recorder now waits 30-60 s
    finally:
        pg_cluster.resume()
    assert await asyncio.wait_for(recorder.drain(20), 10)
    assert await stored_ids(db_url) == ["req_000001"]
