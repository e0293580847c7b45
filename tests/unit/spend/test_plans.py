"""gateway.spend.plans: the counters and caps a person's request draws on."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.spend.caps import MICRO_PER_CENT
from gateway.spend.plans import Key, Plans
from tests.unit.spend.test_caps import row

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


def test_plan_lists_three_periods_then_pools_with_their_caps():
    plans = Plans("min")
    plans.replace([row("user", "alice", "daily", 100), row("rbac_group", "team", "monthly", 5000, pool=300)])
    plan = plans.plan("alice", ("team",), NOW)
    assert plan.keys == (
        Key("user", "alice", "daily", datetime(2026, 11, 24, tzinfo=UTC)),
        Key("user", "alice", "weekly", datetime(2026, 11, 23, tzinfo=UTC)),
        Key("user", "alice", "monthly", datetime(2026, 11, 1, tzinfo=UTC)),
        Key("group_pool", "team", "monthly", datetime(2026, 11, 1, tzinfo=UTC)),
    )
    assert plan.caps[0] == 100 * MICRO_PER_CENT and plan.caps[3] == 300 * MICRO_PER_CENT
    assert plan.capped and plan.arrays[0] == ["user", "user", "user", "group_pool"]
    assert plan.day_end == datetime(2026, 11, 25, tzinfo=UTC)


def test_plans_are_cached_until_the_day_turns_or_the_limits_change():
    plans = Plans("min")
    assert not plans.plan("bob", (), NOW).capped
    assert plans.plan("bob", (), NOW) is plans.plan("bob", (), NOW)
    tomorrow = datetime(2026, 11, 25, 1, tzinfo=UTC)
    assert plans.plan("bob", (), tomorrow).keys[0].start == datetime(2026, 11, 25, tzinfo=UTC)
    plans.replace([row("user", "bob", "weekly", 0)])
    assert plans.plan("bob", (), tomorrow).caps[1] == 0
