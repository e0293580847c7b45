"""The spend store when the database fails or refuses (issue 12), against a real PostgreSQL.

* One request's values never fail the requests batched with it: the batch is
  halved until the refusal is pinned on that one request, which alone is refused.
* A settlement is never dropped: a connection-level failure of any kind (a lost
  reply, a killed connection, the driver losing track of one) keeps it owed and
  retried, and storing it twice counts it once.
* The owed queue is bounded by refusing admissions, never by dropping charges.

Outages are real: a loopback proxy in front of PostgreSQL that a test cuts or
mutes. Where a test needs the driver's rarest failure (``InternalClientError``,
seen when PostgreSQL was killed mid-statement), it is raised at the seam where
the settlements meet the database, and everything else is real.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.config.schema import Store as StoreCfg
from gateway.db.store import Store, StoreRefused, StoreUnavailable, connection, is_data_error, is_unavailable
from gateway.spend.settlements import Owed, Settlements
from gateway.spend.store import SpendStore
from tests.netfaults import TcpProxy
from tests.spend.test_spend_store import (  # noqa: F401  (fixtures)
    NOW,
    Events,
    counter,
    db,
    migrated,
    quiet,
    rid,
    set_limit,
    spend_store,
    stores,
    user,
)

POISONS = {"nul": "claude-sonnet-4-6\x00x", "lone surrogate": "claude-sonnet-4-6-\ud800"}


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        self.lines.append((level, message))

    def has(self, text: str) -> bool:
        return any(text in m for _, m in self.lines)


class MutableProxy(TcpProxy):
    """A loopback path to PostgreSQL that can also swallow the server's replies: statements
    still arrive and commit, their answers never come back (a reply lost after the commit)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.mute = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and self.mute:
                        continue
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


@pytest.fixture
async def proxied(migrated):
    """``await proxied(**spend_store_kwargs)`` → (SpendStore reaching PostgreSQL through a proxy, proxy)."""
    opened: list[tuple[SpendStore, Store, TcpProxy]] = []

    async def make(connections: int = 10, **kw) -> tuple[SpendStore, MutableProxy]:
        url = urlsplit(migrated)
        proxy = MutableProxy(url.hostname or "127.0.0.1", url.port or 5432)
        await proxy.start()
        through = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
        store = await Store.open(StoreCfg(through, max_connections=connections, connect_timeout_seconds=2), log=quiet)
        kw.setdefault("background", False)
        kw.setdefault("log", quiet)
        kw.setdefault("emit", Events())
        s = SpendStore(store, **kw)
        await s.start()
        opened.append((s, store, proxy))
        return s, proxy

    yield make
    for _, store, proxy in opened:
        if proxy._server is None or not proxy._server.is_serving():
            await proxy.start()
        proxy.mute = False
        await store.close()
        await proxy.stop()


# ---------------------------------------------------------------- one request's values


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
async def test_a_poisoned_admission_is_refused_alone_and_its_batch_mates_are_admitted(stores, db, poison):
    people = [user() for _ in range(8)]
    for who in people:
        await set_limit(db, "user", who.sub, "daily", 100)
    s = await spend_store(stores)
    requests = [(rid(), people[n % 8], "claude-sonnet-4-6") for n in range(63)]
    requests.insert(30, (rid(), people[0], poison))
    results = await asyncio.gather(
        *(s.reserve(request_id=r, principal=who, model=m, amount_micro=1_000, now=NOW) for r, who, m in requests),
        return_exceptions=True,
    )
    refused = results.pop(30)
    assert isinstance(refused, StoreRefused)
    assert "a value in it cannot be stored" in str(refused) and "\x00" not in str(refused)
    assert all(not isinstance(r, BaseException) and r.admitted for r in results), results
    # Nothing of the poisoned one was reserved; each batch-mate holds its 1 000.
    for n, who in enumerate(people):
        mine = sum(1 for _, w, m in requests if w is who and m != poison)
        assert await counter(db, "user", who.sub) == (0, 1_000 * mine, None), n
    # Every batch-mate settles; the poisoned one has nothing to settle.
    outcomes = await asyncio.gather(*(s.settle(r, 10, NOW) for r, _, m in requests if m != poison))
    assert outcomes == ["settled"] * 63


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
async def test_a_settlement_whose_model_cannot_be_stored_is_charged_without_it(stores, db, poison):
    who = user()
    log, events = Log(), Events()
    s = await spend_store(stores, log=log, emit=events)
    good = [rid() for _ in range(20)]
    bad = rid()
    # Uncapped, as a request admitted fail-open also is: settled by a direct charge.
    for r in good:
        await s.reserve(request_id=r, principal=who, model="claude-sonnet-4-6", amount_micro=1, now=NOW)
    await s.reserve(request_id=bad, principal=who, model=poison, amount_micro=1, now=NOW)
    outcomes = await asyncio.gather(*(s.settle(r, 100, NOW) for r in [*good[:10], bad, *good[10:]]))
    assert outcomes == ["direct"] * 21
    assert await counter(db, "user", who.sub) == (2_100, 0, None)  # charged, every one of them
    assert await db.fetchval("SELECT model FROM spend_reservations WHERE request_id = $1", bad) is None
    assert not events.named("spend.unsettled")
    assert log.has(f"request {bad} settled without its model")


