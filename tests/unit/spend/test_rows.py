"""gateway.spend.rows: reading the spend SQL functions' rows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.spend import caps as sp
from gateway.spend.plans import Plans
from gateway.spend.rows import exhausted, headroom, keys_laid_out, laid_end_to_end, per_item, room, snapshots

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def plan_with_daily_cap(cents: int):
    plans = Plans("min")
    plans.replace([sp.LimitRow("l1", "user", "alice", "daily", cents)])
    return plans.plan("alice", (), NOW)


def counter_rows(plan, spent: int, reserved: int, exhausted: int | None = None, lead=(True,)):
    return [(*lead, k.scope_type, k.scope_id, k.period, k.start, spent, reserved, exhausted) for k in plan.keys]


def test_laid_end_to_end_counts_from_one():
    assert laid_end_to_end([["a", "b"], [], ["c"]]) == ([1, 3, 3], [2, 0, 1], ["a", "b", "c"])


def test_keys_laid_out_gives_the_six_key_arrays_a_batch_function_takes():
    plan = plan_with_daily_cap(100)
    first, count, types, ids, periods, starts = keys_laid_out([plan.keys, (), plan.keys[:1]])
    assert (first, count) == ([1, 4, 4], [3, 0, 1])
    assert types == ["user"] * 4 and ids == ["alice"] * 4
    assert periods == ["daily", "weekly", "monthly", "daily"] and starts[3] == plan.keys[0].start


def test_per_item_groups_rows_by_their_leading_position():
    rows = [(2, "x"), (1, "y"), (2, "z")]
    assert per_item(rows, 3) == [[("y",)], [("x",), ("z",)], []]


def test_snapshots_follow_the_plan_and_mark_what_blocked_a_refusal():
    plan = plan_with_daily_cap(100)  # 1,000,000 µUSD
    found = snapshots(counter_rows(plan, 600_000, 300_000), plan, refused_amount=200_000)
    assert [s.period for s in found] == ["daily", "weekly", "monthly"]
    daily = found[0]
    assert (daily.cap_micro, daily.spent_micro, daily.reserved_micro, daily.blocking) == (1_000_000, 600_000, 300_000, True)
    assert daily.source == {"type": "user", "user_id": "alice"} and daily.limit_id == "l1"
    assert not any(s.blocking for s in found[1:])  # uncapped periods never block
    # Rows without a leading flag read the same; a counter without a row reads as zero.
    assert snapshots(counter_rows(plan, 1, 2, lead=())[:1], plan, None)[1].spent_micro == 0


def test_room_and_headroom_are_the_least_room_under_any_cap():
    plan = plan_with_daily_cap(100)
    rows = counter_rows(plan, 600_000, 300_000)
    assert headroom(rows, plan.keys, plan.caps) == 100_000
    assert room(snapshots(rows, plan, None)) == 100_000
    # A counter marked exhausted at this cap has no room, whatever it holds.
    assert headroom(counter_rows(plan, 0, 0, exhausted=1_000_000), plan.keys, plan.caps) == 0
    uncapped = Plans("min").plan("bob", (), NOW)
    assert headroom(counter_rows(uncapped, 5, 5), uncapped.keys, uncapped.caps) is None
    assert room(snapshots([], uncapped, None)) is None


def test_exhausted_only_when_a_capped_counter_is_marked_at_its_cap():
    plan = plan_with_daily_cap(100)
    assert not exhausted(counter_rows(plan, 1_000_000, 0), plan.keys, plan.caps)  # full is not closed
    assert exhausted(counter_rows(plan, 0, 0, exhausted=1_000_000), plan.keys, plan.caps)
    assert not exhausted(counter_rows(plan, 0, 0, exhausted=999_999), plan.keys, plan.caps)  # cap raised since
