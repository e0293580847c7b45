"""Spend enforcement against PostgreSQL: reserve, top up, settle, expire (edge).

The theory of operation (limits in memory, shared round trips, leases,
top-ups, settling, expiry, timeouts) is in the package docstring,
:mod:`gateway.spend`; this module is the part of it that talks to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from gateway import audit
from gateway.db.coalescing import Coalescer
from gateway.db.listener import Listener, Subscription
from gateway.db.store import (
    Store,
    StoreRefused,
    StoreUnavailable,
    connection,
    describe,
    is_data_error,
    is_unavailable,
    queries,
    unavailable_as,
)
from gateway.db.tasks import cancel_and_wait
from gateway.spend import caps as sp
from gateway.spend.budget import AllowanceTracker
from gateway.spend.identities import LastSeen
from gateway.spend.lease_keeper import LeaseKeeper
from gateway.spend.leases import PREFIX as LEASE_PREFIX
from gateway.spend.leases import TTL_S as LEASE_TTL_S
from gateway.spend.leases import Lease, LeaseBook
from gateway.spend.plans import Key, Plan, Plans, limit_row
from gateway.spend.rows import headroom, keys_laid_out, laid_end_to_end, per_item, room
from gateway.spend.rows import snapshots as rows_to_snapshots
from gateway.spend.settlements import MAX_OWED, Owed, Settle, Settlements, label

CHANNEL = "gatehouse_spend_limits"
OWN_CONNECTION = "gatehouse-spend-limits"  # the LISTEN connection of a store given no listener
RELOAD_EVERY_S = 30.0
TICK_S = 1.0
SWEEP_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0
KEEP_FINISHED = timedelta(days=7)  # idempotency window for late settles
MAX_EXPIRE_PER_SWEEP = 500
RESERVE_BATCH = 64  # admissions per round trip
TOP_UP_BATCH = 64  # top-ups per round trip
CLOSE_FLUSH_S = 10.0  # what close() may spend storing queued settlements
# The database gave up on the transaction itself (deadlock victim, serialization
# failure, lock timeout): the same batch can simply be tried again later.
_TRANSIENT = (
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.LockNotAvailableError,
)
SEED_WINDOW = timedelta(days=14)

Clock = Callable[[], datetime]
Log = Callable[[str, str], None]
Emit = Callable[..., None]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Admission(NamedTuple):
    admitted: bool
    blocked: sp.Blocked | None
    # The person's counters after this decision (all three periods, then pools);
    # empty for someone without any cap (no database call was made).
    snapshots: list[sp.Snapshot]
    reserved_micro: int = 0  # what this request holds (0 when nothing was reserved)
    leased: bool = False  # admitted from a lease in memory, with no database round trip


class _Flight(NamedTuple):
    sub: str
    groups: tuple[str, ...]
    model: str | None
    keys: tuple[Key, ...]
    reserved: bool  # False: nothing was reserved; settle charges the keys directly
    refused: bool = False  # the request was refused: settling it has nothing to do
    lease: Lease | None = None  # admitted against this lease (spend.leases), holding ``held`` of it
    held: int = 0


class _Reserve(NamedTuple):
    request_id: str
    sub: str
    model: str | None
    plan: Plan
    amount_micro: int
    now: datetime
    expires: datetime


class _TopUp(NamedTuple):
    request_id: str
    caps: list[int | None]  # parallel to the reservation's keys
    amount_micro: int
    now: datetime
    expires: datetime


class SpendStore:
    """Spend caps enforced against the shared database. Create, ``await start()``, use, ``await close()``."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = utc_now,
        timeout_s: float = 2.0,
        reservation_ttl_s: float = 1800.0,
        mode: str = "min",
        blocked_message: str | None = None,
        log: Log | None = None,
        emit: Emit | None = None,
        background: bool = True,
        scheduled: bool = False,
        leases: bool = False,
        lease_ttl_s: float = LEASE_TTL_S,
        max_owed: int = MAX_OWED,
        listener: Listener | None = None,
    ) -> None:
        self._store = store
        self._pool = store.pool
        self._clock = clock
        self.timeout_s = timeout_s
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)
        self.blocked_message = blocked_message
        self._log = log or audit.log
        self._emit = emit or audit.emit
        self._background = background
        # Scheduled: the caller runs ``background_round`` (every TICK_S, and at once
        # when ``wake`` is set); the app does, in gateway.app.jobs. Otherwise the
        # store runs its rounds in a task of its own.
        self._scheduled = scheduled
        self._limits = Plans(mode)
        self._flights: dict[str, _Flight] = {}
        self._settlements = Settlements(self._settle_many, log=self._log, emit=self._emit, max_owed=max_owed)
        self._owed_refusals = 0  # requests refused while the owed queue was full (0: it is not)
        # Admissions and top-ups share round trips (see the theory of operation); a batch the
        # database refuses for anything but an outage is halved until the refusal is pinned.
        self._reserves: Coalescer[_Reserve, list[Any]] = Coalescer(
            self._reserve_many, RESERVE_BATCH, "spend-reserve", split=_maybe_one_items
        )
        self._top_ups: Coalescer[_TopUp, str] = Coalescer(
            self._top_up_many, TOP_UP_BATCH, "spend-top-up", split=_maybe_one_items
        )
        self._leases = LeaseBook(uuid.uuid4().hex[:12], lease_ttl_s) if leases else None
        self._keeper = (
            LeaseKeeper(self._leases, self._lease_grant, self._fetch, self._limits, self._clock, timeout_s)
            if self._leases is not None
            else None
        )
        self._last_seen = LastSeen()
        self._reload_wanted = asyncio.Event()
        # Hears limit changes (with ``background``); a store given no listener opens one of its own.
        self._own_listener = listener is None
        self._listener = listener or Listener(store, application_name=OWN_CONNECTION, log=self._log)
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.reloads = 0
        # When each periodic part of the background round last succeeded (loop time).
        self._last_reload = self._last_sweep = self._last_prune = 0.0
        self._warned = False  # the background round failed and has not succeeded since

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Load the limits (StoreUnavailable if that fails: enforcement cannot start blind), then watch."""
        await self.reload_limits()
        if self._background:
            self._subscription = await self._listener.subscribe(
                CHANNEL, self._on_notify, on_connect=self._on_listening
            )
            if self._own_listener:
                await self._listener.start()
            self._last_reload = self._last_sweep = asyncio.get_running_loop().time()
            if not self._scheduled:
                self._task = asyncio.create_task(self._run(), name="spend-store")

    @property
    def wake(self) -> asyncio.Event:
        """Set when the limits changed: the next background round should run now."""
        return self._reload_wanted

    async def close(self) -> None:
        """Stop the background work after storing what is queued (settlements, identities).

        Bounded by ``CLOSE_FLUSH_S``; settlements still unstored then are
        written out as ``spend.unsettled`` audit lines, never dropped in silence.
        """
        self._closing = True
        self._reload_wanted.set()
        await cancel_and_wait(self._task)
        self._task = None
        if self._keeper is not None:
            await self._keeper.stop_asking()
        await self._settlements.close(CLOSE_FLUSH_S)
        if self._keeper is not None:
            try:
                await self._keeper.give_back()
            except StoreUnavailable as exc:
                self._log("warn", f"spend: leases not given back at shutdown ({exc}); they expire unused")
        try:
            await self._flush_principals()
        except StoreUnavailable as exc:
            self._log("warn", f"spend: last-seen identities not stored at shutdown ({exc})")
        subscription, self._subscription = self._subscription, None
        if self._own_listener:
            await self._listener.close()
        elif subscription is not None:
            await subscription.unsubscribe()

    @property
    def owed(self) -> int:
        """Settlements not yet stored (queued for their batch, or waiting for the database)."""
        return self._settlements.owed

    @property
    def max_owed(self) -> int:
        return self._settlements.max_owed

    @max_owed.setter
    def max_owed(self, value: int) -> None:
        self._settlements.max_owed = value

    # -- limits cache ----------------------------------------------------------------
    def limits(self) -> list[sp.LimitRow]:
        return list(self._limits.index.rows)

    @property
    def index(self) -> sp.LimitIndex:
        return self._limits.index

    async def reload_limits(self) -> None:
        rows = await self._fetch("loading spend limits", "spend_limits_load")
        limits = tuple(limit_row(r) for r in rows)
        if limits != self._limits.index.rows:
            if self._leases is not None:
                self._leases.retire()  # leased under caps that no longer hold
            self._limits.replace(limits)
        self.reloads += 1

    def resolve(self, sub: str, groups: Sequence[str]) -> tuple[dict[str, sp.Cap], list[sp.PoolCap]]:
        """The caps and pools that apply to a person now (cached until the next reload)."""
        return self._limits.resolve(sub, groups)

    # -- the request path ------------------------------------------------------------
    async def reserve(
        self, *, request_id: str, principal: Any, model: str | None, amount_micro: int, now: datetime
    ) -> Admission:
        """Admit or refuse a request, reserving ``amount_micro`` against every cap that applies.

        Every call must be followed by exactly one :meth:`settle` for the same
        request id (with 0 when the request never reached an upstream; with
        what it cost when it was served), also when this raised
        StoreUnavailable: a reservation may have been stored just before the
        timeout. Not after :class:`Owed` (raised at once while the owed queue
        is full) or StoreRefused (the database refused the request's values):
        nothing was reserved, and no settlement is owed.
        """
        if self._settlements.full:
            if not self._owed_refusals:
                self._log(
                    "error",
                    f"spend: {self.owed} settlements owed to a database that does not answer; "
                    "refusing every request until it takes some",
                )
            self._owed_refusals += 1
            raise Owed(f"{self.owed} settlements owed to the database")
        if self._owed_refusals:
            self._log(
                "info", f"spend: admitting again ({self._owed_refusals} requests refused while owed was full)"
            )
            self._owed_refusals = 0
        self.note_principal(principal)
        sub, groups = principal.sub, tuple(principal.groups)
        plan = self._limits.plan(sub, groups, now)
        if not plan.capped:
            self._flights[request_id] = _Flight(sub, groups, model, plan.keys, False)
            return Admission(True, None, [])
        amount = max(1, amount_micro)  # a free request still may not pass a closed cap
        if self._leases is not None:
            mono = time.monotonic()
            lease = self._leases.take((sub, groups), plan.keys, amount, mono)
            if lease is not None:
                self._flights[request_id] = _Flight(
                    sub, groups, model, plan.keys, True, lease=lease, held=amount
                )
                if self._leases.wants((sub, groups), amount, mono):  # half spent: ask for the next
                    assert self._keeper is not None
                    self._keeper.ask((sub, groups), plan, amount, room(lease.snapshots), now)
                return Admission(True, None, lease.snapshots, amount, leased=True)
        self._flights[request_id] = _Flight(sub, groups, model, plan.keys, True)
        # Giving up here does not withdraw the request from its batch: the
        # settle() that must follow releases whatever gets reserved.
        try:
            with unavailable_as("reserving spend"):
                async with asyncio.timeout(self.timeout_s):
                    rows = await self._reserves.submit(
                        _Reserve(request_id, sub, model, plan, amount, now, now + self.reservation_ttl)
                    )
        except StoreUnavailable:
            raise
        except Exception as exc:
            # Its batch was halved down to this request alone and refused: nothing was reserved.
            self._flights.pop(request_id, None)
            if not is_data_error(exc):
                raise
            self._log("warn", f"spend: the database refused request {request_id} ({label(describe(exc))})")
            raise StoreRefused("the request could not be metered: a value in it cannot be stored") from exc
        admitted = bool(rows[0][0]) if rows else True
        snapshots = rows_to_snapshots(rows, plan, amount if not admitted else None)
        if admitted:
            if self._keeper is not None:
                self._keeper.ask((sub, groups), plan, amount, headroom(rows, plan.keys, plan.caps), now)
            return Admission(True, None, snapshots, amount)
        # Refused: nothing is held, so the follow-up settle has nothing to release.
        self._flights[request_id] = _Flight(sub, groups, model, plan.keys, False, refused=True)
        refusal = sp.blocked(snapshots, now, self.blocked_message)
        chosen = refusal.snapshot
        self._emit(
            "spend.blocked",
            sub=sub,
            period=chosen.period,
            source=chosen.source
            if chosen.scope == "user"
            else {"type": "group_pool", "rbac_group_id": chosen.group},
            spend_limit_id=chosen.limit_id,
            request_id=request_id,
        )
        return Admission(False, refusal, snapshots, 0)

    async def _reserve_many(self, items: Sequence[_Reserve]) -> list[list[Any]]:
        caps = [cap for item in items for cap in item.plan.caps]
        rows = await self._fetch(
            "reserving spend",
            "spend_reserve_many",
            [i.request_id for i in items],
            [i.sub for i in items],
            [i.model for i in items],
            [i.amount_micro for i in items],
            [i.now for i in items],
            [i.expires for i in items],
            *keys_laid_out([item.plan.keys for item in items]),
            caps,
        )
        return per_item(rows, len(items))

    async def _lease_grant(
        self, lease_id: str, sub: str, plan: Plan, amount: int, now: datetime, expires: datetime
    ) -> list[Any]:
        """Reserve a lease like a request, in the admissions' shared round trips."""
        return await self._reserves.submit(_Reserve(lease_id, sub, None, plan, amount, now, expires))

    async def renew_leases(self) -> None:
        """Renew this replica's leases and give back what retired ones no longer need (one round trip)."""
        if self._keeper is not None:
            await self._keeper.renew()

    async def top_up(self, request_id: str, amount_micro: int, now: datetime) -> bool:
        """Grow a running request's reservation; False when a cap has no room (it is then marked exhausted)."""
        flight = self._flights.get(request_id)
        if flight is None or not flight.reserved or amount_micro <= 0:
            return True
        caps = self._limits.caps_for(flight.sub, flight.groups, flight.keys)
        if all(c is None for c in caps):
            return True
        lease, grow_id, ttl = flight.lease, request_id, self.reservation_ttl
        if lease is not None:
            assert self._leases is not None
            if self._leases.grow(lease, amount_micro):
                self._flights[request_id] = flight._replace(held=flight.held + amount_micro)
                return True
            # The lease has no room for the step: grow the lease itself, checked against the caps.
            grow_id, ttl = lease.id, timedelta(seconds=self._leases.ttl_s)
        with unavailable_as("topping up a reservation"):
            async with asyncio.timeout(self.timeout_s):
                verdict = await self._top_ups.submit(_TopUp(grow_id, caps, amount_micro, now, now + ttl))
        if lease is not None and verdict == "granted":
            lease.held += amount_micro
            running = self._flights.get(request_id)
            if running is not None:  # else it settled meanwhile: the step stays free in the lease
                lease.in_flight += amount_micro
                self._flights[request_id] = running._replace(held=running.held + amount_micro)
        if lease is not None and verdict == "denied":
            assert self._leases is not None
            self._leases.retire(lease.person)
        if verdict == "denied":
            self._emit("spend.exhausted", sub=flight.sub, request_id=request_id, step_micro=amount_micro)
            return False
        return True

    async def _top_up_many(self, items: Sequence[_TopUp]) -> list[str]:
        first, count, caps = laid_end_to_end([item.caps for item in items])
        verdicts = await self._fetchval(
            "topping up reservations",
            "spend_top_up_many",
            [i.request_id for i in items],
            [i.amount_micro for i in items],
            [i.now for i in items],
            [i.expires for i in items],
            first,
            count,
            caps,
        )
        return [str(v) for v in verdicts]

    async def settle(
        self,
        request_id: str,
        actual_micro: int,
        now: datetime,
        *,
        principal: Any | None = None,
        model: str | None = None,
    ) -> str:
        """Charge the actual cost and release the reservation; idempotent per request id.

        The settlement joins the next batch (``spend.settlements``; stored a
        few tens of milliseconds later) and this returns its outcome once the
        batch is stored: "settled", "direct", "late" or "duplicate"; "refused" without any
        database call for a refused request. "queued" means the database
        could not be reached: the settlement stays queued and is retried in
        the background. "unsettled" means the store had already closed and
        the one last attempt failed (reported as a ``spend.unsettled`` audit
        line). ``principal`` lets a request that was admitted without a
        reservation (the store was down and enforcement fails open) still be
        charged.
        """
        prepared = self._settlement(request_id, actual_micro, now, principal, model)
        if prepared is None:
            return "refused"
        item, after = prepared
        try:
            return await self._settlements.submit(item)
        finally:
            if after is not None:
                after("")

    def settle_soon(
        self,
        request_id: str,
        actual_micro: int,
        now: datetime,
        *,
        principal: Any | None = None,
        model: str | None = None,
    ) -> None:
        """:meth:`settle` without waiting for the outcome: the request path's way (no task per request)."""
        prepared = self._settlement(request_id, actual_micro, now, principal, model)
        if prepared is not None:
            self._settlements.enqueue(*prepared)

    def _settlement(
        self, request_id: str, actual_micro: int, now: datetime, principal: Any | None, model: str | None
    ) -> tuple[Settle, Callable[[str], None] | None] | None:
        """The settlement to store for a request, and what to do once it is stored; None: nothing to store."""
        flight = self._flights.pop(request_id, None)
        if flight is not None and flight.refused and actual_micro <= 0:
            return None
        actual_micro = max(0, actual_micro)
        if flight is not None and flight.lease is not None:
            assert self._leases is not None
            book, lease = self._leases, flight.lease
            moved = book.settling(lease, flight.held, actual_micro)
            item = Settle(
                request_id, flight.sub, flight.model, flight.keys, actual_micro, now, lease.id, moved
            )
            return item, lambda _outcome: book.settled(lease, moved)
        if flight is not None:
            sub, model, keys = flight.sub, flight.model, flight.keys
        elif principal is not None:
            sub, keys = principal.sub, self._limits.plan(principal.sub, tuple(principal.groups), now).keys
        else:
            sub, keys = "", ()
        return Settle(request_id, sub, model, keys, actual_micro, now), None

    async def _settle_many(self, items: Sequence[Settle]) -> list[str]:
        outcomes = await self._fetchval(
            "settling spend",
            "spend_settle_many",
            [i.request_id for i in items],
            [i.sub for i in items],
            [i.model for i in items],
            [i.actual_micro for i in items],
            [i.at for i in items],
            *keys_laid_out([item.keys for item in items]),
            [i.lease for i in items],
            [i.move for i in items],
        )
        return [str(o) for o in outcomes]

    async def snapshots(self, principal: Any, now: datetime) -> list[sp.Snapshot]:
        """The person's counters now: their three periods (capped or not), then their pools."""
        plan = self._limits.plan(principal.sub, tuple(principal.groups), now)
        rows = await self._fetch("reading spend", "spend_counters_read", *plan.arrays)
        return rows_to_snapshots(rows, plan, None)

    # -- principals --------------------------------------------------------------------
    def note_principal(self, principal: Any) -> None:
        """Remember a person's last-seen identity; written later, at most every few minutes. No I/O."""
        self._last_seen.note(principal)

    async def _flush_principals(self) -> None:
        due = self._last_seen.take()
        if not due:
            return
        try:
            await self._store_principals(due)
        except StoreUnavailable:
            self._last_seen.give_back(due)
            raise

    async def _store_principals(self, due: dict[str, Any]) -> None:
        """Upsert ``due`` in one statement; halved when refused, so one person's values fail only them."""
        subs = list(due)
        try:
            await self._execute(
                "recording identities",
                "spend_principals_upsert",
                subs,
                [due[s][0] for s in subs],
                [due[s][1] for s in subs],
                [json.dumps(list(due[s][2])) for s in subs],
                self._clock(),
            )
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(subs) == 1:  # a name the database cannot hold: their spend is kept, their label not
                self._log(
                    "warn",
                    f"spend: last-seen identity of {label(subs[0])!r} not stored ({label(describe(exc))})",
                )
                return
            half = len(subs) // 2
            await self._store_principals({s: due[s] for s in subs[:half]})
            await self._store_principals({s: due[s] for s in subs[half:]})

    # -- allowances --------------------------------------------------------------------
    async def seed_allowances(self, tracker: AllowanceTracker, *, now: datetime | None = None) -> int:
        """Load recent output-token counts into ``tracker``; returns how many samples were read."""
        since = (now or self._clock()) - SEED_WINDOW
        rows = await self._fetch("seeding output allowances", "spend_allowance_seed", since, tracker.window)
        tracker.seed((r["sub"], r["model"], r["output_tokens"]) for r in rows)
        return len(rows)

    # -- admin helpers -----------------------------------------------------------------
    async def period_spend(self, subs: Sequence[str], now: datetime) -> dict[tuple[str, str], int]:
        """Settled spend (µUSD) per (sub, period) for the periods holding ``now``; absent = 0."""
        starts = sp.period_starts(now)
        rows = await self._fetch(
            "reading period spend",
            "spend_period_spend",
            list(subs),
            list(sp.PERIODS),
            [starts[p] for p in sp.PERIODS],
        )
        return {(r["sub"], r["period"]): r["spent_micro"] for r in rows}

    # -- background work ---------------------------------------------------------------
    async def sweep(self, now: datetime | None = None) -> list[str]:
        """Expire overdue reservations (any replica's); returns their request ids."""
        now = now or self._clock()
        expired: list[str] = []
        for _ in range(MAX_EXPIRE_PER_SWEEP):
            rows = await self._fetch("expiring reservations", "spend_expire_one", now)
            if not rows:
                break
            r = rows[0]
            expired.append(r["e_request_id"])
            self._flights.pop(r["e_request_id"], None)
            lease = self._leases.get(r["e_request_id"]) if self._leases is not None else None
            if lease is not None and self._leases is not None:
                self._leases.forget(lease)  # ours, yet not renewed in time: admit nothing more from it
            self._emit(
                "spend.lease_expired"
                if r["e_request_id"].startswith(LEASE_PREFIX)
                else "spend.reservation_expired",
                request_id=r["e_request_id"],
                sub=r["e_sub"],
                model=r["e_model"],
                charged_micro=r["e_reserved"],
            )
        return expired

    async def retry_settles(self) -> int:
        """Store the settlements an outage left queued; returns how many were stored."""
        return await self._settlements.retry()

    async def flush(self) -> None:
        await self.retry_settles()
        await self._flush_principals()

    async def prune(self, now: datetime | None = None) -> None:
        await self._execute(
            "pruning reservations", "spend_prune_reservations", (now or self._clock()) - KEEP_FINISHED
        )

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._reload_wanted.wait(), TICK_S)
            except TimeoutError:
                pass
            await self.background_round()

    async def background_round(self) -> None:
        """One round of background work; due every ``TICK_S``, and at once when ``wake`` is set.

        Reloads the limits (every ``RELOAD_EVERY_S`` or when they changed, or
        when the listener reconnected), stores owed settlements and
        last-seen identities, renews leases, expires reservations (every
        ``SWEEP_EVERY_S``) and prunes finished ones (every ``PRUNE_EVERY_S``).
        An outage ends the round with one warning until a round succeeds again.
        """
        if self._closing:
            return
        try:
            t = asyncio.get_running_loop().time()
            if self._reload_wanted.is_set() or t - self._last_reload >= RELOAD_EVERY_S:
                self._reload_wanted.clear()
                await self.reload_limits()
                self._last_reload = t
            await self.flush()
            await self.renew_leases()
            if t - self._last_sweep >= SWEEP_EVERY_S:
                await self.sweep()
                self._last_sweep = t
            if t - self._last_prune >= PRUNE_EVERY_S:
                await self.prune()
                self._last_prune = t
            if self._warned:
                self._log("info", "spend: background work reaches the database again")
            self._warned = False
        except (StoreUnavailable, asyncpg.PostgresError) as exc:
            if not self._warned:
                self._log("warn", f"spend: background work failed ({exc}); retrying")
            self._warned = True

    async def _on_listening(self, conn: asyncpg.Connection) -> None:
        # The listener (re)connected: a change committed before LISTEN took effect
        # was missed, so the next round reloads once more. The 30 s reload runs
        # regardless, also while the listener cannot connect.
        self._reload_wanted.set()

    def _on_notify(self, payload: str) -> None:
        self._reload_wanted.set()

    # -- database calls ----------------------------------------------------------------
    async def _fetch(self, what: str, query: str, *args: Any) -> list[Any]:
        with _unavailable(what):
            async with asyncio.timeout(self.timeout_s), connection(self._pool, self.timeout_s) as conn:
                return list(await conn.fetch(queries()[query], *args))

    async def _fetchval(self, what: str, query: str, *args: Any) -> Any:
        with _unavailable(what):
            async with asyncio.timeout(self.timeout_s), connection(self._pool, self.timeout_s) as conn:
                return await conn.fetchval(queries()[query], *args)

    async def _execute(self, what: str, query: str, *args: Any) -> None:
        with _unavailable(what):
            async with asyncio.timeout(self.timeout_s), connection(self._pool, self.timeout_s) as conn:
                await conn.execute(queries()[query], *args)


def _maybe_one_items(exc: Exception) -> bool:
    """Whether a batch's failure may be one item's doing (anything but an outage): halve it."""
    return not is_unavailable(exc)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """StoreUnavailable for an unreachable database, and for a transaction the database gave
    up on (nothing of it was done, so it can simply be tried again later)."""
    try:
        with unavailable_as(what):
            yield
    except _TRANSIENT as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc
