"""gateway.spend.leases: the local half of leases (pure)."""

from __future__ import annotations

from gateway.spend import leases as sl

ALICE = ("alice", ("eng",))
KEYS = ("day", "week", "month")


def book_with(held: int = 1_000, now: float = 0.0) -> tuple[sl.LeaseBook, sl.Lease]:
    book = sl.LeaseBook("r1", ttl_s=60)
    lease = sl.Lease(book.next_id(), ALICE, KEYS, [5_000, None, None], held, now, [])
    book.add(lease)
    return book, lease


def test_size_is_a_share_of_the_headroom_within_bounds():
    assert sl.size(headroom=1_000_000, amount=100) == sl.MAX_REQUESTS * 100
    assert sl.size(headroom=8 * 1_000, amount=100) == 1_000  # an eighth of the headroom
    assert sl.size(headroom=8 * 399, amount=100) == 0  # worth fewer than MIN_REQUESTS requests


def test_ids_name_the_replica_and_never_repeat():
    book = sl.LeaseBook("r1")
    assert book.next_id() == "lease:r1:1" and book.next_id() == "lease:r1:2"


def test_take_needs_room_matching_keys_a_recent_renewal_and_an_active_lease():
    book, lease = book_with(held=1_000)
    assert book.take(ALICE, KEYS, 600, now=1.0) is lease
    assert book.take(ALICE, KEYS, 600, now=1.0) is None  # 400 left
    assert book.take(ALICE, ("other day", "week", "month"), 100, now=1.0) is None
    assert book.take(("bob", ()), KEYS, 100, now=1.0) is None
    assert book.take(ALICE, KEYS, 100, now=31.0) is None  # not renewed for half its ttl
    assert book.take(ALICE, KEYS, 100, now=29.0) is lease
    book.retire(ALICE)
    assert book.take(ALICE, KEYS, 100, now=29.0) is None
    assert lease.in_flight == 700


def test_settling_moves_the_actual_cost_out_and_keeps_what_others_hold():
    book, lease = book_with(held=1_000)
    book.take(ALICE, KEYS, 300, now=0)
    book.take(ALICE, KEYS, 300, now=0)
    moved = book.settling(lease, held=300, actual=200)
    assert moved == 200 and lease.keep() == 300 + 200 and lease.free == 500  # 100 of the estimate came back
    book.settled(lease, moved)
    assert (lease.held, lease.in_flight, lease.settling) == (800, 300, 0)
    # A reply that cost more than the lease can spare moves only what nobody else holds.
    moved = book.settling(lease, held=300, actual=5_000)
    assert moved == 800


def test_renewals_retire_idle_leases_and_forget_closed_ones():
    book, lease = book_with(held=1_000, now=0)
    assert book.renewals(now=1.0) == [(lease, None)]  # in use: keep it all
    book.renewed(lease, None, True, now=1.0)
    assert book.renewals(now=1.0 + sl.IDLE_S + 1) == [(lease, 0)]  # idle: give it all back
    assert lease.retired
    book.renewed(lease, 0, True, now=20.0)
    assert len(book) == 0 and book.take(ALICE, KEYS, 1, now=20.0) is None


def test_the_older_lease_is_used_up_before_the_newer_then_goes_back_with_its_crumbs():
    book, old = book_with(held=1_000)
    book.take(ALICE, KEYS, 600, now=0)
    assert book.wants(ALICE, 100, now=0)  # 400 free: under half of what was granted
    new = sl.Lease(book.next_id(), ALICE, KEYS, [5_000, None, None], 2_000, 0.0, [])
    book.add(new)
    assert not book.wants(ALICE, 100, now=0)  # 2,400 free across both
    assert book.take(ALICE, KEYS, 300, now=0) is old  # the older first
    assert book.take(ALICE, KEYS, 300, now=0) is new  # 100 left in the older: too little
    assert old.retired and not new.retired
    assert book.renewals(now=1.0) == [(old, 900), (new, None)]  # the old one shrinks to what its requests hold
    book.renewed(old, 900, True, now=1.0)
    assert old.held == 900 and len(book) == 2
    assert book.take(ALICE, KEYS, 100, now=1.0) is new
