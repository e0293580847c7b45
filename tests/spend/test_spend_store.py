"""gateway.spend.store against a real PostgreSQL: reserve, top up, settle, expire, fail.

Several SpendStore instances on separate pools stand in for gateway replicas
sharing one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import asyncpg
import pytest

from gateway.config.schema import Store as StoreCfg  # the config section itself
from gateway.db.store import Store, StoreUnavailable
from gateway.spend import caps as sp
from gateway.spend.budget import AllowanceTracker
from gateway.spend.store import SpendStore

NOW = datetime(2026, 11, 23, 19, 0, tzinfo=UTC)
CENT = sp.MICRO_PER_CENT


class Who(NamedTuple):
    sub: str
    email: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()
    sid: str | None = None
    exp: int = 0


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, evt: str, **fields) -> None:
        self.seen.append((evt, fields))

    def named(self, evt: str) -> list[dict]:
        return [f for e, f in self.seen if e == evt]


def quiet(level: str, message: str) -> None:
    pass


@pytest.fixture(scope="module")
async def migrated(pg_url):
    store = await Store.open(StoreCfg(pg_url, max_connections=10), log=quiet)
    await store.migrate()
    await store.close()
    return pg_url


@pytest.fixture
async def stores(migrated):
    opened: list[Store] = []

    async def open_one(**cfg) -> Store:
        store = await Store.open(StoreCfg(migrated, **{"max_connections": 10, **cfg}), log=quiet)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def db(migrated):
    conn = await asyncpg.connect(migrated)
    yield conn
    await conn.close()


async def set_limit(
    conn, scope_type: str, scope_id: str, period: str, cents: int | None, *, pool_cents: int | None = None
) -> str:
    limit_id = "spl_" + uuid.uuid4().hex
    await conn.execute(
        """
        INSERT INTO spend_limits (id, scope_type, scope_id, period, amount_cents, pooled_limit_enabled,
                                  pooled_monthly_credit_limit_cents, created_at, updated_at, created_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 'test')
        ON CONFLICT (scope_type, scope_id, period) DO UPDATE
           SET amount_cents = EXCLUDED.amount_cents, pooled_limit_enabled = EXCLUDED.pooled_limit_enabled,
               pooled_monthly_credit_limit_cents = EXCLUDED.pooled_monthly_credit_limit_cents
        """,
        limit_id,
        scope_type,
        scope_id,
        period,
        cents,
        pool_cents is not None,
        pool_cents,
        NOW,
    )
    await conn.execute("NOTIFY gatehouse_spend_limits")
    return limit_id


async def counter(conn, scope_type: str, scope_id: str, period: str = "daily", now: datetime = NOW):
    start = sp.period_bounds(period, now)[0]
    row = await conn.fetchrow(
        "SELECT spent_micro, reserved_micro, exhausted_cap_micro FROM spend_counters "
        "WHERE scope_type = $1 AND scope_id = $2 AND period = $3 AND period_start = $4",
        scope_type,
        scope_id,
        period,
        start,
    )
    return tuple(row) if row else None


@contextlib.asynccontextmanager
async def counters_locked(url: str, sub: str) -> AsyncIterator[None]:
    """Another session holding ``sub``'s counter rows locked until the block ends."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM spend_counters WHERE scope_type = 'user' AND scope_id = $1 FOR UPDATE", sub)
            yield
    finally:
        await conn.close()


def rid() -> str:
    return "req_" + uuid.uuid4().hex


async def spend_store(stores, **kw) -> SpendStore:
    kw.setdefault("background", False)
    kw.setdefault("log", quiet)
    kw.setdefault("emit", Events())
    s = SpendStore(await stores(), **kw)
    await s.start()
    return s


def user() -> Who:
    return Who("u_" + uuid.uuid4().hex[:10], "a@example.com", "A", ("eng",))


