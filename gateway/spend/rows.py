"""Reading what the spend SQL functions take and return (pure: no I/O).

The batch functions take per-request lists laid end to end with first/count
arrays, and return counter rows (scope type, id, period, start, spent,
reserved, exhausted), often led by the request's position and a verdict. These
turn them into what the request path needs: per-request groups, the
:class:`gateway.spend.caps.Snapshot` list a reply's headers come from, and how much
room is left under a person's caps (which sizes their lease).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from gateway.spend import caps as sp
from gateway.spend.plans import Key, Plan, arrays

T = TypeVar("T")


def laid_end_to_end(parts: Sequence[Sequence[T]]) -> tuple[list[int], list[int], list[T]]:
    """Per-item lists as one array for a batch call: each part's first index (from 1, as
    PostgreSQL counts), each part's length, and all of them concatenated."""
    first: list[int] = []
    count: list[int] = []
    flat: list[T] = []
    for part in parts:
        first.append(len(flat) + 1)
        count.append(len(part))
        flat.extend(part)
    return first, count, flat


def keys_laid_out(parts: Sequence[Sequence[Key]]) -> tuple[list[Any], ...]:
    """Each request's counter keys as a batch function takes them: first indexes, counts, then
    the keys' types, ids, periods and starts."""
    first, count, keys = laid_end_to_end(parts)
    return (first, count, *arrays(keys))


def per_item(rows: Sequence[Any], n: int) -> list[list[tuple[Any, ...]]]:
    """Rows led by their item's position (from 1), grouped per item, the position dropped."""
    per: list[list[tuple[Any, ...]]] = [[] for _ in range(n)]
    for r in rows:
        per[r[0] - 1].append(tuple(r)[1:])
    return per


def room(snapshots: Sequence[sp.Snapshot]) -> int | None:
    """The least room left under any capped counter, as ``snapshots`` saw them; None when nothing is capped."""
    rooms = [s.cap_micro - s.spent_micro - s.reserved_micro for s in snapshots if s.cap_micro is not None]
    return max(0, min(rooms)) if rooms else None


def headroom(rows: Sequence[Any], keys: Sequence[Key], caps: Sequence[int | None]) -> int | None:
    """The least room left under any capped counter of ``keys`` (caps parallel to them), from
    counter rows led by a flag (verdict, scope type, id, period, start, spent, reserved,
    exhausted); None when nothing is capped."""
    found = {(r[1], r[2], r[3]): (r[5], r[6], r[7]) for r in rows if r[1] is not None}
    least: int | None = None
    for key, cap in zip(keys, caps, strict=True):
        if cap is None:
            continue
        spent, reserved, exhausted = found.get((key.scope_type, key.scope_id, key.period), (0, 0, None))
        left = 0 if exhausted is not None and cap <= exhausted else max(0, cap - spent - reserved)
        least = left if least is None else min(least, left)
    return least


def exhausted(rows: Sequence[Any], keys: Sequence[Key], caps: Sequence[int | None]) -> bool:
    """Whether any capped counter of ``keys`` is marked exhausted at its cap (a running stream was
    refused a top-up there), from counter rows led by a flag."""
    marks = {(r[1], r[2], r[3]): r[7] for r in rows if r[1] is not None}
    for key, cap in zip(keys, caps, strict=True):
        mark = marks.get((key.scope_type, key.scope_id, key.period))
        if cap is not None and mark is not None and cap <= mark:
            return True
    return False


def snapshots(rows: Sequence[Any], plan: Plan, refused_amount: int | None) -> list[sp.Snapshot]:
    """A person's counters as Snapshots, in ``plan.keys`` order, from counter rows (led or not
    by a flag); counters without a row yet read as zero. ``refused_amount``: the request was
    refused for wanting that much, so mark the counters that blocked it."""
    found = {}
    for r in rows:
        values = tuple(r)  # scope type, id, period, start, spent, reserved, exhausted
        if len(values) == 8:  # an admission's rows lead with the verdict
            values = values[1:]
        found[(values[0], values[1], values[2])] = (values[4], values[5], values[6])
    pool_ids = {p.group: p.limit_id for p in plan.pools}
    out = []
    for key, cap, end in zip(plan.keys, plan.caps, plan.ends, strict=True):
        spent, reserved, exhausted = found.get((key.scope_type, key.scope_id, key.period), (0, 0, None))
        blocking = False
        if refused_amount is not None and cap is not None:
            blocking = (exhausted is not None and cap <= exhausted) or spent + reserved + refused_amount > cap
        if key.scope_type == "user":
            c = plan.user_caps[key.period]
            source, limit_id, group = c.source, c.limit_id, None
        else:
            source = {"type": "rbac_group", "rbac_group_id": key.scope_id}
            limit_id, group = pool_ids.get(key.scope_id), key.scope_id
        out.append(
            sp.Snapshot(
                key.period, cap, spent, reserved, end, key.scope_type, source, limit_id, group, blocking
            )
        )
    return out
