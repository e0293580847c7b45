"""gateway.db.store against a real PostgreSQL: boot connect, migrations, readiness, usage rows."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from gateway.config.schema import Store as StoreCfg  # the config section itself
from gateway.db import store as store_mod
from gateway.db.store import Readiness, Store, StoreUnavailable, UsageRow
from gateway.devenv.postgres import Cluster, free_port


class Lines:
    """Collects (level, message) pairs handed to the store's ``log``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append((level, message))

    def matching(self, pattern: str) -> list[tuple[str, str]]:
        return [line for line in self.lines if re.search(pattern, line[1])]


@pytest.fixture(scope="module")
def pg_cluster():
    with Cluster.start() as cluster:
        yield cluster


@pytest.fixture
def db_url(pg_cluster):
    return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(db_url):
    opened = await Store.open(StoreCfg(db_url), log=Lines())
    await opened.migrate()
    yield opened
    await opened.close()


def usage_row(n: int, **changes) -> UsageRow:
    row = UsageRow(
        request_id=f"req_{n:06d}",
        ts=datetime(2026, 11, 24, 12, 0, tzinfo=UTC) + timedelta(seconds=n),
        sub="user-1",
        email="eve@example.com",
        model="claude-sonnet-4-5",
        upstream="anthropic",
        status=200,
        input_tokens=10 + n,
        output_tokens=20,
        cache_creation_input_tokens=3,
        cache_creation_5m=2,
        cache_creation_1h=1,
        cache_read_input_tokens=4,
        estimated_output=n % 2 == 1,
        ms_to_headers=120,
        ms_total=900,
        path="/v1/messages",
        upstream_request_id=f"msg_{n}",
    )
    return msgspec.structs.replace(row, **changes)