async def test_reserve_settle_and_idempotency(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)  # $1
    s = await spend_store(stores)
    request = rid()
    admission = await s.reserve(request_id=request, principal=who, model="m", amount_micro=300_000, now=NOW)
    assert admission.admitted and admission.blocked is None and admission.reserved_micro == 300_000
    daily = next(x for x in admission.snapshots if x.period == "daily")
    assert (daily.cap_micro, daily.spent_micro, daily.reserved_micro) == (100 * CENT, 0, 300_000)
    assert daily.reset_at == datetime(2026, 11, 24, tzinfo=UTC)
    assert await counter(db, "user", who.sub) == (0, 300_000, None)
    # The uncapped periods are counted too, so a cap added later sees spend to date.
    assert await counter(db, "user", who.sub, "monthly") == (0, 300_000, None)

    assert await s.settle(request, 250_000, NOW) == "settled"
    assert await s.settle(request, 999_999, NOW) == "duplicate"
    assert await counter(db, "user", who.sub) == (250_000, 0, None)
    assert await counter(db, "user", who.sub, "weekly") == (250_000, 0, None)

    # A fresh SpendStore (another replica, no in-memory state) also sees it as settled.
    other = await spend_store(stores)
    assert await other.settle(request, 1, NOW) == "duplicate"
    assert await counter(db, "user", who.sub) == (250_000, 0, None)


async def test_uncapped_people_skip_admission_but_are_charged(stores, db):
    who = user()
    s = await spend_store(stores)
    request = rid()
    admission = await s.reserve(request_id=request, principal=who, model="m", amount_micro=10**9, now=NOW)
    assert admission == (True, None, [], 0, False)
    assert await counter(db, "user", who.sub) is None  # no database call on admission
    assert await s.settle(request, 12_345, NOW) == "direct"
    assert await s.settle(request, 12_345, NOW) == "duplicate"
    assert await counter(db, "user", who.sub) == (12_345, 0, None)
    snaps = await s.snapshots(who, NOW)
    assert [(x.period, x.cap_micro, x.spent_micro) for x in snaps] == [
        ("daily", None, 12_345),
        ("weekly", None, 12_345),
        ("monthly", None, 12_345),
    ]
    assert sp.success_headers(snaps) == {}


async def test_refusal_shape_and_zero_cap(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "weekly", 0)
    events = Events()
    s = await spend_store(stores, emit=events, blocked_message="ask your admin")
    request = rid()
    admission = await s.reserve(request_id=request, principal=who, model="m", amount_micro=1, now=NOW)
    assert not admission.admitted and admission.blocked is not None
    assert admission.blocked.message == "spend limit reached · ask your admin"
    assert admission.blocked.headers["anthropic-ratelimit-unified-overage-period"] == "weekly"
    assert admission.blocked.headers["retry-after"] == str(
        int((datetime(2026, 11, 30, tzinfo=UTC) - NOW).total_seconds())
    )
    assert events.named("spend.blocked")[0]["period"] == "weekly"
    assert await s.settle(request, 0, NOW) == "refused"


async def test_concurrent_reserves_on_three_replicas_never_pass_the_cap(stores, db):
    who = user()
    cap_cents = 100
    estimate = 70_000  # 14 fit into $1 (980 000 µUSD), the 15th would not
    await set_limit(db, "user", who.sub, "daily", cap_cents)
    replicas = [await spend_store(stores) for _ in range(3)]
    requests = [rid() for _ in range(64)]

    async def one(i: int, request: str):
        return await replicas[i % 3].reserve(
            request_id=request, principal=who, model="m", amount_micro=estimate, now=NOW
        )

    admissions = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    admitted = [r for r, a in zip(requests, admissions, strict=True) if a.admitted]
    assert len(admitted) * estimate <= cap_cents * CENT
    assert len(admitted) == cap_cents * CENT // estimate  # no admission was lost either
    assert await counter(db, "user", who.sub) == (0, len(admitted) * estimate, None)
    refused = [a for a in admissions if not a.admitted]
    assert all(
        a.blocked is not None and a.blocked.headers["anthropic-ratelimit-unified-status"] == "rejected"
        for a in refused
    )

    # Exhausted: nothing more is admitted on any replica.
    for replica in replicas:
        late = await replica.reserve(
            request_id=rid(), principal=who, model="m", amount_micro=estimate, now=NOW
        )
        assert not late.admitted

    # Every request settled exactly once even when settles race on every replica.
    owner = {r: replicas[i % 3] for i, r in enumerate(requests)}

    async def settle(request: str, replica: SpendStore) -> str:
        return await replica.settle(request, estimate if request in admitted else 0, NOW)

    outcomes = await asyncio.gather(
        *(settle(r, owner[r]) for r in requests),
        *(settle(r, replicas[(i + 1) % 3]) for i, r in enumerate(requests)),
    )
    settled = [o for o in outcomes if o == "settled"]
    assert len(settled) == len(admitted)
    rows = await db.fetch(
        "SELECT state, settled_micro FROM spend_reservations WHERE request_id = ANY($1::text[])", admitted
    )
    assert len(rows) == len(admitted) and all(r["state"] == "settled" for r in rows)
    assert await counter(db, "user", who.sub) == (len(admitted) * estimate, 0, None)


async def test_top_up_grant_deny_and_exhausted_mark(stores, db):
    who = user()
    limit = await set_limit(db, "user", who.sub, "daily", 100)
    s = await spend_store(stores)
    running = rid()
    assert (
        await s.reserve(request_id=running, principal=who, model="m", amount_micro=600_000, now=NOW)
    ).admitted
    assert await s.top_up(running, 300_000, NOW) is True
    assert await counter(db, "user", who.sub) == (0, 900_000, None)
    assert await s.top_up(running, 200_000, NOW) is False
    assert await counter(db, "user", who.sub) == (0, 900_000, 1_000_000)
    # 100 000 µUSD are free, but the cap is closed to new requests.
    small = await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=50_000, now=NOW)
    assert not small.admitted
    assert next(x for x in small.snapshots if x.period == "daily").blocking
    # The running stream finishes past its grant and is billed what it produced.
    assert await s.settle(running, 1_050_000, NOW) == "settled"
    assert await counter(db, "user", who.sub) == (1_050_000, 0, 1_000_000)
    # Raising the cap reopens admission.
    await set_limit(db, "user", who.sub, "daily", 200)
    await s.reload_limits()
    assert limit  # same row, updated in place
    assert (
        await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=50_000, now=NOW)
    ).admitted


async def test_group_pool_is_shared_by_members(stores, db):
    team = "team-" + uuid.uuid4().hex[:6]
    await set_limit(db, "rbac_group", team, "monthly", None, pool_cents=100)  # $1 shared, no per-seat cap
    s = await spend_store(stores, blocked_message="talk to finance")
    members = [Who("m_" + uuid.uuid4().hex[:8], groups=(team,)) for _ in range(3)]
    results = []
    for m in members:
        results.append(
            await s.reserve(request_id=rid(), principal=m, model="m", amount_micro=400_000, now=NOW)
        )
    assert [a.admitted for a in results] == [True, True, False]
    refusal = results[2].blocked
    assert refusal is not None
    assert refusal.headers["anthropic-ratelimit-unified-overage-scope"] == "group_pool"
    assert refusal.headers["anthropic-ratelimit-unified-overage-period"] == "monthly"
    assert (
        refusal.message
        == "spend limit reached (monthly group pool; resets 2026-12-01 00:00 UTC) · talk to finance"
    )
    assert await counter(db, "group_pool", team, "monthly") == (0, 800_000, None)
    # Each member's own counters only hold their own share.
    assert await counter(db, "user", members[0].sub, "monthly") == (0, 400_000, None)


