"""Spend leases against a real PostgreSQL: admitted from memory, yet the cap holds on every replica.

SpendStore instances on separate pools stand in for replicas, as in
test_spend_store; the background task is off, so each test renews leases and
sweeps when it wants to.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from gateway.spend import leases as spend_leases
from gateway.spend.store import SpendStore
from tests.spend.test_spend_store import (  # noqa: F401  (fixtures used by name)
    CENT,
    NOW,
    Events,
    counter,
    db,
    migrated,
    quiet,
    rid,
    set_limit,
    stores,
    user,
)


async def replica(stores, **kw) -> SpendStore:
    kw.setdefault("background", False)
    kw.setdefault("log", quiet)
    kw.setdefault("emit", Events())
    s = SpendStore(await stores(), clock=lambda: NOW, leases=True, **kw)
    await s.start()
    return s


async def granted(*replicas: SpendStore) -> None:
    """Wait for the leases the replicas asked for to be granted (or refused)."""
    for _ in range(200):
        if not any(r._keeper and r._keeper._granting for r in replicas):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a lease grant never finished")


async def rows(db, who) -> list:
    return await db.fetch(
        "SELECT request_id, state, reserved_micro, settled_micro, lease_in_flight_micro FROM spend_reservations "
        "WHERE sub = $1 ORDER BY created_at, request_id",
        who.sub,
    )


async def test_after_one_database_admission_the_next_ones_are_leased(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 10_000)  # $100
    s = await replica(stores)
    estimate = 10_000
    first = rid()
    assert (await s.reserve(request_id=first, principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    await granted(s)
    lease = [r for r in await rows(db, who) if r["request_id"].startswith(spend_leases.PREFIX)]
    assert len(lease) == 1 and lease[0]["state"] == "open"
    size = spend_leases.MAX_REQUESTS * estimate
    assert lease[0]["reserved_micro"] == size
    assert await counter(db, "user", who.sub) == (0, estimate + size, None)

    # The next requests take their estimate from the lease: no row, no counter change.
    leased = [rid() for _ in range(10)]
    for request in leased:
        admission = await s.reserve(request_id=request, principal=who, model="m", amount_micro=estimate, now=NOW)
        assert admission.admitted and admission.reserved_micro == estimate
        assert {x.period for x in admission.snapshots} == {"daily", "weekly", "monthly"}
    assert len(await rows(db, who)) == 2
    assert await counter(db, "user", who.sub) == (0, estimate + size, None)

    # Settling moves the actual cost out of the lease into spent: spent + reserved stays put.
    for request in leased:
        assert await s.settle(request, 4_000, NOW) == "leased"
    assert await s.settle(leased[0], 4_000, NOW) == "duplicate"
    assert await counter(db, "user", who.sub) == (40_000, estimate + size - 40_000, None)
    assert await s.settle(first, 4_000, NOW) == "settled"
    assert await counter(db, "user", who.sub) == (44_000, size - 40_000, None)
    # Each leased request leaves its own settled row behind, as a direct settlement does.
    assert sum(1 for r in await rows(db, who) if r["state"] == "settled") == 11

    # Closing gives the rest of the lease back.
    await s.close()
    assert await counter(db, "user", who.sub) == (44_000, 0, None)
    states = {r["request_id"]: r["state"] for r in await rows(db, who)}
    assert all(state == "settled" for state in states.values())


async def test_near_the_cap_no_lease_is_taken(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 10)  # 100 000 µUSD: an eighth of it is 1.25 requests
    s = await replica(stores)
    assert (await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=10_000, now=NOW)).admitted
    await granted(s)
    assert [r["request_id"] for r in await rows(db, who) if r["request_id"].startswith("lease:")] == []
    await s.close()


async def test_leases_on_three_replicas_never_pass_the_cap(stores, db):
    """Waves of concurrent requests on three replicas, each settled below or above its estimate,
    until the cap refuses everyone: spent + reserved never passes the cap, and at the end
    what was spent is within a few requests of it (no headroom lost in a lease)."""
    who = user()
    cap = 200 * CENT
    await set_limit(db, "user", who.sub, "daily", 200)
    replicas = [await replica(stores) for _ in range(3)]
    estimate = 2_000
    rng = random.Random(7)
    admitted_total = 0
    for _wave in range(400):
        requests = [(rid(), replicas[i % 3]) for i in range(30)]
        admissions = await asyncio.gather(
            *(r.reserve(request_id=q, principal=who, model="m", amount_micro=estimate, now=NOW) for q, r in requests)
        )
        spent, reserved, _ = await counter(db, "user", who.sub)
        assert spent + reserved <= cap
        admitted = [(q, r) for (q, r), a in zip(requests, admissions, strict=True) if a.admitted]
        admitted_total += len(admitted)
        await asyncio.gather(
            *(r.settle(q, rng.randint(estimate // 2, estimate) if (q, r) in admitted else 0, NOW) for q, r in requests)
        )
        await granted(*replicas)
        for r in replicas:
            await r.renew_leases()
        spent, reserved, _ = await counter(db, "user", who.sub)
        assert spent + reserved <= cap
        if not admitted:
            break
    else:
        raise AssertionError("the cap never closed")
    leased = sum(1 for r in await rows(db, who) if r["request_id"].startswith("lease:"))
    assert leased >= 3  # every replica leased at some point
    for r in replicas:
        await r.close()
    spent, reserved, _ = await counter(db, "user", who.sub)
    assert reserved == 0 and spent <= cap
    assert spent > cap - 4 * estimate  # at most a request's worth unused per replica, plus one
    assert admitted_total > (cap - 4 * estimate) // estimate


async def test_top_ups_take_from_the_lease_then_grow_it_then_close_the_cap(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 1_000)  # $10
    s = await replica(stores)
    estimate = 10_000
    assert (await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    await granted(s)
    lease_id, size = next(
        (r["request_id"], r["reserved_micro"]) for r in await rows(db, who) if r["request_id"].startswith("lease:")
    )
    running = rid()
    assert (await s.reserve(request_id=running, principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    # A step that fits the lease's free part costs nothing in the database.
    assert await s.top_up(running, size - 2 * estimate, NOW) is True
    assert await counter(db, "user", who.sub) == (0, estimate + size, None)
    # The lease is dry: the next step grows it, checked against the cap like any top-up.
    assert await s.top_up(running, 50_000, NOW) is True
    assert await counter(db, "user", who.sub) == (0, estimate + size + 50_000, None)
    lease = await db.fetchrow("SELECT reserved_micro FROM spend_reservations WHERE request_id = $1", lease_id)
    assert lease["reserved_micro"] == size + 50_000
    # A step past the cap is denied, marks the counter exhausted, and retires the lease:
    # the next request goes to the database and is refused there.
    assert await s.top_up(running, 10_000_000, NOW) is False
    assert (await counter(db, "user", who.sub))[2] == 1_000 * CENT
    refused = await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=1, now=NOW)
    assert not refused.admitted
    # The stream settles at what it held; the retired lease is given back at the next renewal.
    held = size - estimate + 50_000
    assert await s.settle(running, held, NOW) == "leased"
    await s.renew_leases()
    spent, reserved, _ = await counter(db, "user", who.sub)
    assert (spent, reserved) == (held, estimate)  # only the first request's own reservation is left
    assert (await db.fetchrow("SELECT state FROM spend_reservations WHERE request_id = $1", lease_id))["state"] == "settled"
    await s.close()


async def test_changed_limits_retire_leases(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 10_000)
    s = await replica(stores)
    estimate = 10_000
    assert (await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    await granted(s)
    await set_limit(db, "user", who.sub, "daily", 1)  # 10 000 µUSD: less than is already reserved
    await s.reload_limits()
    refused = await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=estimate, now=NOW)
    assert not refused.admitted  # judged in the database under the new cap, not from the old lease
    await s.renew_leases()
    assert (await counter(db, "user", who.sub))[1] == estimate  # the lease went back
    await s.close()


async def test_a_dead_replicas_lease_is_charged_what_its_requests_held(stores, db):
    who = user()
    await set_limit(db, "user", who.sub, "daily", 10_000)
    events = Events()
    crashed = await replica(stores, lease_ttl_s=10)
    sweeper = await replica(stores, emit=events)
    estimate = 10_000
    first = rid()
    assert (await crashed.reserve(request_id=first, principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    await crashed.settle(first, estimate, NOW)
    await granted(crashed)
    for _ in range(3):
        assert (await crashed.reserve(request_id=rid(), principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    await crashed.renew_leases()  # writes down that three requests hold 30 000
    lease_id = next(r["request_id"] for r in await rows(db, who) if r["request_id"].startswith("lease:"))
    assert await sweeper.sweep(NOW + timedelta(seconds=5)) == []
    assert await sweeper.sweep(NOW + timedelta(seconds=11)) == [lease_id]
    assert await counter(db, "user", who.sub) == (estimate + 3 * estimate, 0, None)
    assert events.named("spend.lease_expired")[0]["charged_micro"] == 3 * estimate


async def leased_request(stores, db, estimate: int = 10_000):
    """A replica, a person with a $100 daily cap and a granted lease, and one request admitted against it."""
    who = user()
    await set_limit(db, "user", who.sub, "daily", 10_000)
    s = await replica(stores)
    assert (await s.reserve(request_id=rid(), principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    await granted(s)
    request = rid()
    assert (await s.reserve(request_id=request, principal=who, model="m", amount_micro=estimate, now=NOW)).admitted
    lease = next(iter(s._leases))
    assert lease.in_flight == estimate
    return who, s, request, lease


async def test_settle_soon_queues_without_a_task_and_updates_the_lease_once_stored(stores, db):
    who, s, request, lease = await leased_request(stores, db)
    held = lease.held
    s.settle_soon(request, 3_000, NOW)
    assert lease.settling == 3_000 and lease.held == held  # queued, not stored yet
    for _ in range(100):
        if lease.settling == 0:
            break
        await asyncio.sleep(0.01)
    assert (lease.settling, lease.held) == (0, held - 3_000)
    assert (await counter(db, "user", who.sub))[0] == 3_000
    # After close, a late one still gets its one attempt.
    await s.close()
    late = rid()
    s.settle_soon(late, 1_000, NOW, principal=who)
    for _ in range(100):
        if await db.fetchval("SELECT count(*) FROM spend_reservations WHERE request_id = $1", late):
            break
        await asyncio.sleep(0.01)
    assert (await counter(db, "user", who.sub))[0] == 4_000


async def test_a_lease_growth_answered_after_its_stream_settled_stays_free_in_the_lease(stores, db):
    who, s, running, lease = await leased_request(stores, db)
    held = lease.held
    growing = asyncio.create_task(s.top_up(running, held, NOW))  # more than the lease has free
    await asyncio.sleep(0)  # the growth is on its way to the database
    assert await s.settle(running, 4_000, NOW) == "leased"
    assert await growing is True
    assert lease.in_flight == 0  # nothing is left running against the lease
    assert lease.held == held + held - 4_000
    assert running not in s._flights
    await s.close()
    assert (await counter(db, "user", who.sub))[1] == 10_000  # the lease, grown or not, went back
