"""The admin API's reads and writes of spend limits, sign-in revocations and the audit trail (edge).

The statements are in ``sql/queries/admin_*.sql``; this module runs them, so
the handlers in :mod:`gateway.http.admin` parse, call one method here, and
render. Every mutation changes ``spend_limits``, writes its before/after row to
``admin_audit`` and sends ``NOTIFY gatehouse_spend_limits`` in one
transaction, so the trail and the replicas' limit caches can never disagree
with the table.

Connections come from :func:`gateway.db.store.connection` (one the driver
lost track of is closed, not given back), and an unreachable database is
:class:`~gateway.db.store.StoreUnavailable`. Any other database error
propagates: the transaction rolled back, so nothing half-done remains, and the
handler decides what the client sees.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from gateway.admin.docs import groups_of, snapshot
from gateway.admin.requests import EffectiveQuery, LimitRequest
from gateway.db.store import connection, queries, unavailable_as
from gateway.errors import Fault, GatewayError, Kind, Party
from gateway.spend import caps as spend

# Admin calls are rare and small; this bounds how long one may wait for a
# pooled connection (or for giving it back) when the database is slow.
STORE_TIMEOUT_S = 10.0
# A row an upsert meant to replace may be deleted under it; after this many
# tries the caller is told to try again rather than looping.
UPSERT_ATTEMPTS = 3
_encode = msgspec.json.Encoder().encode


class UnknownCursor(Fault, LookupError):
    """A page cursor names a spend limit that does not exist (any more)."""

    fault = Party.CLIENT


# What a revoked family records as its reason (``gatehouse sessions revoke``'s default too);
# the administrator's own words go to the audit trail.
ADMIN_REVOKE_REASON = "admin_revoke"


class RevokedSession(NamedTuple):
    family_id: str
    sub: str
    email: str | None


class EffectiveEntry(NamedTuple):
    """One row of ``/effective``: a person, a period, the cap that applies, settled spend."""

    person: asyncpg.Record
    period: str
    cap: spend.Cap
    spent_micro: int


class EffectiveRows(NamedTuple):
    entries: list[EffectiveEntry]
    # The sort key of the last row shown when more follow (the next cursor), else None.
    next_key: tuple[Any, ...] | None


class _Retry(Fault):
    """The row an upsert meant to update vanished under it; run the upsert again."""

    fault = Party.STORE


class AdminStore:
    """Spend limits and the admin audit trail in PostgreSQL, over the gateway's pool.

    ``pool`` is the shared :attr:`gateway.db.store.Store.pool`; this object
    holds nothing else, so one per request costs nothing.
    """

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = STORE_TIMEOUT_S) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    # ------------------------------------------------------------ reads

    async def get_limit(self, limit_id: str) -> asyncpg.Record | None:
        with unavailable_as("reading a spend limit"):
            async with connection(self._pool, self._timeout_s) as conn:
                return await conn.fetchrow(queries()["admin_limit_get"], limit_id)

    async def list_limits(
        self, size: int, scope_type: str | None, *, after_id: str | None, before_id: str | None
    ) -> tuple[list[asyncpg.Record], bool]:
        """One page of caps in creation order, and whether more follow in that direction.

        ``after_id`` / ``before_id`` (at most one) name the cap the page starts
        after or ends before; :class:`UnknownCursor` when it does not exist.
        """
        q = queries()
        with unavailable_as("listing spend limits"):
            async with connection(self._pool, self._timeout_s) as conn:
                cursor_id = after_id if after_id is not None else before_id
                anchor = None
                if cursor_id is not None:
                    anchor = await conn.fetchrow(q["admin_limit_get"], cursor_id)
                    if anchor is None:
                        raise UnknownCursor(cursor_id)
                if before_id is not None:
                    assert anchor is not None
                    rows = await conn.fetch(
                        q["admin_limit_page_backward"],
                        scope_type,
                        anchor["created_at"],
                        anchor["id"],
                        size + 1,
                    )
                    return list(reversed(rows[:size])), len(rows) > size
                rows = await conn.fetch(
                    q["admin_limit_page_forward"],
                    scope_type,
                    None if anchor is None else anchor["created_at"],
                    None if anchor is None else anchor["id"],
                    size + 1,
                )
                return rows[:size], len(rows) > size

    async def audit_trail(self, size: int, after_id: int | None) -> tuple[list[asyncpg.Record], bool]:
        """One page of the mutation trail, newest first, and whether more follow."""
        with unavailable_as("reading the admin audit trail"):
            async with connection(self._pool, self._timeout_s) as conn:
                rows = await conn.fetch(queries()["admin_audit_page"], after_id, size + 1)
        return rows[:size], len(rows) > size

    async def effective(
        self, eq: EffectiveQuery, starts: Mapping[str, datetime], group_limit_mode: str
    ) -> EffectiveRows:
        """The cap that applies and the period-to-date spend, per principal and period.

        ``starts`` maps each asked period to the start of its current period.
        Caps are resolved by the same index the spend gate uses, so
        ``/effective`` shows what is enforced.
        """
        with unavailable_as("reading effective spend limits"):
            async with connection(self._pool, self._timeout_s) as conn:
                rows = await conn.fetch(queries()["admin_limit_all"])
                limits = spend.LimitIndex(spend.LimitRow(**dict(r)) for r in rows)

                def cap(person: asyncpg.Record, period: str) -> spend.Cap:
                    return limits.caps(person["sub"], groups_of(person["groups"]), group_limit_mode)[period]

                if eq.by_spend:
                    return await _effective_by_spend(conn, eq, starts, cap)
                return await _effective_by_sub(conn, eq, starts, cap)

    # ------------------------------------------------------------ writes

    async def upsert_limit(
        self, req: LimitRequest, *, actor: str, now: datetime
    ) -> tuple[asyncpg.Record | None, asyncpg.Record]:
        """Create or replace the cap of ``req``'s (scope, period), audited; returns (before, after) rows."""
        for _ in range(UPSERT_ATTEMPTS):
            try:
                return await self._upsert_once(req, actor=actor, now=now)
            except _Retry:
                pass
        raise GatewayError(Kind.INTERNAL, "the spend limit changed concurrently; try again")

    async def _upsert_once(
        self, req: LimitRequest, *, actor: str, now: datetime
    ) -> tuple[asyncpg.Record | None, asyncpg.Record]:
        q = queries()
        with unavailable_as("saving a spend limit"):
            async with connection(self._pool, self._timeout_s) as conn, conn.transaction():
                key = (req.scope_type, req.scope_id, req.period)
                before = None
                after = await conn.fetchrow(
                    q["admin_limit_insert"], "spl_" + uuid.uuid4().hex, *key,
                    req.amount_cents, req.pooled, req.pooled_cents, now, actor,
                )  # fmt: skip
                if after is None:
                    # It exists (committed; ON CONFLICT waited for any concurrent
                    # creator), so lock it and replace its terms.
                    before = await conn.fetchrow(q["admin_limit_lock_scope"], *key)
                    if before is None:  # deleted in between: a new transaction retries
                        raise _Retry
                    after = await conn.fetchrow(
                        q["admin_limit_update"],
                        before["id"],
                        req.amount_cents,
                        req.pooled,
                        req.pooled_cents,
                        now,
                    )
                await _notify_and_record(
                    conn, now=now, actor=actor, action="spend_limit.upsert", target=after["id"],
                    before=before, after=after, reason=req.reason,
                )  # fmt: skip
        return before, after

    async def delete_limit(
        self, limit_id: str, *, actor: str, now: datetime, reason: str | None
    ) -> asyncpg.Record | None:
        """Delete one cap, audited; its last row, or None when there was none."""
        with unavailable_as("deleting a spend limit"):
            async with connection(self._pool, self._timeout_s) as conn, conn.transaction():
                before = await conn.fetchrow(queries()["admin_limit_delete"], limit_id)
                if before is not None:
                    await _notify_and_record(
                        conn, now=now, actor=actor, action="spend_limit.delete", target=limit_id,
                        before=before, after=None, reason=reason,
                    )  # fmt: skip
        return before

    # ------------------------------------------------------------ sign-in sessions

    async def revoke_session(
        self, family_id: str, *, actor: str, now: datetime, reason: str | None
    ) -> tuple[bool, RevokedSession | None]:
        """Revoke one sign-in family, audited: (it exists, what this call revoked or None).

        The revocation's own statement sends ``NOTIFY gatehouse_revocations``,
        delivered at commit with the audit row, as ``/oauth/revoke`` does.
        """
        q = queries()
        with unavailable_as("revoking a session"):
            async with connection(self._pool, self._timeout_s) as conn, conn.transaction():
                row = await conn.fetchrow(q["revocation_revoke_family"], family_id, now, ADMIN_REVOKE_REASON)
                if row is None:
                    exists = await conn.fetchrow(q["admin_session_exists"], family_id) is not None
                    return exists, None
                await _record_revocation(conn, row, now=now, actor=actor, reason=reason)
        return True, RevokedSession(row["family_id"], row["sub"], row["email"])

    async def revoke_sessions_of(
        self, email: str, *, actor: str, now: datetime, reason: str | None
    ) -> list[RevokedSession]:
        """Revoke every live sign-in family of ``email`` (any letter case), each audited."""
        q = queries()
        with unavailable_as("revoking sessions"):
            async with connection(self._pool, self._timeout_s) as conn, conn.transaction():
                rows = await conn.fetch(q["revocation_revoke_email"], email, now, ADMIN_REVOKE_REASON)
                for row in rows:
                    await _record_revocation(conn, row, now=now, actor=actor, reason=reason)
        return [RevokedSession(r["family_id"], r["sub"], r["email"]) for r in rows]


