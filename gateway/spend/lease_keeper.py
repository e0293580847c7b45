"""Spend leases, the database half (edge): asking for them, renewing them, giving them back.

:mod:`gateway.spend.leases` holds the rules and the local book; the spend
store admits against the book on the request path and calls this for the rest:

* ``ask`` after an admission, when the person has no lease with room and the
  headroom last seen allows one: the grant is a reservation like a request's
  (same cap check, same shared round trips), sent from a background task so no
  request waits for it.
* ``renew`` every tick from the store's background task: one round trip for
  all of this replica's leases (new expiry, what their requests hold, retired
  ones shrunk or closed), and the counters read back refresh each lease's
  snapshots; a person's leases retire when one of their caps is marked exhausted.
* ``stop_asking`` and ``give_back`` at shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from gateway.db.store import StoreUnavailable
from gateway.spend.leases import Lease, LeaseBook, size
from gateway.spend.plans import Plan, Plans
from gateway.spend.rows import exhausted, per_item, snapshots

# (lease id, sub, plan, amount, now, expires) -> the admission's counter rows, led by its verdict
Grant = Callable[[str, str, Plan, int, datetime, datetime], Awaitable[list[Any]]]
Fetch = Callable[..., Awaitable[list[Any]]]


class LeaseKeeper:
    def __init__(
        self,
        book: LeaseBook,
        grant: Grant,
        fetch: Fetch,
        plans: Plans,
        clock: Callable[[], datetime],
        timeout_s: float,
    ) -> None:
        self._book = book
        self._grant_call = grant
        self._fetch = fetch
        self._plans = plans
        self._clock = clock
        self._timeout_s = timeout_s
        self._granting: set[asyncio.Task[None]] = set()
        self._stopped = False

    def ask(self, person: Any, plan: Plan, amount: int, room: int | None, now: datetime) -> None:
        """Ask for a lease in the background if ``person`` needs one and ``room`` (the least left
        under any of their caps, as last seen) allows one."""
        if self._stopped or room is None or not self._book.wants(person, amount, time.monotonic()):
            return
        grant = size(room, amount)
        if not grant:
            return
        self._book.asking.add(person)
        task = asyncio.create_task(self._grant(person, plan, grant, now), name="spend-lease")
        self._granting.add(task)
        task.add_done_callback(self._granting.discard)

    async def _grant(self, person: Any, plan: Plan, amount: int, now: datetime) -> None:
        book = self._book
        lease_id = book.next_id()
        try:
            async with asyncio.timeout(self._timeout_s):
                rows = await self._grant_call(
                    lease_id, person[0], plan, amount, now, now + timedelta(seconds=book.ttl_s)
                )
        except (StoreUnavailable, TimeoutError):
            return  # a lease stored anyway expires unused, charged nothing
        finally:
            book.asking.discard(person)
        if rows and rows[0][0]:  # granted, even while stopping: give_back returns it with the others
            lease = Lease(
                lease_id, person, plan.keys, plan.caps, amount, time.monotonic(), snapshots(rows, plan, None)
            )
            # Limits reloaded while it was granted: its caps may be gone, so it only goes back.
            lease.retired = self._plans.plan(person[0], person[1], now) is not plan
            book.add(lease)

    async def renew(self) -> None:
        """Renew every lease and give back what retired ones no longer need, in one round trip."""
        book = self._book
        if not len(book):
            return
        due = book.renewals(time.monotonic())
        now = self._clock()
        rows = await self._fetch(
            "renewing spend leases",
            "spend_lease_renew",
            [lease.id for lease, _ in due],
            [lease.in_flight for lease, _ in due],
            [keep for _, keep in due],
            now,
            now + timedelta(seconds=book.ttl_s),
        )
        done = time.monotonic()
        for (lease, keep), found in zip(due, per_item(rows, len(due)), strict=True):
            still_open = bool(found and found[0][0])
            book.renewed(lease, keep, still_open, done)
            if not still_open:
                continue
            sub, groups = lease.person
            plan = self._plans.plan(sub, groups, now)
            if plan.keys == lease.keys:
                lease.snapshots = snapshots(found, plan, None)
            if exhausted(found, lease.keys, lease.caps):
                book.retire(lease.person)  # a stream was refused a top-up elsewhere: the cap is closed
            # (No room left beside the leases is no reason to retire them: they hold that room.)

    async def stop_asking(self) -> None:
        """No new leases. Grants on their way are waited for (each bounded by the store
        timeout), not cancelled: one cancelled after the database stored it would hold its
        headroom until it expired, while a finished one goes back in :meth:`give_back`."""
        self._stopped = True
        if self._granting:
            await asyncio.gather(*list(self._granting), return_exceptions=True)

    async def give_back(self) -> None:
        """Retire every lease and give back all that no running request holds."""
        self._book.retire()
        await self.renew()
