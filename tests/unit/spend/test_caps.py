"""gateway.spend.caps: periods, cap resolution, and the headers, 429 and usage JSON the client reads.

Expected wire values are the ones recorded from Anthropic's gateway v2.1.328
(spend thresholds, 429s and /api/oauth/usage bodies), copied here as literals.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.spend import caps as sp
from gateway.spend.budget import AllowanceTracker, StreamBudget
from gateway.spend.caps import LimitRow, Snapshot

CENT = sp.MICRO_PER_CENT
DAY_END = datetime(2026, 11, 24, tzinfo=UTC)  # 1795478400, as recorded
WEEK_END = datetime(2026, 11, 30, tzinfo=UTC)  # 1795996800
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- periods

moments = st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2101, 1, 1), timezones=st.just(UTC))


@given(moments)
def test_day_holds_now_and_starts_at_midnight(now):
    start, end = sp.period_bounds("daily", now)
    assert start <= now < end and end - start == timedelta(days=1)
    assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)


@given(moments)
def test_week_starts_monday_and_crosses_year_ends(now):
    start, end = sp.period_bounds("weekly", now)
    assert start <= now < end and end - start == timedelta(days=7)
    assert start.weekday() == 0 and start.time() == datetime.min.time()
    assert start.isocalendar()[:2] == now.isocalendar()[:2]  # the ISO week, whatever the calendar year


@given(moments)
def test_month_is_the_calendar_month(now):
    start, end = sp.period_bounds("monthly", now)
    assert start <= now < end
    assert (start.year, start.month, start.day) == (now.year, now.month, 1)
    assert end.day == 1 and (end - timedelta(microseconds=1)).month == now.month


@given(moments, st.sampled_from(sp.PERIODS))
def test_periods_tile_time(now, period):
    start, end = sp.period_bounds(period, now)
    assert sp.period_bounds(period, end)[0] == end  # the next period starts where this one ends
    assert sp.period_bounds(period, end - timedelta(microseconds=1)) == (start, end)


@given(
    st.datetimes(
        timezones=st.sampled_from(
            [UTC, *(__import__("zoneinfo").ZoneInfo(z) for z in ("Asia/Tokyo", "America/Los_Angeles"))]
        )
    )
)
def test_periods_are_utc_whatever_the_input_zone(now):
    for period in sp.PERIODS:
        start, _ = sp.period_bounds(period, now)
        assert start.tzinfo == UTC and start <= now


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        (
            datetime(2024, 2, 29, 23, 59, tzinfo=UTC),
            "monthly",
            datetime(2024, 2, 1, tzinfo=UTC),
            datetime(2024, 3, 1, tzinfo=UTC),
        ),
        (
            datetime(2024, 2, 29, 12, tzinfo=UTC),
            "daily",
            datetime(2024, 2, 29, tzinfo=UTC),
            datetime(2024, 3, 1, tzinfo=UTC),
        ),
        (
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            "monthly",
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        (
            datetime(2027, 1, 1, 5, tzinfo=UTC),
            "weekly",
            datetime(2026, 12, 28, tzinfo=UTC),
            datetime(2027, 1, 4, tzinfo=UTC),
        ),
        (datetime(2026, 11, 23, 0, 0, tzinfo=UTC), "weekly", datetime(2026, 11, 23, tzinfo=UTC), WEEK_END),
        (
            datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC),
            "weekly",
            datetime(2026, 11, 23, tzinfo=UTC),
            WEEK_END,
        ),
    ],
)
def test_period_examples(now, period, start, end):
    assert sp.period_bounds(period, now) == (start, end)


# ---------------------------------------------------------------- cap resolution


def row(scope_type, scope_id, period, cents, rid=None, pool=None) -> LimitRow:
    return LimitRow(
        rid or f"spl_{scope_type}_{scope_id}_{period}",
        scope_type,
        scope_id,
        period,
        cents,
        pool is not None,
        pool,
    )


ROWS = [
    row("organization", "", "monthly", 50_000),
    row("organization", "", "weekly", 100_000),
    row("rbac_group", "contractors", "daily", 10_000),
    row("rbac_group", "eng", "daily", 20_000),
    row("rbac_group", "eng", "monthly", None),
    row("rbac_group", "vip", "daily", None),
    row("rbac_group", "ops", "daily", 5_000, rid="spl_b"),
    row("rbac_group", "ops2", "daily", 5_000, rid="spl_a"),
    row("user", "alice", "daily", 100),
    row("user", "eve", "monthly", None),
]


@pytest.mark.parametrize(
    ("sub", "groups", "mode", "period", "cents", "source"),
    [
        ("alice", ("eng",), "min", "daily", 100, {"type": "user", "user_id": "alice"}),  # user beats groups
        ("alice", ("eng",), "min", "weekly", 100_000, {"type": "organization"}),
        (
            "bob",
            ("contractors", "eng"),
            "min",
            "daily",
            10_000,
            {"type": "rbac_group", "rbac_group_id": "contractors"},
        ),
        (
            "bob",
            ("contractors", "eng"),
            "max",
            "daily",
            20_000,
            {"type": "rbac_group", "rbac_group_id": "eng"},
        ),
        # min: any cap beats unlimited; max: unlimited wins.
        ("carol", ("vip", "eng"), "min", "daily", 20_000, {"type": "rbac_group", "rbac_group_id": "eng"}),
        ("carol", ("vip", "eng"), "max", "daily", None, {"type": "rbac_group", "rbac_group_id": "vip"}),
        # A group's unlimited row still beats the organization default.
        ("dan", ("eng",), "min", "monthly", None, {"type": "rbac_group", "rbac_group_id": "eng"}),
        ("dan", (), "min", "monthly", 50_000, {"type": "organization"}),
        ("dan", (), "min", "daily", None, None),  # nothing applies at all
        (
            "eve",
            (),
            "min",
            "monthly",
            None,
            {"type": "user", "user_id": "eve"},
        ),  # explicit unlimited override
        (
            "fay",
            ("ops", "ops2"),
            "min",
            "daily",
            5_000,
            {"type": "rbac_group", "rbac_group_id": "ops2"},
        ),  # tie: smaller id
        ("fay", ("ops2", "ops"), "max", "daily", 5_000, {"type": "rbac_group", "rbac_group_id": "ops2"}),
    ],
)
def test_effective_caps(sub, groups, mode, period, cents, source):
    cap = sp.effective_caps(ROWS, sub, groups, mode)[period]
    assert cap.amount_micro == (None if cents is None else cents * CENT)
    assert cap.source == source
    assert set(sp.effective_caps(ROWS, sub, groups, mode)) == set(sp.PERIODS)


def test_pool_caps():
    rows = [
        row("rbac_group", "team", "monthly", 2_000, pool=100_000),
        row("rbac_group", "other", "monthly", None, pool=50_000),
        row("rbac_group", "plain", "monthly", 1_000),
    ]
    assert sp.pool_caps(rows, ("plain", "team", "other")) == [
        sp.PoolCap("other", 50_000 * CENT, "spl_rbac_group_other_monthly"),
        sp.PoolCap("team", 100_000 * CENT, "spl_rbac_group_team_monthly"),
    ]
    assert sp.pool_caps(rows, ("nobody",)) == []
    # The pooled row's own amount is still each member's per-seat monthly cap.
    assert sp.effective_caps(rows, "x", ("team",))["monthly"].amount_micro == 2_000 * CENT


# ---------------------------------------------------------------- success headers


def snap(period, cap_cents, spent_micro, reset, reserved=0, **kw) -> Snapshot:
    cap = None if cap_cents is None else cap_cents * CENT
    return Snapshot(period, cap, spent_micro, reserved, reset, **kw)


def recorded_success(status, utilization, threshold, reset):
    headers = {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-reset": reset,
        "anthropic-ratelimit-unified-overage-reset": reset,
        "anthropic-ratelimit-unified-overage-utilization": utilization,
    }
    if threshold:
        headers["anthropic-ratelimit-unified-overage-surpassed-threshold"] = threshold
    headers["anthropic-ratelimit-unified-representative-claim"] = "overage"
    headers["anthropic-ratelimit-unified-overage-status"] = status
    return headers


@pytest.mark.parametrize(
    ("spent_micro", "expected"),
    [
        (0, recorded_success("allowed", "0", None, "1795478400")),
        (600_670, recorded_success("allowed", "0.6", None, "1795478400")),
        (780_000, recorded_success("allowed_warning", "0.78", "0.75", "1795478400")),
        (960_400, recorded_success("allowed_warning", "0.96", "0.95", "1795478400")),
        (749_999, recorded_success("allowed", "0.75", None, "1795478400")),  # rounds to 0.75, not yet past it
        (995_000, recorded_success("allowed_warning", "0.99", "0.95", "1795478400")),  # kept below 1
    ],
)
def test_success_headers_match_recorded(spent_micro, expected):
    snapshots = [snap("daily", 100, spent_micro, DAY_END), snap("weekly", None, spent_micro, WEEK_END)]
    headers = sp.success_headers(snapshots)
    assert headers == expected and list(headers) == list(expected)


def test_success_headers_describe_the_fullest_cap_and_count_settled_spend_only():
    snapshots = [
        snap("daily", 10_000, 0, DAY_END, reserved=9_000 * CENT),  # in-flight reservations are not "used"
        snap("weekly", 100_000, 0, WEEK_END),
        snap("monthly", 50_000, 0, MONTH_END),
    ]
    assert sp.success_headers(snapshots)["anthropic-ratelimit-unified-reset"] == "1795478400"  # tie: first
    snapshots[1] = snap("weekly", 100_000, 80_000 * CENT, WEEK_END)
    headers = sp.success_headers(snapshots)
    assert headers["anthropic-ratelimit-unified-reset"] == "1795996800"
    assert headers["anthropic-ratelimit-unified-overage-surpassed-threshold"] == "0.75"


def test_no_headers_without_a_cap():
    assert sp.success_headers([snap(p, None, 123, DAY_END) for p in sp.PERIODS]) == {}
    assert sp.success_headers([]) == {}


# ---------------------------------------------------------------- 429


def test_blocked_daily_matches_recorded_headers():
    # alice: daily cap "100", 105.077 cents spent; the 429 came 15642 s before midnight.
    now = DAY_END - timedelta(seconds=15642)
    snapshots = [
        snap("daily", 100, 1_050_770, DAY_END, blocking=True, source={"type": "user", "user_id": "alice"}),
        snap("weekly", 100_000, 1_050_770, WEEK_END),
        snap("monthly", 50_000, 1_050_770, MONTH_END),
    ]
    refusal = sp.blocked(snapshots, now, "ask")
    assert list(refusal.headers.items()) == [
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", "1795478400"),
        ("anthropic-ratelimit-unified-overage-reset", "1795478400"),
        ("anthropic-ratelimit-unified-overage-utilization", "1.05"),
        ("anthropic-ratelimit-unified-overage-surpassed-threshold", "1"),
        ("anthropic-ratelimit-unified-overage-period", "daily"),
        ("anthropic-ratelimit-unified-overage-disabled-reason", "org_spend_cap_reached"),
        ("retry-after", "15642"),
        ("x-should-retry", "false"),
    ]
    assert refusal.retry_after == 15642
    # Our wording (SPEC SPEND-11); Anthropic's gateway wrote "spend limit reached · resets Nov 24 · ask".
    assert refusal.message == "spend limit reached (daily; resets 2026-11-24 00:00 UTC) · ask"
    for forbidden in ("representative-claim", "overage-status"):
        assert not any(forbidden in name for name in refusal.headers)


def test_blocked_zero_cap_matches_recorded():
    now = WEEK_END - timedelta(seconds=534017)
    refusal = sp.blocked([snap("weekly", 0, 0, WEEK_END, blocking=True)], now, "ask")
    assert list(refusal.headers.items()) == [
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", "1795996800"),
        ("anthropic-ratelimit-unified-overage-reset", "1795996800"),
        ("anthropic-ratelimit-unified-overage-utilization", "1"),
        ("anthropic-ratelimit-unified-overage-surpassed-threshold", "1"),
        ("anthropic-ratelimit-unified-overage-period", "weekly"),
        ("anthropic-ratelimit-unified-overage-disabled-reason", "org_spend_cap_reached"),
        ("retry-after", "534017"),
        ("x-should-retry", "false"),
    ]
    assert refusal.message == "spend limit reached · ask"  # exactly as recorded
    assert (
        sp.blocked([snap("weekly", 0, 0, WEEK_END, blocking=True)], now, None).message
        == "spend limit reached"
    )


def test_blocked_picks_the_cap_that_resets_last_and_counts_reservations():
    now = datetime(2026, 11, 23, 19, tzinfo=UTC)
    snapshots = [
        snap("daily", 2, 21_800, DAY_END, blocking=True),  # 1.09 of the cap (client_wire.jsonl)
        snap("weekly", 100, 500_000, WEEK_END, reserved=600_000, blocking=True),
        snap("monthly", 50_000, 0, MONTH_END),  # not blocking: never chosen
    ]
    refusal = sp.blocked(snapshots, now, None)
    assert refusal.headers["anthropic-ratelimit-unified-overage-period"] == "weekly"
    assert refusal.headers["anthropic-ratelimit-unified-overage-utilization"] == "1.1"
    assert refusal.headers["retry-after"] == str(int((WEEK_END - now).total_seconds()))
    only_daily = sp.blocked(snapshots[:1], now, None)
    assert only_daily.headers["anthropic-ratelimit-unified-overage-utilization"] == "1.09"


def test_blocked_group_pool():
    now = datetime(2026, 11, 23, 19, tzinfo=UTC)
    pool = Snapshot(
        "monthly", 100 * CENT, 90 * CENT, 20 * CENT, MONTH_END, "group_pool", None, "spl_x", "team", True
    )
    refusal = sp.blocked([snap("daily", None, 0, DAY_END), pool], now, "talk to finance")
    headers = refusal.headers
    assert headers["anthropic-ratelimit-unified-overage-period"] == "monthly"
    assert headers["anthropic-ratelimit-unified-overage-scope"] == "group_pool"
    assert list(headers)[-3:] == [
        "anthropic-ratelimit-unified-overage-scope",
        "retry-after",
        "x-should-retry",
    ]
    assert (
        refusal.message
        == "spend limit reached (monthly group pool; resets 2026-12-01 00:00 UTC) · talk to finance"
    )


def test_fail_closed_headers():
    assert sp.fail_closed_headers() == {
        "x-should-retry": "false",
        "anthropic-ratelimit-unified-overage-disabled-reason": "fetch_error",
    }
    assert sp.FAIL_CLOSED_MESSAGE == "spend limit unavailable"


# ---------------------------------------------------------------- /api/oauth/usage

NOW = datetime(2026, 11, 23, 19, 47, 56, tzinfo=UTC)


def test_usage_while_blocked_matches_recorded_bytes():
    spent = 1_050_770
    body = sp.usage_document(
        [
            snap("daily", 100, spent, DAY_END),
            snap("weekly", 100_000, spent, WEEK_END),
            snap("monthly", 50_000, spent, MONTH_END),
        ],
        NOW,
    )
    recorded = (
        b'{"extra_usage":{"is_enabled":true,"monthly_limit":100,"used_credits":105,"utilization":105,"currency":"USD"},'
        b'"limits":[{"kind":"spend","group":"daily","percent":105,"resets_at":"2026-11-24T00:00:00.000Z",'
        b'"severity":"critical","is_active":true},{"kind":"spend","group":"weekly","percent":0,'
        b'"resets_at":"2026-11-30T00:00:00.000Z","severity":"normal","is_active":false},{"kind":"spend",'
        b'"group":"monthly","percent":0,"resets_at":"2026-12-01T00:00:00.000Z","severity":"normal","is_active":false}]}'
    )
    assert compact(body) == recorded


def test_usage_small_cap_matches_recorded_bytes():
    body = sp.usage_document([snap("daily", 2, 21_800, DAY_END), snap("weekly", None, 21_800, WEEK_END)], NOW)
    recorded = (
        b'{"extra_usage":{"is_enabled":true,"monthly_limit":2,"used_credits":2,"utilization":109,"currency":"USD"},'
        b'"limits":[{"kind":"spend","group":"daily","percent":109,"resets_at":"2026-11-24T00:00:00.000Z",'
        b'"severity":"critical","is_active":true}]}'
    )
    assert compact(body) == recorded and len(recorded) == 241  # the recorded Content-Length


def test_usage_near_cap_is_critical_and_fresh_caps_are_normal():
    eve = sp.usage_document(
        [
            snap("daily", 100, 960_400, DAY_END),
            snap("weekly", 100_000, 960_400, WEEK_END),
            snap("monthly", None, 960_400, MONTH_END),
        ],
        NOW,
    )
    assert eve == {
        "extra_usage": {
            "is_enabled": True,
            "monthly_limit": 100,
            "used_credits": 96,
            "utilization": 96,
            "currency": "USD",
        },
        "limits": [
            {
                "kind": "spend",
                "group": "daily",
                "percent": 96,
                "resets_at": "2026-11-24T00:00:00.000Z",
                "severity": "critical",
                "is_active": True,
            },
            {
                "kind": "spend",
                "group": "weekly",
                "percent": 0,
                "resets_at": "2026-11-30T00:00:00.000Z",
                "severity": "normal",
                "is_active": False,
            },
        ],
    }
    bob = sp.usage_document(
        [
            snap("daily", 10_000, 0, DAY_END),
            snap("weekly", 100_000, 0, WEEK_END),
            snap("monthly", 50_000, 0, MONTH_END),
        ],
        NOW,
    )
    assert bob["extra_usage"]["monthly_limit"] == 10_000 and bob["limits"][0]["is_active"]


def test_usage_uncapped_matches_recorded_bytes():
    body = sp.usage_document(
        [snap(p, None, 0, end) for p, end in zip(sp.PERIODS, (DAY_END, WEEK_END, MONTH_END), strict=True)],
        NOW,
    )
    recorded = (
        b'{"extra_usage":{"is_enabled":true,"monthly_limit":null,"used_credits":0,"utilization":null,"currency":"USD",'
        b'"daily":{"limit":null,"used_credits":0,"utilization":null},'
        b'"weekly":{"limit":null,"used_credits":0,"utilization":null}},"limits":[]}'
    )
    assert compact(body) == recorded
    spent = sp.usage_document(
        [
            snap("daily", None, 150 * CENT, DAY_END),
            snap("weekly", None, 400 * CENT, WEEK_END),
            snap("monthly", None, 900 * CENT, MONTH_END),
        ],
        NOW,
    )
    assert spent["extra_usage"]["used_credits"] == 900
    assert (
        spent["extra_usage"]["daily"]["used_credits"] == 150
        and spent["extra_usage"]["weekly"]["used_credits"] == 400
    )


def test_usage_shows_a_pool_only_when_it_is_the_active_cap():
    pool = Snapshot("monthly", 100 * CENT, 99 * CENT, 0, MONTH_END, "group_pool", None, "spl_p", "team")
    body = sp.usage_document([snap("daily", 1000, 0, DAY_END), pool], NOW)
    assert body["extra_usage"]["monthly_limit"] == 100
    assert [(r["group"], r["is_active"]) for r in body["limits"]] == [("daily", False), ("monthly", True)]
    quiet_pool = pool._replace(spent_micro=0)
    assert [
        r["group"] for r in sp.usage_document([snap("daily", 1000, 1, DAY_END), quiet_pool], NOW)["limits"]
    ] == ["daily"]


# ---------------------------------------------------------------- allowance


def test_allowance_p95_nearest_rank():
    t = AllowanceTracker(window=100)
    for n in range(1, 101):
        t.observe("u", "m", n * 10)
    assert t.p95("u", "m") == 950
    assert t.allowance("u", "m", 32_000, 4096) == 950
    assert t.allowance("u", "m", 500, 4096) == 500  # max_tokens caps it
    assert t.allowance("new", "m", 32_000, 4096) == 4096  # no history: the configured fallback
    assert t.allowance("new", "m", 1000, 4096) == 1000
    assert t.allowance("u", "other-model", None, 4096) == 4096


@given(st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=300))
def test_allowance_matches_a_sorted_reference(samples):
    t = AllowanceTracker(window=64)
    for s in samples:
        t.observe("u", "m", s)
    recent = sorted(samples[-64:])
    rank = -(-95 * len(recent) // 100)
    assert t.p95("u", "m") == recent[rank - 1]


def test_allowance_memory_is_bounded():
    t = AllowanceTracker(window=4, max_keys=3)
    for i in range(10):
        t.observe(f"u{i}", "m", i)
    assert len(t) == 3 and t.p95("u0", "m") is None and t.p95("u9", "m") == 9


# ---------------------------------------------------------------- stream top-ups


def test_stream_budget_asks_ahead_once_per_step():
    b = StreamBudget(granted_tokens=4096, step_tokens=2048)
    assert b.want(1000) == 0
    assert b.want(3072) == 2048  # half a step of headroom left: ask now
    assert b.want(3500) == 0  # one request at a time
    b.answer(2048, True)
    assert b.granted == 6144 and not b.over(6144)
    assert b.want(5200) == 2048
    b.answer(2048, False)
    assert b.denied and b.want(9000) == 0
    assert b.over(6145)


def test_stream_budget_catches_up_after_a_burst():
    b = StreamBudget(granted_tokens=100, step_tokens=50)
    assert b.want(400) == 50 + 300


def test_stream_budget_stops_at_max_tokens():
    # The upstream writes at most max_tokens: a grant that covers them is final.
    b = StreamBudget(granted_tokens=64, step_tokens=2048, ceiling=64)
    assert b.want(10_000) == 0 and not b.over(10_000)
    b = StreamBudget(granted_tokens=100, step_tokens=2048, ceiling=1000)
    assert b.want(100) == 900  # never past the ceiling
    b.answer(900, True)
    assert b.final() and b.want(5000) == 0 and not b.over(5000)
    b = StreamBudget(granted_tokens=100, step_tokens=50, ceiling=1000)
    assert b.want(100) == 50 and b.over(151)  # below the ceiling, steps and cuts as before


def test_stream_budget_asks_ahead_only_when_streams_may_be_cut():
    # Cutting: half the grant of runway when the grant is smaller than a step.
    b = StreamBudget(granted_tokens=20, step_tokens=2048)
    assert b.want(9) == 0 and b.want(10) == 2048
    # Not cutting: nothing to stop in time for, so only a stream that passes its grant asks.
    b = StreamBudget(granted_tokens=20, step_tokens=2048, ahead=False)
    assert b.want(20) == 0 and b.want(21) == 2048 + 1