async def _record_revocation(
    conn: asyncpg.Connection, row: Mapping[str, Any], *, now: datetime, actor: str, reason: str | None
) -> None:
    # A session has no before/after snapshot: the trail keeps who, which family and why.
    await conn.fetchval(
        queries()["admin_audit_insert"], now, actor, "session.revoke", row["family_id"], None, None, reason
    )


async def _notify_and_record(
    conn: asyncpg.Connection,
    *,
    now: datetime,
    actor: str,
    action: str,
    target: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    reason: str | None,
) -> None:
    q = queries()
    await conn.fetchval(
        q["admin_audit_insert"],
        now,
        actor,
        action,
        target,
        None if before is None else _encode(snapshot(before)).decode(),
        None if after is None else _encode(snapshot(after)).decode(),
        reason,
    )
    await conn.fetchval(q["admin_notify_limits"], target)


async def _spend_of(
    conn: asyncpg.Connection, subs: list[str], starts: Mapping[str, datetime]
) -> dict[tuple[str, str], int]:
    if not subs:
        return {}
    found = await conn.fetch(queries()["admin_effective_spend"], subs, list(starts), list(starts.values()))
    return {(r["sub"], r["period"]): r["spent_micro"] for r in found}


CapOf = Callable[[asyncpg.Record, str], spend.Cap]


