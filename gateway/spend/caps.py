"""Spend caps: periods, which cap applies, and what the client is told.

Pure: values in, values out, no I/O. The database side (reserving, topping
up and settling against the counters) is gateway/spend/store.py; the relay
calls both.

Vocabulary:

* A **limit row** is one spend_limits row (scope × period → amount in cents).
* A **cap** is what applies to one person for one period after resolution:
  their own user row, else their groups' rows (``admin.group_limit_mode``),
  else the organization row, else nothing. Group and organization caps are
  per-seat: each member has their own counter.
* A **pool** is the Gatehouse extension: a monthly group row with
  ``pooled_limit_enabled`` is also a budget shared by every member.
* A **snapshot** is one counter as seen by a request: the cap, the settled
  spend, what requests in flight hold reserved, and when the period resets.

Money is integers: micro-dollars (µUSD) everywhere inside; cents in and out of
the admin API. Times are timezone-aware UTC datetimes passed in by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from protocol_spec.wire import ExtraUsage, PeriodCredits, UsageLimit, UsageReport

PERIODS = ("daily", "weekly", "monthly")
MICRO_PER_CENT = 10_000
WARN_LOW = (75, "0.75")  # whole percent, header value
WARN_HIGH = (95, "0.95")
FAIL_CLOSED_MESSAGE = "spend limit unavailable"
_H = "anthropic-ratelimit-unified-"


# ---------------------------------------------------------------- periods


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC calendar period holding ``now``: a day, a week from Monday, a month."""
    now = now.astimezone(UTC)
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "daily":
        return day, day + timedelta(days=1)
    if period == "weekly":
        start = day - timedelta(days=day.weekday())  # weekday(): Monday is 0
        return start, start + timedelta(days=7)
    if period == "monthly":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    raise ValueError(f"unknown period {period!r}")


def period_starts(now: datetime) -> dict[str, datetime]:
    return {p: period_bounds(p, now)[0] for p in PERIODS}


# ---------------------------------------------------------------- limits and caps


class LimitRow(NamedTuple):
    """One spend_limits row (amounts in cents, as stored)."""

    id: str
    scope_type: str  # user | rbac_group | organization
    scope_id: str  # sub, group name, or "" for the organization
    period: str
    amount_cents: int | None  # None = unlimited
    pooled_limit_enabled: bool = False
    pooled_monthly_credit_limit_cents: int | None = None
    currency: str = "USD"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: str = ""


class Cap(NamedTuple):
    """The cap that applies to one person for one period."""

    period: str
    amount_micro: int | None  # None = unlimited
    # Where it came from, in the admin API's shape: {"type": "user", "user_id": …},
    # {"type": "rbac_group", "rbac_group_id": …}, {"type": "organization"}; None when
    # no row applies at all.
    source: dict[str, str] | None
    limit_id: str | None


class PoolCap(NamedTuple):
    group: str
    amount_micro: int
    limit_id: str


def _source(row: LimitRow) -> dict[str, str]:
    if row.scope_type == "user":
        return {"type": "user", "user_id": row.scope_id}
    if row.scope_type == "rbac_group":
        return {"type": "rbac_group", "rbac_group_id": row.scope_id}
    return {"type": "organization"}


def _cap(row: LimitRow) -> Cap:
    amount = None if row.amount_cents is None else row.amount_cents * MICRO_PER_CENT
    return Cap(row.period, amount, _source(row), row.id)


def _pick_group(rows: list[LimitRow], mode: str) -> LimitRow:
    # min: the smallest amount, and any amount beats unlimited; max: unlimited
    # beats any amount, else the largest. Ties go to the smaller id so every
    # replica (and /effective) picks the same row.
    if mode == "max":
        return min(rows, key=lambda r: (r.amount_cents is not None, -(r.amount_cents or 0), r.id))
    return min(rows, key=lambda r: (r.amount_cents is None, r.amount_cents or 0, r.id))


class LimitIndex:
    """Limit rows indexed by scope, so resolving one person's caps is a few dict lookups."""

    def __init__(self, rows: Iterable[LimitRow]) -> None:
        self.rows = tuple(rows)
        self.users: dict[str, dict[str, LimitRow]] = {}
        self.groups: dict[str, dict[str, LimitRow]] = {}
        self.org: dict[str, LimitRow] = {}
        for row in self.rows:
            if row.scope_type == "user":
                self.users.setdefault(row.scope_id, {})[row.period] = row
            elif row.scope_type == "rbac_group":
                self.groups.setdefault(row.scope_id, {})[row.period] = row
            elif row.scope_type == "organization":
                self.org[row.period] = row

    @property
    def empty(self) -> bool:
        return not self.rows

    def caps(self, sub: str, groups: Sequence[str], mode: str = "min") -> dict[str, Cap]:
        own = self.users.get(sub, {})
        mine = [self.groups[g] for g in groups if g in self.groups]
        caps: dict[str, Cap] = {}
        for period in PERIODS:
            row = own.get(period)
            if row is None:
                candidates = [g[period] for g in mine if period in g]
                row = _pick_group(candidates, mode) if candidates else self.org.get(period)
            caps[period] = _cap(row) if row is not None else Cap(period, None, None, None)
        return caps

    def pools(self, groups: Sequence[str]) -> list[PoolCap]:
        found: list[PoolCap] = []
        for g in sorted(set(groups)):
            row = self.groups.get(g, {}).get("monthly")
            if (
                row is not None
                and row.pooled_limit_enabled
                and row.pooled_monthly_credit_limit_cents is not None
            ):
                found.append(PoolCap(g, row.pooled_monthly_credit_limit_cents * MICRO_PER_CENT, row.id))
        return found


