"""Retention sweep: usage rows rolled up by day, then the admin tables' deletes by age.

Every deployment runs it (gateway.app.jobs), hourly on every replica:

* ``gatehouse.retention.usage_records_days``: raw usage rows (one per request,
  with the person's email) of days before that many whole UTC days ago are
  moved into ``usage_daily`` (sums per day, person, model and upstream) in
  batches; each batch deletes its rows and adds them to their day's sums in
  one statement that skips rows another sweep holds, so concurrent sweeps
  never count a row twice or lose one. ``usage_daily_days``, when set, ages
  the rollups out too.
* With ``admin``: ``admin.audit_retention_days``, ``identity_retention_days``
  and ``spend_retention_months`` say how long audit entries, idle principals
  and spend counters are kept (plain deletes by age).

Idempotent and safe on every replica at once; a database outage skips one
round with a warning instead of stopping it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import audit
from gateway.db.store import StoreUnavailable, queries, unavailable_as

PRUNE_EVERY_S = 3600.0
# Bulk deletes may take longer than an interactive admin call; this
# bounds a sweep against a slow database, not its usual duration.
PRUNE_TIMEOUT_S = 60.0
# Raw usage rows moved per statement: small enough that a batch holds its row
# locks briefly, large enough that a day of a busy deployment takes few.
ROLLUP_BATCH_ROWS = 5000
# No new batch starts after this long in one sweep; the next sweep goes on (a
# first sweep over years of rows takes a few hours of sweeps, not one long one).
ROLLUP_BUDGET_S = 30.0


async def roll_up_usage(
    store: Any, cfg: Any, now: datetime, *, batch_rows: int = ROLLUP_BATCH_ROWS, budget_s: float = ROLLUP_BUDGET_S
) -> dict[str, int]:
    """Move usage rows older than ``gatehouse.retention.usage_records_days`` into the daily
    rollup, and age the rollup out (``usage_daily_days``); counts per table."""
    keep = cfg.gatehouse.retention
    q = queries()
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + budget_s
    moved = 0
    with unavailable_as("usage rollup"):
        while True:
            async with asyncio.timeout(PRUNE_TIMEOUT_S):
                n = await store.pool.fetchval(
                    q["usage_rollup"], usage_cutoff(now, keep.usage_records_days), batch_rows, now
                )
            moved += n
            if n < batch_rows or loop.time() >= stop_at:
                break
        removed = {"usage_records": moved}
        if keep.usage_daily_days is not None:
            async with asyncio.timeout(PRUNE_TIMEOUT_S):
                status = await store.pool.execute(
                    q["usage_daily_prune"], usage_cutoff(now, keep.usage_daily_days).date()
                )
            removed["usage_daily"] = _count(status)
    return removed


def usage_cutoff(now: datetime, days: int) -> datetime:
    """Midnight UTC ``days`` days before ``now``'s UTC day: today and that many whole days are kept."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days)


async def prune(store: Any, cfg: Any, now: datetime) -> dict[str, int]:
    """Delete what the ``admin`` retention settings say is too old; counts per table.

    Plain deletes by age, safe to run on every replica at once.
    """
    admin = cfg.admin
    q = queries()
    removed: dict[str, int] = {}
    with unavailable_as("retention prune"):
        async with asyncio.timeout(PRUNE_TIMEOUT_S):
            pool = store.pool
            removed["admin_audit"] = _count(
                await pool.execute(q["admin_prune_audit"], now - timedelta(days=admin.audit_retention_days))
            )
            removed["principals"] = _count(
                await pool.execute(
                    q["admin_prune_principals"], now - timedelta(days=admin.identity_retention_days)
                )
            )
            removed["spend_counters"] = _count(
                await pool.execute(q["admin_prune_spend"], months_before(now, admin.spend_retention_months))
            )
    return removed


def months_before(now: datetime, months: int) -> datetime:
    """Midnight UTC on the first of the month ``months`` calendar months before ``now``'s month."""
    index = now.year * 12 + (now.month - 1) - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def sweep(store: Callable[[], Any], cfg: Any, now: Callable[[], datetime]) -> None:
    """One round of the periodic retention sweep (every ``PRUNE_EVERY_S``, from gateway.app.jobs).

    ``store`` is asked for the store at each round (the app's is opened after
    the job is registered); ``now`` is the gateway's clock (the admin API's,
    with ``admin``). The admin tables are pruned only with ``admin``.
    """
    at = now()
    try:
        removed = await roll_up_usage(store(), cfg, at)
        if cfg.admin is not None:
            removed.update(await prune(store(), cfg, at))
    except (StoreUnavailable, TimeoutError) as exc:
        audit.log("warn", f"retention prune skipped: {exc}")
        return
    if any(removed.values()):
        audit.log(
            "info",
            "retention prune removed " + ", ".join(f"{n} from {t}" for t, n in removed.items() if n),
        )