async def test_reservation_expiry_settles_reserved_amount_once(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    events = Events()
    crashed = await spend_store(stores, reservation_ttl_s=10)
    sweeper = await spend_store(stores, reservation_ttl_s=10, emit=events)
    request = rid()
    assert (
        await crashed.reserve(request_id=request, principal=who, model="m", amount_micro=500_000, now=NOW)
    ).admitted
    assert await sweeper.sweep(NOW + timedelta(seconds=5)) == []
    assert await sweeper.sweep(NOW + timedelta(seconds=11)) == [request]
    assert await sweeper.sweep(NOW + timedelta(seconds=12)) == []  # never twice
    assert await counter(db, "user", who.sub) == (500_000, 0, None)
    audit = await db.fetchrow(
        "SELECT actor, action, after FROM admin_audit WHERE action = 'spend.reservation_expired' AND target = $1",
        "user:" + who.sub,
    )
    assert audit is not None and audit["actor"] == "gatehouse"
    assert events.named("spend.reservation_expired")[0]["charged_micro"] == 500_000
    # The owner was only slow: its settle replaces the expired charge, nothing counted twice.
    assert await crashed.settle(request, 200_000, NOW + timedelta(seconds=20)) == "late"
    assert await crashed.settle(request, 200_000, NOW + timedelta(seconds=21)) == "duplicate"
    assert await counter(db, "user", who.sub) == (200_000, 0, None)
    row = await db.fetchrow(
        "SELECT state, late_settle FROM spend_reservations WHERE request_id = $1", request
    )
    assert tuple(row) == ("settled", True)


async def test_top_ups_push_expiry_forward(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    s = await spend_store(stores, reservation_ttl_s=10)
    request = rid()
    assert (
        await s.reserve(request_id=request, principal=who, model="m", amount_micro=100_000, now=NOW)
    ).admitted
    assert await s.top_up(request, 1_000, NOW + timedelta(seconds=8))
    assert await s.sweep(NOW + timedelta(seconds=12)) == []
    assert await s.sweep(NOW + timedelta(seconds=19)) == [request]


async def test_store_down_raises_store_unavailable(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    store = await stores()
    s = SpendStore(store, log=quiet, emit=Events(), background=False)
    await s.start()
    store.pool.terminate()
    with pytest.raises(StoreUnavailable):
        await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=1, now=NOW)
    with pytest.raises(StoreUnavailable):
        await s.snapshots(who, NOW)
    assert await s.settle(rid(), 5, NOW, principal=who) == "queued"


async def test_timeouts_raise_and_settles_are_retried(stores, db, migrated):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    s = await spend_store(stores, timeout_s=0.3)
    first = rid()
    assert (await s.reserve(request_id=first, principal=who, model="m", amount_micro=1_000, now=NOW)).admitted
    async with counters_locked(migrated, who.sub):
        with pytest.raises(StoreUnavailable, match="timed out"):
            await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=1_000, now=NOW)
        assert await s.settle(first, 700, NOW) == "queued"
    assert await s.retry_settles() == 1
    assert await counter(db, "user", who.sub) is not None
    spent, reserved, _ = await counter(db, "user", who.sub)
    assert spent == 700


async def test_limits_reload_on_notify(stores, db):
    who = user()
    s = await spend_store(stores, background=True)
    try:
        before = s.reloads
        await set_limit(db, "user", who.sub, "monthly", 5000)
        for _ in range(100):
            if any(r.scope_id == who.sub for r in s.limits()):
                break
            await asyncio.sleep(0.05)
        assert any(r.scope_id == who.sub and r.amount_cents == 5000 for r in s.limits())
        assert s.reloads > before
        caps, _ = s.resolve(who.sub, who.groups)
        assert caps["monthly"].amount_micro == 5000 * CENT
    finally:
        await s.close()


async def test_principals_are_recorded_in_batches(stores, db):
    s = await spend_store(stores)
    who = Who("p_" + uuid.uuid4().hex[:8], "p@example.com", "P Person", ("eng", "ops"))
    for _ in range(5):
        s.note_principal(who)
    await s.flush()
    row = await db.fetchrow("SELECT email, name, groups FROM principals WHERE sub = $1", who.sub)
    assert (row["email"], row["name"]) == ("p@example.com", "P Person")
    assert row["groups"] in ('["eng", "ops"]', ["eng", "ops"])
    assert not s._last_seen.take()  # noted five times, written once


async def test_seed_allowances_from_usage_records(stores, db):
    sub = "s_" + uuid.uuid4().hex[:8]
    for i, tokens in enumerate([100, 200, 300, 5000]):
        await db.execute(
            "INSERT INTO usage_records (request_id, ts, sub, model, status, output_tokens, path) "
            "VALUES ($1, $2, $3, 'claude-opus-4-7', 200, $4, '/v1/messages')",
            rid(),
            NOW - timedelta(minutes=10 - i),
            sub,
            tokens,
        )
    s = await spend_store(stores)
    tracker = AllowanceTracker()
    assert await s.seed_allowances(tracker, now=NOW) >= 4
    assert tracker.p95(sub, "claude-opus-4-7") == 5000
    assert tracker.allowance(sub, "claude-opus-4-7", 1000, 4096) == 1000


# --- batched settlement ------------------------------------------------------------


async def transactions(conn, requests: list[str]) -> int:
    """How many transactions wrote these reservation rows (rows written together share their xmin)."""
    return await conn.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM spend_reservations WHERE request_id = ANY($1::text[])",
        requests,
    )


