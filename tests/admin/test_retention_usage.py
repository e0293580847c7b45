"""Usage retention against a real PostgreSQL: old raw rows are rolled up by day, then deleted.

Rows are written through the store's own batch insert (what the recorder
uses); the sweep's clock is a value the test passes, so "400 days ago" is
exact and nothing waits.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway.admin import retention
from gateway.app.jobs import JOBS
from gateway.db.store import Store, UsageRow
from tests.harness import Clock, make_config, start_gateway, upstream_block

NOW = datetime(2027, 3, 10, 15, 30, tzinfo=UTC)
TOTALS = "SELECT coalesce(sum(requests), 0) AS requests, coalesce(sum(input_tokens), 0) AS input, " \
         "coalesce(sum(output_tokens), 0) AS output FROM usage_daily"  # fmt: skip


def config(pg_url: str, retention_yaml: str = ""):
    extra = f"gatehouse:\n  retention:\n{retention_yaml}" if retention_yaml else ""
    return make_config(pg_url, [upstream_block("http://127.0.0.1:9")], extra)


@pytest.fixture(scope="module")
async def store(pg_url: str):
    opened = await Store.open(config(pg_url).store)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def db(pg_url: str, store: Store):
    conn = await asyncpg.connect(pg_url)
    await conn.execute("TRUNCATE usage_records, usage_daily")
    try:
        yield conn
    finally:
        await conn.close()


_serial = iter(range(10**9))


def row(ts: datetime, sub: str = "ann", **kw) -> UsageRow:
    fields = dict(
        email=f"{sub}@example.com", model="claude-sonnet-4-5", upstream="anthropic", status=200,
        input_tokens=10, output_tokens=20, cache_read_input_tokens=3, path="/v1/messages",
    )  # fmt: skip
    fields.update(kw)
    return UsageRow(request_id=f"req-{next(_serial)}", ts=ts, sub=sub, **fields)


def days_ago(days: int, hour: int = 12) -> datetime:
    return (NOW - timedelta(days=days)).replace(hour=hour, minute=0)


async def test_rows_before_the_cutoff_are_summed_per_day_then_deleted(store, db, pg_url):
    cfg = config(pg_url)  # usage_records_days: 400 by default
    old_day = days_ago(401)
    await store.insert_usage([
        row(old_day.replace(hour=1)),
        row(old_day.replace(hour=23), output_tokens=5, estimated_output=True),
        row(old_day, status=529, input_tokens=7, output_tokens=0),
        row(old_day, model=None, upstream=None, input_tokens=1, output_tokens=1),
        row(old_day, sub="bob", model="claude-haiku-4-5"),
        row(days_ago(500)),
        row(days_ago(400, hour=0)),  # today and 400 whole days are kept
        row(days_ago(3)),
    ])  # fmt: skip

    assert await retention.roll_up_usage(store, cfg, NOW) == {"usage_records": 6}

    kept = await db.fetch("SELECT ts FROM usage_records ORDER BY ts")
    assert [r["ts"] for r in kept] == [days_ago(400, hour=0), days_ago(3)]
    daily = {
        (r["day"], r["sub"], r["model"], r["upstream"]): r
        for r in await db.fetch("SELECT * FROM usage_daily")
    }
    assert set(daily) == {
        (old_day.date(), "ann", "claude-sonnet-4-5", "anthropic"),
        (old_day.date(), "ann", "", ""),
        (old_day.date(), "bob", "claude-haiku-4-5", "anthropic"),
        (days_ago(500).date(), "ann", "claude-sonnet-4-5", "anthropic"),
    }
    ann = daily[(old_day.date(), "ann", "claude-sonnet-4-5", "anthropic")]
    assert (ann["requests"], ann["failed_requests"], ann["estimated_requests"]) == (3, 1, 1)
    assert (ann["input_tokens"], ann["output_tokens"], ann["cache_read_input_tokens"]) == (27, 25, 9)
    assert daily[(old_day.date(), "ann", "", "")]["requests"] == 1
    assert "email" not in ann  # the rollup never holds the email

    # Again: nothing left to move, sums unchanged.
    assert await retention.roll_up_usage(store, cfg, NOW) == {"usage_records": 0}
    assert ann == (await db.fetch(
        "SELECT * FROM usage_daily WHERE day = $1 AND sub = 'ann' AND model = 'claude-sonnet-4-5'", old_day.date()
    ))[0]  # fmt: skip

    # A row written late for a day already rolled up is added to it on the next sweep.
    await store.insert_usage([row(old_day, input_tokens=100)])
    assert await retention.roll_up_usage(store, cfg, NOW) == {"usage_records": 1}
    again = await db.fetchrow(
        "SELECT requests, input_tokens FROM usage_daily WHERE day = $1 AND sub = 'ann' AND model = 'claude-sonnet-4-5'",
        old_day.date(),
    )
    assert (again["requests"], again["input_tokens"]) == (4, 127)


async def test_concurrent_sweeps_on_two_replicas_count_every_row_once(store, db, pg_url):
    cfg = config(pg_url, "    usage_records_days: 30\n")
    rows = [
        row(days_ago(31 + i % 5, hour=i % 24), sub=f"p{i % 7}", input_tokens=i, output_tokens=2 * i)
        for i in range(1500)
    ]
    for start in range(0, len(rows), 500):
        await store.insert_usage(rows[start : start + 500])
    other = await Store.open(cfg.store)  # a second replica's pool
    try:
        results = await asyncio.gather(
            retention.roll_up_usage(store, cfg, NOW, batch_rows=53),
            retention.roll_up_usage(other, cfg, NOW, batch_rows=41),
            retention.roll_up_usage(store, cfg, NOW, batch_rows=97),
        )
    finally:
        await other.close()
    assert sum(r["usage_records"] for r in results) == 1500
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 0
    totals = await db.fetchrow(TOTALS)
    assert (totals["requests"], totals["input"], totals["output"]) == (
        1500, sum(range(1500)), 2 * sum(range(1500))
    )  # fmt: skip
    # Sums per person are exact too, not just the grand total.
    p3 = await db.fetchval("SELECT sum(input_tokens) FROM usage_daily WHERE sub = 'p3'")
    assert p3 == sum(i for i in range(1500) if i % 7 == 3)


async def test_a_sweep_out_of_time_stops_between_batches_and_the_next_goes_on(store, db, pg_url):
    cfg = config(pg_url, "    usage_records_days: 30\n")
    await store.insert_usage([row(days_ago(40)) for _ in range(25)])
    first = await retention.roll_up_usage(store, cfg, NOW, batch_rows=10, budget_s=0)
    assert first == {"usage_records": 10}  # one batch, then the budget is spent
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 15
    assert await retention.roll_up_usage(store, cfg, NOW, batch_rows=10) == {"usage_records": 15}
    assert (await db.fetchrow(TOTALS))["requests"] == 25


async def test_usage_daily_days_ages_the_rollups_out(store, db, pg_url):
    cfg = config(pg_url, "    usage_records_days: 30\n    usage_daily_days: 365\n")
    await store.insert_usage([row(days_ago(366)), row(days_ago(365, hour=0)), row(days_ago(40))])
    removed = await retention.roll_up_usage(store, cfg, NOW)
    # Rolled up first, then the rollup of the day past 365 days is deleted.
    assert removed == {"usage_records": 3, "usage_daily": 1}
    days = [r["day"] for r in await db.fetch("SELECT day FROM usage_daily ORDER BY day")]
    assert days == [days_ago(365).date(), days_ago(40).date()]


def test_the_cutoff_is_midnight_utc():
    assert retention.usage_cutoff(NOW, 400) == datetime(2026, 2, 3, tzinfo=UTC)
    assert retention.usage_cutoff(NOW.astimezone(), 1) == datetime(2027, 3, 9, tzinfo=UTC)


async def test_a_gateway_without_admin_runs_the_sweep(pg_url, db, store):
    clock = Clock()
    cfg = config(pg_url, "    usage_records_days: 2\n")
    assert cfg.admin is None
    now = datetime.fromtimestamp(clock(), UTC)
    await store.insert_usage([row(now - timedelta(days=5)), row(now)])
    gw = await start_gateway(cfg, clock=clock)
    try:
        job = {j.name: j for j in gw.app[JOBS].jobs}["retention"]
        assert job.every_s == retention.PRUNE_EVERY_S
        await job.run()  # one round of the job the app runs (its timing: tests/app/test_jobs.py)
    finally:
        await gw.close()
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 1
    assert (await db.fetchrow(TOTALS))["requests"] == 1
