"""Which counters a person's request draws on, and their caps (pure: no I/O).

The spend store keeps the ``spend_limits`` rows in a :class:`Plans` and asks
it, per request, for the person's :class:`Plan`: the counters to lock (their
day, week and month, and the month of every pool they draw from), the cap of
each, and whether any cap applies at all. Resolving caps from the rows is a
few dict lookups, cached per (sub, groups); a plan is cached until the day
turns or the rows are replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from gateway.spend import caps as sp

CACHE_LIMIT = 50_000  # entries per cache: one per active person


class Key(NamedTuple):
    """One counter row: spend_counters' primary key."""

    scope_type: str
    scope_id: str
    period: str
    start: datetime


class Plan(NamedTuple):
    """Everything a person's requests need on the hot path, built once per day (or limits reload)."""

    day_start: datetime
    day_end: datetime
    keys: tuple[Key, ...]
    arrays: tuple[list[str], list[str], list[str], list[datetime]]
    caps: list[int | None]  # parallel to keys
    ends: list[datetime]  # parallel to keys: when each counter's period ends
    capped: bool
    user_caps: dict[str, sp.Cap]
    pools: list[sp.PoolCap]


def arrays(keys: Sequence[Key]) -> tuple[list[str], list[str], list[str], list[datetime]]:
    """Keys as the four parallel arrays the SQL functions take."""
    return (
        [k.scope_type for k in keys],
        [k.scope_id for k in keys],
        [k.period for k in keys],
        [k.start for k in keys],
    )


def limit_row(r: Any) -> sp.LimitRow:
    """A ``spend_limits`` row (a mapping) as a LimitRow."""
    return sp.LimitRow(
        r["id"],
        r["scope_type"],
        r["scope_id"],
        r["period"],
        r["amount_cents"],
        r["pooled_limit_enabled"],
        r["pooled_monthly_credit_limit_cents"],
        r["currency"],
        r["created_at"],
        r["updated_at"],
        r["created_by"],
    )


class Plans:
    """The limits in force and the per-person answers drawn from them."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.index = sp.LimitIndex(())
        self._resolved: dict[tuple[str, tuple[str, ...]], tuple[dict[str, sp.Cap], list[sp.PoolCap]]] = {}
        self._plans: dict[tuple[str, tuple[str, ...]], Plan] = {}

    def replace(self, rows: Iterable[sp.LimitRow]) -> None:
        """New limits: every cached answer is dropped."""
        self.index = sp.LimitIndex(rows)
        self._resolved = {}
        self._plans = {}

    def resolve(self, sub: str, groups: Sequence[str]) -> tuple[dict[str, sp.Cap], list[sp.PoolCap]]:
        """The caps and pools that apply to a person now (cached until the next replace)."""
        key = (sub, tuple(groups))
        found = self._resolved.get(key)
        if found is None:
            found = (self.index.caps(sub, key[1], self.mode), self.index.pools(key[1]))
            if len(self._resolved) > CACHE_LIMIT:
                self._resolved.clear()
            self._resolved[key] = found
        return found

    def plan(self, sub: str, groups: tuple[str, ...], now: datetime) -> Plan:
        plan = self._plans.get((sub, groups))
        if plan is not None and plan.day_start <= now < plan.day_end:
            return plan
        caps, pools = self.resolve(sub, groups)
        starts = sp.period_starts(now)
        keys = tuple(Key("user", sub, p, starts[p]) for p in sp.PERIODS) + tuple(
            Key("group_pool", pool.group, "monthly", starts["monthly"]) for pool in pools
        )
        ends = [sp.period_bounds(k.period, k.start)[1] for k in keys]
        capped = bool(pools) or any(c.amount_micro is not None for c in caps.values())
        plan = Plan(keys[0].start, ends[0], keys, arrays(keys), self.caps_for(sub, groups, keys), ends, capped, caps, pools)
        if len(self._plans) > CACHE_LIMIT:
            self._plans.clear()
        self._plans[(sub, groups)] = plan
        return plan

    def caps_for(self, sub: str, groups: Sequence[str], keys: Sequence[Key]) -> list[int | None]:
        """The cap (µUSD, None = none) of each of ``keys`` for this person, by the limits now."""
        caps, pools = self.resolve(sub, groups)
        by_group = {p.group: p.amount_micro for p in pools}
        return [caps[k.period].amount_micro if k.scope_type == "user" else by_group.get(k.scope_id) for k in keys]