async def test_a_settlement_that_can_never_be_stored_is_reported_with_its_cost_and_holds_back_nothing(
    stores, db
):
    who = user()
    events = Events()
    s = await spend_store(stores, emit=events)
    good = [rid() for _ in range(9)]
    bad = "req_\ud800"  # no model to leave out: its id itself cannot be stored
    outcomes = await asyncio.gather(
        *(s.settle(r, 100, NOW, principal=who) for r in good),
        s.settle(bad, 250, NOW, principal=who),
        return_exceptions=True,
    )
    assert outcomes[:9] == ["direct"] * 9 and is_data_error(outcomes[9])
    assert [(e["request_id"], e["cost_micro"]) for e in events.named("spend.unsettled")] == [(bad, 250)]
    assert await counter(db, "user", who.sub) == (900, 0, None)
    assert not s._settlements._retry  # not retried forever: it can never be stored


# ---------------------------------------------------------------- connection-level failures


def test_every_connection_level_failure_is_unavailable_and_no_value_error_is():
    lost = asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (11) is in progress")
    assert is_unavailable(lost)
    assert is_unavailable(asyncpg.exceptions.ProtocolError("unexpected message"))
    assert is_unavailable(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"))
    assert is_unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert is_unavailable(asyncpg.exceptions.CrashShutdownError("server crashed"))
    assert is_unavailable(ConnectionResetError()) and is_unavailable(TimeoutError())
    # The driver's own DataError is an InterfaceError too, yet no outage: retrying cannot help.
    encode = asyncpg.exceptions._base.DataError("invalid input for query argument $1")
    assert not is_unavailable(encode) and is_data_error(encode)
    assert not is_unavailable(asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"))


async def test_a_connection_the_driver_lost_track_of_is_closed_not_pooled(migrated):
    store = await Store.open(StoreCfg(migrated, max_connections=1), log=quiet)
    try:
        with pytest.raises(asyncpg.exceptions.InternalClientError):
            async with connection(store.pool) as conn:
                lost = conn.get_server_pid()
                raise asyncpg.exceptions.InternalClientError("cannot switch to state 12")
        async with connection(store.pool) as fresh:  # the pool's one slot opens a new one
            assert fresh.get_server_pid() != lost and await fresh.fetchval("SELECT 1") == 1
    finally:
        await store.close()


async def test_an_internal_client_error_while_settling_is_retried_not_dropped(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    events = Events()
    s = await spend_store(stores, emit=events)
    requests = [rid() for _ in range(9)]
    for r in requests:
        assert (await s.reserve(request_id=r, principal=who, model="m", amount_micro=1_000, now=NOW)).admitted
    calls = 0

    async def killed_once(items):
        nonlocal calls
        calls += 1
        if calls == 1:  # what asyncpg raised in the issue when PostgreSQL was killed mid-batch
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (11) is in progress")
        return await s._settle_many(items)

    settlements = Settlements(killed_once, log=quiet, emit=events)
    for r in requests:
        item, _ = s._settlement(r, 700, NOW, None, None)
        settlements.enqueue(item)
    for _ in range(100):
        if len(settlements._retry) == 9:
            break
        await asyncio.sleep(0.02)
    assert len(settlements._retry) == 9  # owed, not dropped
    assert not events.named("spend.unsettled")
    assert await settlements.retry() == 9
    assert await counter(db, "user", who.sub) == (6_300, 0, None)
    await settlements.close(1.0)
    assert not events.named("spend.unsettled")


async def test_a_settlement_batch_refused_for_no_fault_of_its_values_stays_owed(stores, db):
    # Say a replica runs before the migration its SQL needs: neither an outage nor bad values.
    # Nothing is reported unsettled or dropped; the batch is retried and lands later.
    who = user()
    events, log = Events(), Log()
    s = await spend_store(stores, emit=events)
    calls = 0

    async def not_yet(items):
        nonlocal calls
        calls += 1
        if calls <= 3:  # the batch, then both halves
            raise asyncpg.exceptions.UndefinedFunctionError("function spend_settle_many(...) does not exist")
        return await s._settle_many(items)

    settlements = Settlements(not_yet, log=log, emit=events)
    requests = [rid() for _ in range(2)]
    outcomes = []
    for r in requests:
        await s.reserve(request_id=r, principal=who, model="m", amount_micro=1, now=NOW)
        item, _ = s._settlement(r, 400, NOW, None, None)
        outcomes.append(asyncio.ensure_future(settlements.submit(item)))
    assert await asyncio.gather(*outcomes) == ["queued", "queued"]
    assert len(settlements._retry) == 2 and not events.named("spend.unsettled")
    assert log.has("it stays owed and is retried")
    assert await settlements.retry() == 2
    assert await counter(db, "user", who.sub) == (800, 0, None)
    await settlements.close(1.0)


async def test_a_settlement_whose_reply_is_lost_is_retried_and_counted_once(proxied, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    # One connection, on which the settle statement is already prepared: muted, it is still run.
    s, proxy = await proxied(connections=1, timeout_s=0.5)
    assert await s.settle(rid(), 0, NOW, principal=who) == "direct"
    request = rid()
    assert (await s.reserve(request_id=request, principal=who, model="m", amount_micro=1_000, now=NOW)).admitted
    proxy.mute = True  # the settlement reaches PostgreSQL and commits; its answer is lost
    assert await asyncio.wait_for(s.settle(request, 700, NOW), 10) == "queued"
    assert await counter(db, "user", who.sub) == (700, 0, None)  # it did land
    proxy.mute = False
    assert await asyncio.wait_for(s.retry_settles(), 10) == 1  # sent again: "duplicate"
    assert await counter(db, "user", who.sub) == (700, 0, None)
    row = await db.fetchrow("SELECT state, settled_micro FROM spend_reservations WHERE request_id = $1", request)
    assert tuple(row) == ("settled", 700)


async def test_settlements_owed_through_a_cut_connection_land_once_the_database_is_back(proxied, db):
    who, free = user(), user()
    await set_limit(db, "user", who.sub, "daily", 100)
    s, proxy = await proxied(timeout_s=0.5)
    reserved = [rid() for _ in range(5)]
    for r in reserved:
        assert (await s.reserve(request_id=r, principal=who, model="m", amount_micro=1_000, now=NOW)).admitted
    await proxy.stop()  # every connection cut, none accepted
    unjudged = rid()  # admitted fail-open: its reservation never happened
    with pytest.raises(StoreUnavailable):
        await s.reserve(request_id=unjudged, principal=who, model="m", amount_micro=1_000, now=NOW)
    uncapped = rid()
    assert (await s.reserve(request_id=uncapped, principal=free, model="m", amount_micro=1, now=NOW)).admitted
    outcomes = await asyncio.gather(
        *(s.settle(r, 300, NOW) for r in [*reserved, unjudged, uncapped]), return_exceptions=True
    )
    assert outcomes == ["queued"] * 7
    with pytest.raises(StoreUnavailable):
        await s.retry_settles()  # still down: still owed, in order
    assert s.owed == 7
    await proxy.start()
    assert await s.retry_settles() == 7
    assert await counter(db, "user", who.sub) == (1_800, 0, None)
    assert await counter(db, "user", free.sub) == (300, 0, None)
    assert s.owed == 0


# ---------------------------------------------------------------- the bound


async def test_a_full_owed_queue_refuses_admissions_until_the_database_takes_some(proxied, db):
    capped, free = user(), user()
    await set_limit(db, "user", capped.sub, "daily", 100)
    log = Log()
    s, proxy = await proxied(timeout_s=0.3, max_owed=3, log=log)
    await proxy.stop()
    for _ in range(3):
        r = rid()
        assert (await s.reserve(request_id=r, principal=free, model="m", amount_micro=1, now=NOW)).admitted
        s.settle_soon(r, 100, NOW)
    assert s.owed == 3
    for _ in range(100):  # the flusher meets the outage: the three wait in the retry queue
        if len(s._settlements._retry) == 3:
            break
        await asyncio.sleep(0.05)
    # Full: nobody is admitted, capped or not, leased or not; nothing more becomes owed.
    for who in (free, capped):
        with pytest.raises(Owed):
            await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=1, now=NOW)
    assert s.owed == 3
    assert log.has("3 settlements owed to a database that does not answer")
    await proxy.start()
    assert await s.retry_settles() == 3
    assert (await s.reserve(request_id=rid(), principal=capped, model="m", amount_micro=1, now=NOW)).admitted
    assert log.has("admitting again (2 requests refused while owed was full)")
    assert await counter(db, "user", free.sub) == (300, 0, None)


async def test_shutdown_counts_what_is_still_owed_in_the_log(proxied):
    log, events = Log(), Events()
    s, proxy = await proxied(timeout_s=0.3, log=log, emit=events)
    await proxy.stop()
    who = user()
    for _ in range(4):
        r = rid()
        await s.reserve(request_id=r, principal=who, model="m", amount_micro=1, now=NOW)
        s.settle_soon(r, 100, NOW)
    await s.close()
    assert log.has("4 of 4 queued settlements not stored at shutdown")
    assert len(events.named("spend.unsettled")) == 4