async def fetch(url: str, query: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


# --- migrations ---------------------------------------------------------------


async def test_migrate_applies_each_migration_once_and_is_idempotent(db_url):
    log = Lines()
    opened = await Store.open(StoreCfg(db_url), log=log)
    try:
        first = await opened.migrate()
        second = await opened.migrate()
    finally:
        await opened.close()
    migrations = store_mod.load_migrations(store_mod.sql_dir() / "migrations")
    assert first == [m.version for m in migrations] and 1 in first
    assert second == []
    assert log.matching(r"^migration 1 applied")
    recorded = await fetch(db_url, "SELECT version, name, sha256 FROM gatehouse_migrations ORDER BY version")
    assert [tuple(r) for r in recorded] == [(m.version, m.name, m.sha256) for m in migrations]
    index = await fetch(db_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'usage_records_sub_ts'")
    assert "(sub, ts)" in index[0]["indexdef"]


async def test_two_processes_migrating_at_once_both_succeed_and_apply_each_migration_once(pg_cluster, db_url):
    # Hold the migration lock ourselves so that both processes are certainly
    # waiting on it together, then let them race for it.
    holder = await asyncpg.connect(db_url)
    script = textwrap.dedent(
        f"""
        import asyncio, types
        from gateway.db import store
        cfg = types.SimpleNamespace(postgres_url={db_url!r}, username=None, password=None,
                                    max_connections=2, connect_timeout_seconds=5, readiness_grace_seconds=0,
                                    gatehouse=types.SimpleNamespace(listen_url=None, pool_mode="session"))
        print(asyncio.run(store.migrate(cfg)))
        """
    )
    try:
        await holder.fetchval("SELECT pg_advisory_lock($1)", store_mod.MIGRATION_LOCK_KEY)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while (
            await holder.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            < 2
        ):
            assert time.monotonic() < deadline, "the migrating processes never queued on the lock"
            await asyncio.sleep(0.05)
    finally:
        await holder.fetchval("SELECT pg_advisory_unlock($1)", store_mod.MIGRATION_LOCK_KEY)
        await holder.close()
    results = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    stderr = [err.decode() for _, err in results]
    assert all("waiting for migration lock" in err for err in stderr)
    assert sum(err.count("migration 1 applied") for err in stderr) == 1
    # One process applied everything; the other found nothing left to do.
    known = [m.version for m in store_mod.load_migrations(store_mod.sql_dir() / "migrations")]
    assert sorted(out.decode().strip() for out, _ in results) == sorted([str(known), "[]"])
    rows = await fetch(db_url, "SELECT version, count(*) AS n FROM gatehouse_migrations GROUP BY version")
    assert rows and all(r["n"] == 1 for r in rows)


def test_migration_files_are_numbered_uniquely_and_start_with_0001():
    migrations = store_mod.load_migrations(store_mod.sql_dir() / "migrations")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_init"


def test_badly_named_migration_is_refused(tmp_path):
    (tmp_path / "1_init.sql").write_text("SELECT 1")
    with pytest.raises(RuntimeError, match="NNNN_lowercase_name.sql"):
        store_mod.load_migrations(tmp_path)


def test_usage_row_fields_match_the_insert_column_order():
    sql = store_mod.queries()["insert_usage"]
    listed = sql.split("INSERT INTO usage_records (", 1)[1].split(")", 1)[0]
    columns = [c.strip() for c in listed.split(",")]
    assert tuple(columns) == UsageRow.__struct_fields__


# --- boot connect -------------------------------------------------------------


async def test_boot_connect_retries_three_times_then_names_the_setting():
    log = Lines()
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/gatehouse"
    with pytest.raises(StoreUnavailable) as err:
        await Store.open(StoreCfg(url, connect_timeout_seconds=1), log=log, retry_delay_s=0.01)
    assert "store.postgres_url" in str(err.value)
    attempts = log.matching(
        r"^could not connect to PostgreSQL at boot, attempt \d of 3: .+; trying again in 0.01s$"
    )
    assert [level for level, _ in attempts] == ["warn", "warn"]
    final = log.matching(r"^could not connect to PostgreSQL at boot: ")
    assert final[0][0] == "error" and "store.connect_timeout_seconds (now 1s)" in final[0][1]
    assert all("s3cret" not in message for _, message in log.lines)
    assert store_mod.BOOT_RETRY_DELAY_S == 2 and store_mod.BOOT_ATTEMPTS == 3


async def test_boot_connect_succeeds_when_database_comes_up_between_attempts(pg_cluster, db_url):
    pg_cluster.pause()
    log = Lines()
    opening = asyncio.create_task(
        Store.open(StoreCfg(db_url, connect_timeout_seconds=2), log=log, retry_delay_s=1)
    )
    try:
        while not log.matching("attempt 1 of 3"):
            await asyncio.sleep(0.02)
    finally:
        pg_cluster.resume()
    opened = await opening
    assert await opened.ping(2)
    await opened.close()


async def test_a_missing_database_fails_at_once_without_retrying(pg_cluster):
    log = Lines()
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await Store.open(StoreCfg(pg_cluster.url_for("no_such_db")), log=log, retry_delay_s=5)
    assert not log.matching("attempt")


async def test_store_username_and_password_override_the_url(pg_cluster, db_url):
    # The URL's credentials are wrong; the explicit settings must win.
    wrong = db_url.replace("postgresql://postgres@", "postgresql://nobody:nothing@")
    opened = await Store.open(StoreCfg(wrong, username="postgres", password="ignored-by-trust"), log=Lines())
    assert await opened.ping(2)
    await opened.close()


def test_connect_params_read_only_sslmode_from_the_query():
    cfg = StoreCfg(
        "postgres://al%40ice:p%2Fw@db.example:6543/gate%20house?sslmode=require&application_name=x"
    )
    params = store_mod.connect_params(cfg)
    assert (params["host"], params["port"], params["user"], params["password"], params["database"]) == (
        "db.example",
        6543,
        "al@ice",
        "p/w",
        "gate house",
    )
    assert params["ssl"] == "require"
    assert store_mod.ignored_url_options(cfg.postgres_url) == ["application_name"]
    assert "ssl" not in store_mod.connect_params(StoreCfg("postgresql://h/db"))


def test_connect_params_refuse_other_schemes_and_unknown_sslmodes():
    with pytest.raises(ValueError, match="postgres://"):
        store_mod.connect_params(StoreCfg("mysql://h/db"))
    with pytest.raises(ValueError, match="sslmode"):
        store_mod.connect_params(StoreCfg("postgresql://h/db?sslmode=sometimes"))


# --- readiness ----------------------------------------------------------------


def test_readiness_without_grace_follows_each_ping():
    readiness = Readiness(grace_s=0)
    assert readiness.observe(True, now=0) is True
    assert readiness.observe(False, now=1) is False
    assert readiness.observe(True, now=2) is True


def test_readiness_grace_counts_from_the_first_failure():
    readiness = Readiness(grace_s=10)
    assert readiness.observe(True, now=100) is True
    assert readiness.observe(False, now=500) is True  # outage noticed now, however long since the last probe
    assert readiness.observe(False, now=509.9) is True
    assert readiness.observe(False, now=510) is False
    assert readiness.observe(True, now=511) is True
    assert readiness.observe(False, now=600) is True  # a new outage gets a fresh grace


def test_readiness_is_never_granted_to_a_store_that_never_answered():
    readiness = Readiness(grace_s=3600)
    assert readiness.observe(False, now=0) is False


async def test_ready_and_ping_follow_a_real_outage(pg_cluster, db_url):
    log = Lines()
    opened = await Store.open(
        StoreCfg(db_url, connect_timeout_seconds=1, readiness_grace_seconds=30), log=log
    )
    try:
        assert await opened.ready(now=0)
        pg_cluster.pause()
        try:
            started = time.monotonic()
            assert not await opened.ping(1)
            assert time.monotonic() - started < 3
            assert await opened.ready(now=1)  # inside the grace
            assert not await opened.ready(now=31)
            assert log.matching(r"not answering; /readyz stays ready for up to 30s")
        finally:
            pg_cluster.resume()
        assert await opened.ready(now=32)
        assert log.matching("answers again")
    finally:
        await opened.close()


# --- usage rows ---------------------------------------------------------------


async def test_insert_usage_writes_a_batch_and_skips_rows_already_there(store, db_url):
    rows = [usage_row(n) for n in range(500)]
    rows[7] = usage_row(
        7, email=None, model=None, upstream=None, ms_to_headers=None, upstream_request_id=None
    )
    await store.insert_usage(rows)
    await store.insert_usage(rows[:250] + [usage_row(500)])  # a retried batch plus one new row
    stored = await fetch(db_url, "SELECT * FROM usage_records ORDER BY request_id")
    assert len(stored) == 501
    assert [UsageRow(**dict(r)) for r in stored[:500]] == rows


async def test_insert_usage_of_nothing_is_a_no_op(store):
    await store.insert_usage([])


async def test_insert_usage_raises_store_unavailable_during_an_outage_and_recovers(pg_cluster, store, db_url):
    await store.insert_usage([usage_row(1)])
    pg_cluster.pause()
    try:
        with pytest.raises(StoreUnavailable, match="writing usage records"):
            await store.insert_usage([usage_row(2)], timeout=2)
    finally:
        pg_cluster.resume()
    await store.insert_usage([usage_row(2)])
    assert len(await fetch(db_url, "SELECT 1 FROM usage_records")) == 2


async def test_a_bad_row_is_not_mistaken_for_an_outage(store):
    # integer overflow is our data's fault: it must not look like "retry later"
    with pytest.raises(asyncpg.PostgresError):
        await store.insert_usage([usage_row(1, ms_total=2**40)])


async def test_migrate_helper_for_the_cli(db_url):
    cfg = StoreCfg(db_url, max_connections=1)
    assert 1 in await store_mod.migrate(cfg, log=Lines())
    assert await store_mod.migrate(cfg, log=Lines()) == []