def effective_caps(
    rows: Iterable[LimitRow], sub: str, groups: Sequence[str], mode: str = "min"
) -> dict[str, Cap]:
    """Per period, the cap that applies to ``sub`` with ``groups`` (every period is present)."""
    return LimitIndex(rows).caps(sub, groups, mode)


def pool_caps(rows: Iterable[LimitRow], groups: Sequence[str]) -> list[PoolCap]:
    """The shared monthly group budgets ``groups`` draw from, in group-name order."""
    return LimitIndex(rows).pools(groups)


# ---------------------------------------------------------------- snapshots and headers


class Snapshot(NamedTuple):
    """One counter as one request saw it."""

    period: str
    cap_micro: int | None  # None: no cap for this period (spend is still counted)
    spent_micro: int  # settled spend this period
    reserved_micro: int  # held by requests in flight (this one included, once admitted)
    reset_at: datetime
    scope: str = "user"  # "user", or "group_pool" for a shared group budget
    source: dict[str, str] | None = None
    limit_id: str | None = None
    group: str | None = None  # the pool's group name
    # True when this counter is why a request was refused: over the cap with the
    # estimate, or closed because a running stream could not be topped up.
    blocking: bool = False


class Blocked(NamedTuple):
    """A spend 429: its headers (in wire order), error message and retry-after seconds."""

    headers: dict[str, str]
    message: str
    retry_after: int
    snapshot: Snapshot


def _ratio_2dp(numerator: int, denominator: int, ceiling: int | None = None) -> str:
    """A fraction rounded half up to 2 decimals, written without trailing zeros ("0", "0.6", "1.05").

    ``ceiling`` bounds the result in hundredths.
    """
    hundredths = (200 * numerator + denominator) // (2 * denominator)
    if ceiling is not None:
        hundredths = min(hundredths, ceiling)
    whole, frac = divmod(hundredths, 100)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:02d}".rstrip("0")


def _reset(s: Snapshot) -> str:
    return str(int(s.reset_at.timestamp()))