async def test_settlements_share_one_round_trip_per_batch(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100_000)
    s = await spend_store(stores)
    requests = [rid() for _ in range(250)]
    for r in requests:
        assert (await s.reserve(request_id=r, principal=who, model="m", amount_micro=1_000, now=NOW)).admitted
    assert await counter(db, "user", who.sub) == (0, 250_000, None)
    outcomes = await asyncio.gather(*(s.settle(r, 400, NOW) for r in requests))
    assert outcomes == ["settled"] * 250
    # 250 queued at once: two full batches of 100 stored at once, then the last 50.
    assert await transactions(db, requests) == 3
    assert await counter(db, "user", who.sub) == (100_000, 0, None)
    assert await counter(db, "user", who.sub, "monthly") == (100_000, 0, None)


async def test_one_batch_mixes_every_outcome(stores, db):
    capped, free = user(), user()
    await set_limit(db, "user", capped.sub, "daily", 100)
    s = await spend_store(stores)
    crashed = await spend_store(stores, reservation_ttl_s=10)
    live, expired, refused, uncapped = rid(), rid(), rid(), rid()
    assert (
        await s.reserve(request_id=live, principal=capped, model="m", amount_micro=300_000, now=NOW)
    ).admitted
    assert (
        await crashed.reserve(request_id=expired, principal=capped, model="m", amount_micro=500_000, now=NOW)
    ).admitted
    assert not (
        await s.reserve(request_id=refused, principal=capped, model="m", amount_micro=900_000, now=NOW)
    ).admitted
    assert await s.sweep(NOW + timedelta(seconds=11)) == [expired]
    assert await counter(db, "user", capped.sub) == (500_000, 300_000, None)
    assert (await s.reserve(request_id=uncapped, principal=free, model="m", amount_micro=1, now=NOW)).admitted
    outcomes = await asyncio.gather(
        s.settle(live, 250_000, NOW),
        s.settle(expired, 100_000, NOW),  # this replica never held it: the stored row says what to charge
        s.settle(uncapped, 7_000, NOW),
        s.settle(live, 1, NOW),  # a repeat in the same batch: the first one wins
        s.settle(refused, 0, NOW),  # answered without the database
    )
    assert outcomes == ["settled", "late", "direct", "duplicate", "refused"]
    assert await transactions(db, [live, expired, uncapped]) == 1
    # live: 250 000 spent, its 300 000 released; expired: its 500 000 charge becomes 100 000.
    assert await counter(db, "user", capped.sub) == (350_000, 0, None)
    assert await counter(db, "user", capped.sub, "weekly") == (350_000, 0, None)
    assert await counter(db, "user", free.sub) == (7_000, 0, None)
    assert await db.fetchval("SELECT count(*) FROM spend_reservations WHERE request_id = $1", refused) == 0
    rows = await db.fetch(
        "SELECT request_id, state, settled_micro, late_settle FROM spend_reservations WHERE request_id = ANY($1::text[])",
        [live, expired, uncapped],
    )
    assert {r["request_id"]: tuple(r)[1:] for r in rows} == {
        live: ("settled", 250_000, False),
        expired: ("settled", 100_000, True),
        uncapped: ("settled", 7_000, False),
    }
    assert await crashed.settle(expired, 5, NOW) == "duplicate"
    assert await counter(db, "user", capped.sub) == (350_000, 0, None)


