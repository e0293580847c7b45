"""Retention sweep for the admin tables: plain deletes by age.

``admin.audit_retention_days``, ``identity_retention_days`` and
``spend_retention_months`` say how long audit entries, idle principals and
spend counters are kept. The sweep is idempotent and safe on every replica at
once; a database outage skips one round with a warning instead of stopping it.
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
    the job is registered); ``now`` is the admin API's clock.
    """
    try:
        removed = await prune(store(), cfg, now())
    except (StoreUnavailable, TimeoutError) as exc:
        audit.log("warn", f"retention prune skipped: {exc}")
        return
    if any(removed.values()):
        audit.log(
            "info",
            "retention prune removed " + ", ".join(f"{n} from {t}" for t, n in removed.items() if n),
        )
