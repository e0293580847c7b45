"""Leases: a replica's share of a person's cap headroom, admitted against in memory (pure: no I/O).

Why: admitting a capped request otherwise costs a database round trip before
the upstream call (shared by whoever arrives meanwhile, but still a round trip
on every request's path). A person who keeps sending requests (Claude Code's
agent loop) can instead be admitted from memory against headroom this replica
reserved for them in advance.

How the cap still holds: a lease is an ordinary open reservation row (request
id ``lease:…``) over the person's counters, granted by the same
``spend_reserve_many`` that admits single requests, so it only exists if the
counters had room for it. Requests admitted against it take their estimate
from its ``free`` part; top-ups take from it too, or grow it in the database
with the usual cap check. Settling a leased request charges its actual cost
and moves the same amount out of the lease's reservation, in one transaction,
so spent + reserved on the counters never grows past what was granted (only
a reply that costs more than its request held can pass it, as with any
reservation). A replica therefore never admits more than the database granted it.

Fairness: a lease is at most ``1/SHARE`` of the headroom the counters showed,
and only taken while that is at least ``MIN_REQUESTS`` requests' worth, so
near a cap leases shrink and then stop, and admission goes back to the
database request by request, where every replica competes on equal terms.
A person may hold two leases for a moment (the next is asked for when the
current one is half spent): the older is used up first, then retired, and
its crumbs (less than a request) go back at the next renewal. An unused
lease is given back after ``IDLE_S``.

Liveness: every tick the owner renews its leases (new expiry, the amount its
running requests hold) and gives back what retired leases no longer need. A
replica that dies leaves its leases to the expiry sweep, which charges what
their requests held at the last renewal and releases the rest. A lease that
could not be renewed for half its time to live admits nothing more, well
before it could expire under a live owner.

:class:`LeaseBook` is the local half: which lease a person's next request may
use, and what each lease holds. :mod:`gateway.spend.lease_keeper` does the
database half.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PREFIX = "lease:"
SHARE = 8  # a lease takes at most 1/SHARE of a cap's headroom
MIN_REQUESTS = 4  # ... and only when that is worth at least this many requests
MAX_REQUESTS = 256  # ... and never more than this many (one person may run many requests at once)
IDLE_S = 15.0  # an unused lease is given back after this long
TTL_S = 60.0  # by default, a lease row whose owner stopped renewing it expires after this long


class Lease:
    """One lease row as its owner sees it (µUSD)."""

    __slots__ = (
        "id",
        "person",
        "granted",
        "keys",
        "caps",
        "held",
        "in_flight",
        "settling",
        "retired",
        "used_at",
        "renewed_at",
        "snapshots",
    )

    def __init__(
        self,
        lease_id: str,
        person: Any,
        keys: tuple[Any, ...],
        caps: list[int | None],
        held: int,
        now: float,
        snapshots: list[Any],
    ) -> None:
        self.id = lease_id
        self.person = person  # (sub, groups)
        self.keys = keys
        self.caps = caps
        self.granted = held
        self.held = held  # what its row reserves on the counters, as far as this replica knows
        self.in_flight = 0  # held by requests admitted against it and still running
        self.settling = 0  # actual costs of settlements submitted but not yet stored
        self.retired = False  # admits nothing more; given back once nothing depends on it
        self.used_at = now
        self.renewed_at = now
        self.snapshots = snapshots  # the counters as last read, for the reply headers

    @property
    def free(self) -> int:
        return self.held - self.in_flight - self.settling

    def keep(self) -> int:
        """What the row must still reserve: running requests and settlements on their way."""
        return self.in_flight + self.settling


def size(headroom: int, amount: int) -> int:
    """How much to lease given a cap's headroom and a typical request's estimate; 0: do not lease."""
    want = min(MAX_REQUESTS * amount, headroom // SHARE)
    return want if want >= MIN_REQUESTS * amount else 0


class LeaseBook:
    """This replica's leases: those each person's requests draw on, and retired ones still owed."""

    def __init__(self, replica: str, ttl_s: float = TTL_S) -> None:
        self._replica = replica
        self.ttl_s = ttl_s
        self._usable_s = ttl_s / 2  # admit from a lease only while it was renewed this recently
        self._serial = 0
        # Per person, the leases their requests may draw on, oldest first: the next one is granted
        # while the last still has room, and the older is used up before the newer is touched.
        self._current: dict[Any, list[Lease]] = {}
        self._all: dict[str, Lease] = {}
        self.asking: set[Any] = set()  # people whose lease is being granted right now

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._all.values()))

    def get(self, lease_id: str) -> Lease | None:
        return self._all.get(lease_id)

    def next_id(self) -> str:
        self._serial += 1
        return f"{PREFIX}{self._replica}:{self._serial}"

    def take(self, person: Any, keys: tuple[Any, ...], amount: int, now: float) -> Lease | None:
        """The lease a request of ``person`` is admitted against (``amount`` now held), or None."""
        leases = self._current.get(person)
        if not leases:
            return None
        for lease in leases:
            if (
                lease.retired
                or lease.keys != keys  # the day turned, or the limits changed which counters apply
                or now - lease.renewed_at > self._usable_s
            ):
                continue
            if lease.free >= amount:
                lease.in_flight += amount
                lease.used_at = now
                return lease
            if lease is not leases[-1]:
                lease.retired = True  # used up, and a newer one is there: its crumbs go back
        return None

    def wants(self, person: Any, amount: int, now: float) -> bool:
        """Whether ``person`` needs a new lease: none is being granted, and theirs is missing,
        retired, stale or half spent. Asking at half, not when it is dry, keeps their requests
        on the lease while the next one is granted (a busy person spends one in seconds)."""
        if person in self.asking:
            return False
        usable = [
            lease
            for lease in self._current.get(person, ())
            if not lease.retired and now - lease.renewed_at <= self._usable_s
        ]
        if not usable:
            return True
        return sum(lease.free for lease in usable) < max(amount * MIN_REQUESTS, usable[-1].granted // 2)

    def add(self, lease: Lease) -> None:
        """A granted lease joins the person's, after those that still have room."""
        leases = [old for old in self._current.get(lease.person, ()) if not old.retired]
        self._current[lease.person] = [*leases, lease]
        self._all[lease.id] = lease

    def grow(self, lease: Lease, amount: int) -> bool:
        """Move ``amount`` of the lease's free part to a running request; False when it has no room."""
        if lease.retired or lease.free < amount:
            return False
        lease.in_flight += amount
        return True

    def settling(self, lease: Lease, held: int, actual: int) -> int:
        """A request that held ``held`` settles at ``actual``: returns what its settlement moves out of the lease."""
        lease.in_flight -= held
        moved = min(actual, max(0, lease.held - lease.keep()))
        lease.settling += moved
        return moved

    def settled(self, lease: Lease, moved: int) -> None:
        """The settlement is stored (or left for the retry queue): the row reserves ``moved`` less."""
        lease.settling -= moved
        lease.held -= moved

    def retire(self, person: Any | None = None) -> None:
        """Stop admitting against a person's leases (or everyone's): limits changed, or a cap ran out."""
        for lease in self._all.values():
            if person is None or lease.person == person:
                lease.retired = True

    def renewals(self, now: float) -> list[tuple[Lease, int | None]]:
        """Every lease with what its row should keep: None (all of it: still in use) or an amount to shrink to."""
        out: list[tuple[Lease, int | None]] = []
        for lease in self._all.values():
            if not lease.retired and now - lease.used_at > IDLE_S:
                lease.retired = True
            out.append((lease, lease.keep() if lease.retired else None))
        return out

    def renewed(self, lease: Lease, kept: int | None, still_open: bool, now: float) -> None:
        """Apply a renewal's result: a lease the database no longer holds open is forgotten."""
        if kept is not None:
            lease.held = min(lease.held, kept)
        if not still_open or (lease.retired and lease.keep() == 0 and kept == 0):
            self.forget(lease)
            return
        lease.renewed_at = now

    def forget(self, lease: Lease) -> None:
        self._all.pop(lease.id, None)
        leases = [other for other in self._current.get(lease.person, ()) if other is not lease]
        if leases:
            self._current[lease.person] = leases
        else:
            self._current.pop(lease.person, None)