async def test_batches_on_replicas_settling_in_opposite_orders_do_not_deadlock(stores, db):
    team = "team-" + uuid.uuid4().hex[:6]
    await set_limit(db, "rbac_group", team, "monthly", None, pool_cents=1_000_000)
    people = [Who("d_" + uuid.uuid4().hex[:8], groups=(team,)) for _ in range(4)]
    for who in people:
        await set_limit(db, "user", who.sub, "daily", 10_000)
    a = await spend_store(stores)
    b = await spend_store(stores)
    for _ in range(3):
        requests = [rid() for _ in range(80)]
        for i, r in enumerate(requests):
            who = people[i % len(people)]
            assert (
                await a.reserve(request_id=r, principal=who, model="m", amount_micro=1_000, now=NOW)
            ).admitted
        outcomes = await asyncio.gather(
            *(a.settle(r, 600, NOW) for r in requests), *(b.settle(r, 600, NOW) for r in reversed(requests))
        )
        assert sorted(outcomes) == ["duplicate"] * 80 + ["settled"] * 80  # none "queued" by a deadlock
    assert await counter(db, "group_pool", team, "monthly") == (3 * 80 * 600, 0, None)
    for who in people:
        assert await counter(db, "user", who.sub) == (3 * 20 * 600, 0, None)


async def test_a_rejected_settlement_does_not_hold_back_its_batch(stores, db):
    who = user()
    events = Events()
    s = await spend_store(stores, emit=events)
    good = [rid() for _ in range(5)]
    bad = "req_\x00bad"  # PostgreSQL text cannot hold NUL: the database refuses this one
    for r in good:
        await s.reserve(request_id=r, principal=who, model="m", amount_micro=1, now=NOW)
    results = await asyncio.gather(
        *(s.settle(r, 100, NOW) for r in good), s.settle(bad, 100, NOW, principal=who), return_exceptions=True
    )
    assert results[:5] == ["direct"] * 5
    assert isinstance(results[5], asyncpg.PostgresError)
    assert [e["request_id"] for e in events.named("spend.unsettled")] == [bad]
    assert await counter(db, "user", who.sub) == (500, 0, None)


async def test_queued_settlements_survive_an_outage_and_are_reported_if_never_stored(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    store = await stores()
    events = Events()
    s = SpendStore(store, log=quiet, emit=events, background=False)
    await s.start()
    request = rid()
    assert (
        await s.reserve(request_id=request, principal=who, model="m", amount_micro=1_000, now=NOW)
    ).admitted
    store.pool.terminate()
    assert await asyncio.gather(s.settle(request, 700, NOW), s.settle(rid(), 5, NOW, principal=who)) == [
        "queued",
        "queued",
    ]
    assert len(s._settlements._retry) == 2
    await s.close()  # still unreachable: loud, not lost
    assert sorted(e["cost_micro"] for e in events.named("spend.unsettled")) == [5, 700]
    assert await counter(db, "user", who.sub) == (0, 1_000, None)  # the reservation stands until it expires


async def test_close_stores_pending_settlements(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    events = Events()
    s = await spend_store(stores, background=True, emit=events)
    requests = [rid() for _ in range(30)]
    for r in requests:
        assert (await s.reserve(request_id=r, principal=who, model="m", amount_micro=1_000, now=NOW)).admitted
    waits = [asyncio.ensure_future(s.settle(r, 10, NOW)) for r in requests]
    await asyncio.sleep(0)  # all queued; the flusher is waiting for a fuller batch
    assert not any(w.done() for w in waits)
    await s.close()
    assert [w.result() for w in waits] == ["settled"] * 30
    assert await counter(db, "user", who.sub) == (300, 0, None)
    assert not events.named("spend.unsettled")


async def test_admissions_share_one_round_trip_per_batch_in_arrival_order(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)  # $1: room for exactly 100 of 10 000 µUSD
    s = await spend_store(stores)
    requests = [rid() for _ in range(150)]
    admissions = await asyncio.gather(
        *(s.reserve(request_id=r, principal=who, model="m", amount_micro=10_000, now=NOW) for r in requests)
    )
    # First come, first served: the first 100 in arrival order, whatever the batch boundaries.
    assert [a.admitted for a in admissions] == [True] * 100 + [False] * 50
    assert await counter(db, "user", who.sub) == (0, 1_000_000, None)
    # 150 queued at once: batches of 64, 64 and 22, one transaction each (refusals leave no row).
    assert await transactions(db, requests) == 2
    # Each admission reports its counters right after its own decision.
    reserved = [next(x for x in a.snapshots if x.period == "daily").reserved_micro for a in admissions[:100]]
    assert reserved == [10_000 * (n + 1) for n in range(100)]
    refusal = admissions[100]
    assert refusal.blocked is not None and refusal.blocked.snapshot.period == "daily"
    assert [x.blocking for x in refusal.snapshots if x.period == "daily"] == [True]
    outcomes = await asyncio.gather(*(s.settle(r, 0, NOW) for r in requests))
    assert outcomes == ["settled"] * 100 + ["refused"] * 50
    assert await counter(db, "user", who.sub) == (0, 0, None)


async def test_one_request_id_twice_in_a_batch_is_reserved_once(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    s = await spend_store(stores)
    request = rid()
    both = await asyncio.gather(
        *(s.reserve(request_id=request, principal=who, model="m", amount_micro=5_000, now=NOW) for _ in range(2))
    )
    assert [a.admitted for a in both] == [True, True]
    assert await counter(db, "user", who.sub) == (0, 5_000, None)
    assert await s.settle(request, 1_000, NOW) == "settled"
    assert await counter(db, "user", who.sub) == (1_000, 0, None)


async def test_an_admission_given_up_on_is_still_released_by_its_settle(stores, db, migrated):
    # B queues behind a batch stuck on a lock, gives up at its deadline, and its batch then
    # goes through after all: the settle that must follow releases what was reserved.
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)
    s = await spend_store(stores, timeout_s=1.0)
    warm = rid()  # creates the counter rows, so the blocker below has something to lock
    assert (await s.reserve(request_id=warm, principal=who, model="m", amount_micro=1, now=NOW)).admitted
    assert await s.settle(warm, 0, NOW) == "settled"
    async with counters_locked(migrated, who.sub):
        a, b = rid(), rid()
        first = asyncio.ensure_future(s.reserve(request_id=a, principal=who, model="m", amount_micro=3_000, now=NOW))
        await asyncio.sleep(0.3)  # A's batch is now waiting on the lock; B queues behind it
        second = asyncio.ensure_future(s.reserve(request_id=b, principal=who, model="m", amount_micro=7_000, now=NOW))
        with pytest.raises(StoreUnavailable):
            await first  # A's batch timed out: nothing of it was stored
        with pytest.raises(StoreUnavailable):
            await second  # B's own deadline, while its batch still waits
    for _ in range(100):
        if await counter(db, "user", who.sub) == (0, 7_000, None):
            break
        await asyncio.sleep(0.05)
    assert await counter(db, "user", who.sub) == (0, 7_000, None)  # B's batch went through
    assert await s.settle(a, 0, NOW) == "direct"
    assert await s.settle(b, 0, NOW) == "settled"
    assert await counter(db, "user", who.sub) == (0, 0, None)


async def test_top_ups_share_a_round_trip_and_are_judged_in_order(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 100)  # $1
    s = await spend_store(stores, reservation_ttl_s=60)
    streams = [rid() for _ in range(6)]
    for r in streams:
        assert (await s.reserve(request_id=r, principal=who, model="m", amount_micro=100_000, now=NOW)).admitted
    finished = streams.pop()
    other = await spend_store(stores)  # another replica settles it: this one still thinks it runs
    assert await other.settle(finished, 50_000, NOW) == "settled"
    later = NOW + timedelta(seconds=30)
    # 450 000 µUSD of room: the first two steps of 200 000 fit, the next three do not; the
    # settled stream has nothing to grow ('closed', not a refusal).
    granted = await asyncio.gather(*(s.top_up(r, 200_000, later) for r in [*streams, finished]))
    assert granted == [True, True, False, False, False, True]
    assert await counter(db, "user", who.sub) == (50_000, 900_000, 1_000_000)  # and now marked exhausted
    rows = await db.fetch(
        "SELECT request_id, reserved_micro, expires_at, xmin::text AS tx FROM spend_reservations"
        " WHERE request_id = ANY($1::text[])",
        streams,
    )
    by_id = {r["request_id"]: r for r in rows}
    assert [by_id[r]["reserved_micro"] for r in streams] == [300_000, 300_000, 100_000, 100_000, 100_000]
    # Every open reservation's expiry moved, granted or not: its owner is alive. One transaction did it all.
    assert {by_id[r]["expires_at"] for r in streams} == {later + timedelta(seconds=60)}
    assert len({r["tx"] for r in rows}) == 1