async def _effective_by_spend(
    conn: asyncpg.Connection, eq: EffectiveQuery, starts: Mapping[str, datetime], cap: CapOf
) -> EffectiveRows:
    """One period, highest settled spend first; the cursor is (spent, sub) of the last row shown."""
    (period,) = eq.periods
    spent_after, sub_after = eq.cursor if eq.cursor else (None, None)
    people = await conn.fetch(
        queries()["admin_effective_by_spend"], eq.user_ids, eq.q, spent_after, sub_after,
        period, starts[period], eq.size + 1,
    )  # fmt: skip
    entries = [EffectiveEntry(p, period, cap(p, period), p["spent_micro"]) for p in people[: eq.size]]
    if len(people) <= eq.size:
        return EffectiveRows(entries, None)
    last = people[eq.size - 1]
    return EffectiveRows(entries, (last["spent_micro"], last["sub"]))


async def _effective_by_sub(
    conn: asyncpg.Connection, eq: EffectiveQuery, starts: Mapping[str, datetime], cap: CapOf
) -> EffectiveRows:
    """Rows are (sub, period) in order; the cursor is the last row shown.

    So a page may end part-way through one person's periods, and the next
    starts at that person again, past the periods already shown.
    """
    sub_from, period_after = eq.cursor if eq.cursor else (None, None)
    people = await conn.fetch(
        queries()["admin_effective_principals"], eq.user_ids, eq.q, sub_from, eq.size + 2
    )
    spent = await _spend_of(conn, [p["sub"] for p in people], starts)
    candidates = [
        (person, period)
        for person in people
        for period in eq.periods
        if not (
            person["sub"] == sub_from
            and period_after in eq.periods
            and eq.periods.index(period) <= eq.periods.index(period_after)
        )
    ]
    entries = [
        EffectiveEntry(person, period, cap(person, period), spent.get((person["sub"], period), 0))
        for person, period in candidates[: eq.size]
    ]
    if len(candidates) <= eq.size:
        return EffectiveRows(entries, None)
    last_person, last_period = candidates[eq.size - 1]
    return EffectiveRows(entries, (last_person["sub"], last_period))