def _capped(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    return [s for s in snapshots if s.cap_micro is not None]


def fullest(snapshots: Iterable[Snapshot]) -> Snapshot | None:
    """The capped counter with the highest settled utilization; ties go to the first given.

    Utilization counts settled spend only: reservations of requests still in
    flight decide admission but are not shown as used, so the figure matches
    the dollars /api/oauth/usage reports.
    """
    best: Snapshot | None = None
    for s in _capped(snapshots):
        if best is None or _over(s, best):
            best = s
    return best


def _over(a: Snapshot, b: Snapshot) -> bool:
    """a.spent / a.cap > b.spent / b.cap, in integers; a zero cap counts as full."""
    assert a.cap_micro is not None and b.cap_micro is not None
    if a.cap_micro == 0 or b.cap_micro == 0:
        return a.cap_micro == 0 and b.cap_micro != 0
    return a.spent_micro * b.cap_micro > b.spent_micro * a.cap_micro


def _percent_reached(s: Snapshot, percent: int) -> bool:
    assert s.cap_micro is not None
    return s.spent_micro * 100 >= percent * s.cap_micro


def success_headers(snapshots: Iterable[Snapshot]) -> dict[str, str]:
    """The usage-limit headers for a successful reply; empty for someone without a cap."""
    s = fullest(snapshots)
    if s is None:
        return {}
    assert s.cap_micro is not None
    threshold = None
    if s.cap_micro == 0 or _percent_reached(s, WARN_HIGH[0]):
        threshold = WARN_HIGH[1]
    elif _percent_reached(s, WARN_LOW[0]):
        threshold = WARN_LOW[1]
    status = "allowed_warning" if threshold else "allowed"
    # Still allowing, so kept below 1: the client reads 1 as "limit reached".
    utilization = "0.99" if s.cap_micro == 0 else _ratio_2dp(s.spent_micro, s.cap_micro, ceiling=99)
    reset = _reset(s)
    headers = {
        _H + "status": status,
        _H + "reset": reset,
        _H + "overage-reset": reset,
        _H + "overage-utilization": utilization,
    }
    if threshold:
        headers[_H + "overage-surpassed-threshold"] = threshold
    headers[_H + "representative-claim"] = "overage"
    headers[_H + "overage-status"] = status
    return headers


def _reset_phrase(s: Snapshot) -> str:
    return s.reset_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def blocked(snapshots: Sequence[Snapshot], now: datetime, blocked_message: str | None) -> Blocked:
    """The 429 for a refused request: describes the blocking cap that resets last."""
    candidates = [s for s in _capped(snapshots) if s.blocking] or _capped(snapshots)
    if not candidates:
        raise ValueError("blocked() needs at least one capped snapshot")
    s = max(candidates, key=lambda c: c.reset_at)  # first of the latest resets wins ties
    assert s.cap_micro is not None
    used = s.spent_micro + s.reserved_micro
    if s.cap_micro == 0 or used <= s.cap_micro:
        utilization = "1"
    else:
        utilization = _ratio_2dp(used, s.cap_micro)
    seconds = max(1, math.ceil((s.reset_at - now).total_seconds()))
    reset = _reset(s)
    headers = {
        _H + "status": "rejected",
        _H + "reset": reset,
        _H + "overage-reset": reset,
        _H + "overage-utilization": utilization,
        _H + "overage-surpassed-threshold": "1",
        _H + "overage-period": s.period,
        _H + "overage-disabled-reason": "org_spend_cap_reached",
    }
    if s.scope == "group_pool":
        headers[_H + "overage-scope"] = "group_pool"
    headers["retry-after"] = str(seconds)
    headers["x-should-retry"] = "false"
    what = f"{s.period} group pool" if s.scope == "group_pool" else s.period
    message = "spend limit reached"
    if s.cap_micro != 0:
        message += f" ({what}; resets {_reset_phrase(s)} UTC)"
    if blocked_message:
        message += f" · {blocked_message}"
    return Blocked(headers, message, seconds, s)


def fail_closed_headers() -> dict[str, str]:
    """Headers of the 429 sent when the spend store cannot answer and enforcement fails closed."""
    return {"x-should-retry": "false", _H + "overage-disabled-reason": "fetch_error"}


# ---------------------------------------------------------------- /api/oauth/usage


def _cents(micro: int) -> int:
    return micro // MICRO_PER_CENT


def _percent(s: Snapshot) -> int:
    assert s.cap_micro is not None
    if s.cap_micro == 0:
        return 100
    return s.spent_micro * 100 // s.cap_micro


def _iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def usage_report(snapshots: Sequence[Snapshot], now: datetime) -> UsageReport:
    """The body of GET /api/oauth/usage (key order as Anthropic's gateway writes it).

    ``snapshots`` should hold the user's three periods (capped or not) and any
    pools. Amounts are whole cents (rounded down) and whole percents (rounded
    down); ``severity`` is "critical" from 95 % of the cap on, else "normal".
    """
    del now  # the snapshots carry their own reset instants
    active = fullest(snapshots)
    user = {s.period: s for s in snapshots if s.scope == "user"}
    if active is None:
        # Nothing capped: no limits to show, but the dollars spent per period still are.
        spent = {p: _cents(user[p].spent_micro) if p in user else 0 for p in PERIODS}
        extra = ExtraUsage(
            is_enabled=True,
            monthly_limit=None,
            used_credits=spent["monthly"],
            utilization=None,
            currency="USD",
            daily=PeriodCredits(None, spent["daily"], None),
            weekly=PeriodCredits(None, spent["weekly"], None),
        )
        return UsageReport(extra, [])
    assert active.cap_micro is not None
    extra = ExtraUsage(
        is_enabled=True,
        monthly_limit=_cents(active.cap_micro),
        used_credits=_cents(active.spent_micro),
        utilization=_percent(active),
        currency="USD",
    )
    limits = [
        UsageLimit(
            kind="spend",
            group=s.period,
            percent=_percent(s),
            resets_at=_iso_ms(s.reset_at),
            severity="critical" if s.cap_micro == 0 or _percent_reached(s, WARN_HIGH[0]) else "normal",
            is_active=s is active,
        )
        for s in _capped(snapshots)
        # A pool shows only when it is the fullest cap; otherwise it would read as a second monthly cap.
        if s.scope == "user" or s is active
    ]
    return UsageReport(extra, limits)


def usage_document(snapshots: Sequence[Snapshot], now: datetime) -> dict[str, Any]:
    """``usage_report`` as plain data, in the same key order."""
    doc: dict[str, Any] = msgspec.to_builtins(usage_report(snapshots, now))
    return doc


def principal_fields(principal: Any) -> Mapping[str, Any]:
    """The identity fields recorded in ``principals`` (last seen)."""
    return {
        "sub": principal.sub,
        "email": principal.email,
        "name": principal.name,
        "groups": list(principal.groups),
    }
