"""Stored IdP refresh tokens moved under the current ``session.jwt_secret`` (edge, with a pure core).

The gateway keeps each sign-in's IdP refresh token sealed (see
:mod:`gateway.auth.sealing`) in ``session_families`` and, between the browser
approving a sign-in and the CLI collecting its tokens, in ``device_grants``.
Data sealed under a secret opens only while that secret is listed. A refresh
re-seals its family's token under the current secret (``session_store``), but
a family nobody refreshes during a rotation would keep depending on the old
secret, and dropping it would sign that person out (``idp_token_unreadable``).

So after a boot with a new secret first in the list, the ``signin.reseal`` job
(:mod:`gateway.app.jobs`) runs :meth:`Resealer.run_once`: each run reads one
bounded page per table, re-seals the tokens that only an older secret opens,
and writes them back with a compare and swap on the old bytes. Every replica
may run it at once: a row another replica (or a refresh) already rewrote no
longer matches and is left alone. A pass that re-sealed nothing rests for
``rest_s`` before the next one; a pass that did re-seal something is followed
at once by another, because replicas not yet rolled to the new secret list may
still be sealing under the old secret.

:func:`audit` counts the same rows by the secret that opens them, for
``gatehouse sessions audit-secrets``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg

from gateway import audit as audit_log
from gateway.auth.sealing import Sealer
from gateway.db.store import StoreUnavailable, connection, queries, unavailable_as

RESEAL_EVERY_S = 10.0  # the signin.reseal job's period (gateway.app.jobs)
RESEAL_BATCH = 200  # rows per table per run
REST_S = 3600.0  # after a pass that found nothing to re-seal
STORE_TIMEOUT_S = 10.0
AUDIT_PAGE = 1000


IDP_TOKENS = "idp-refresh-token"  # the sealing purpose of stored IdP refresh tokens


def idp_sealer(secrets: tuple[str, ...]) -> Sealer:
    return Sealer(secrets, IDP_TOKENS)


class Table(NamedTuple):
    name: str  # as audit-secrets reports it
    page: str  # query: (after id, now, size) -> id, sealed
    update: str  # query: (ids, old bytes, new bytes)


TABLES = (
    Table("families", "reseal_families_page", "reseal_families_update"),
    Table("device_grants", "reseal_devices_page", "reseal_devices_update"),
)

# Which secret opens a token: its index in ``jwt_secret``, or None for none.
Opener = int | None


class Plan(NamedTuple):
    ids: list[Any]
    old: list[bytes]
    new: list[bytes]
    unreadable: int


def plan(rows: Iterable[Mapping[str, Any]], sealer: Sealer) -> Plan:
    """What to write for one page: the rows only an older secret opens, re-sealed. Pure."""
    out = Plan([], [], [], 0)
    unreadable = 0
    for row in rows:
        index = sealer.opened_by(row["sealed"])
        if index is None:
            unreadable += 1
        elif index > 0:
            new = sealer.reseal(row["sealed"])
            assert new is not None  # it opened a moment ago
            out.ids.append(row["id"])
            out.old.append(row["sealed"])
            out.new.append(new)
    return out._replace(unreadable=unreadable)


def tally(rows: Iterable[Mapping[str, Any]], sealer: Sealer, counts: Counter[Opener]) -> None:
    """Add one page's rows to ``counts`` by the secret that opens each. Pure but for ``counts``."""
    counts.update(sealer.opened_by(row["sealed"]) for row in rows)


def blocking(counts: Mapping[str, Counter[Opener]], keep: int) -> int:
    """How many stored tokens open only under a secret past the first ``keep``. Pure."""
    return sum(n for per_table in counts.values() for index, n in per_table.items() if index is not None and index >= keep)


async def audit(pool: asyncpg.Pool, sealer: Sealer, now: datetime) -> dict[str, Counter[Opener]]:
    """Every stored sealed IdP refresh token still of use, counted per table by the secret that opens it."""
    q = queries()
    counts: dict[str, Counter[Opener]] = {}
    with unavailable_as("auditing sealed tokens"):
        async with connection(pool, STORE_TIMEOUT_S) as conn:
            for table in TABLES:
                counts[table.name] = Counter()
                after = None
                while True:
                    rows = await conn.fetch(q[table.page], after, now, AUDIT_PAGE)
                    tally(rows, sealer, counts[table.name])
                    if len(rows) < AUDIT_PAGE:
                        break
                    after = rows[-1]["id"]
    return counts


class Resealer:
    """The ``signin.reseal`` job: where each table's pass has got to, and one run of it.

    ``pool`` returns the pool to use (the runtime's, opened after this object
    is made); ``clock`` returns Unix seconds (tests move it).
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        sealer: Sealer,
        *,
        clock: Callable[[], float] = time.time,
        batch: int = RESEAL_BATCH,
        rest_s: float = REST_S,
        log: Callable[[str, str], None] = audit_log.log,
    ) -> None:
        self._pool = pool
        self._sealer = sealer
        self._clock = clock
        self._batch = batch
        self._rest_s = rest_s
        self._log = log
        self._cursors: dict[str, Any] = {}
        self._pending = [t.name for t in TABLES]  # tables the current pass has not finished
        self._resealed = 0  # in the current pass
        self._unreadable = 0
        self._last_unreadable = 0
        self._next_pass_at = 0.0

    async def run_once(self) -> None:
        """One page of each table still in the current pass; a database outage skips the run."""
        now = self._clock()
        if not self._pending:
            if now < self._next_pass_at:
                return
            self._pending = [t.name for t in TABLES]
        try:
            for table in TABLES:
                if table.name in self._pending:
                    await self._page(table, now)
        except StoreUnavailable as exc:
            self._log("warn", f"re-sealing IdP refresh tokens skipped: {exc}")
            return
        if not self._pending:
            self._finish_pass(now)

    async def _page(self, table: Table, now: float) -> None:
        q = queries()
        with unavailable_as("re-sealing IdP refresh tokens"):
            async with connection(self._pool(), STORE_TIMEOUT_S) as conn:
                rows = await conn.fetch(
                    q[table.page], self._cursors.get(table.name), datetime.fromtimestamp(now, UTC), self._batch
                )
                todo = plan(rows, self._sealer)
                if todo.ids:
                    status = await conn.execute(q[table.update], todo.ids, todo.old, todo.new)
                    self._resealed += int(status.split()[-1])
        self._unreadable += todo.unreadable
        if len(rows) < self._batch:
            self._pending.remove(table.name)
            self._cursors.pop(table.name, None)
        else:
            self._cursors[table.name] = rows[-1]["id"]

    def _finish_pass(self, now: float) -> None:
        # Said once per change, not every pass: an unreadable token stays so
        # until its family is refreshed (and ended) or pruned.
        if self._resealed or self._unreadable != self._last_unreadable:
            self._log(
                "info",
                f"re-sealed {self._resealed} stored IdP refresh token(s) under the current session.jwt_secret; "
                f"{self._unreadable} open under no listed secret (those people sign in again)",
            )
        # Re-sealed something: replicas still on the old secret list may be
        # sealing under the old secret, so look again at once.
        self._next_pass_at = now if self._resealed else now + self._rest_s
        self._last_unreadable = self._unreadable
        self._resealed = self._unreadable = 0
