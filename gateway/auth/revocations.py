"""Which session families are revoked, known on every replica without a query per request (edge).

Theory of operation:

* Revoking a family (gateway/auth/session_store.py) marks its row and, in the same
  statement, sends ``NOTIFY gatehouse_revocations, '<family id>'``.
* Each replica runs one :class:`RevocationWatcher`: a dedicated connection
  (outside the pool, since a LISTEN belongs to one session) that LISTENs on
  that channel and adds each family id it hears to an in-memory dict. The
  relay asks :meth:`RevocationWatcher.is_revoked` with the token's ``sid``:
  a dict lookup, no await, no database round trip. Notifications arrive within
  milliseconds, far inside the 5 s the issue allows.
* Notifications sent while the connection is down are lost, so every
  (re)connect LISTENs first and then reloads every family revoked in the last
  ``ttl_s + 60`` s. A notification racing with the reload is merely recorded
  twice. Connection loss is noticed at once through asyncpg's termination
  callback, and a periodic keepalive query catches connections that die
  silently (a dropped network path); reconnects back off up to 2 s.
* **Bounded.** An entry is only needed while an access token of the family
  can still verify: tokens are minted before the revocation and live at most
  ``ttl_s`` (plus the verifier's 30 s clock leeway), so each entry expires
  ``ttl_s + 60`` s after the revocation and the dict holds at most the
  revocations of that span. Expired entries are dropped as new ones arrive and
  on every keepalive.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway import audit
from gateway.db.store import Store, StoreUnavailable, connect_params, queries, unavailable_as
from gateway.db.tasks import cancel_and_wait

CHANNEL = "gatehouse_revocations"
# Beyond ttl_s: the verifier's exp leeway (30 s) plus room for clock drift
# between the revoking replica and this one.
MARGIN_S = 60.0
KEEPALIVE_S = 5.0
RECONNECT_DELAYS_S = (0.1, 0.25, 0.5, 1.0, 2.0)

Log = Callable[[str, str], None]


class RevocationWatcher:
    def __init__(
        self,
        store: Store,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        log: Log = audit.log,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self._store = store
        self._hold_s = ttl_s + MARGIN_S
        self._clock = clock
        self._log = log
        self._keepalive_s = keepalive_s
        self._until: dict[str, float] = {}  # family id -> when the entry may be forgotten
        self._by_expiry: list[tuple[float, str]] = []  # heap over the same entries
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.reloads = 0  # completed full loads; lets tests and health checks see reconnects

    # -- the hot path --------------------------------------------------------------
    def is_revoked(self, sid: str | None) -> bool:
        if sid is None:
            return False
        until = self._until.get(sid)
        return until is not None and self._clock() < until

    def __len__(self) -> int:
        return len(self._until)

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Connect and load once before returning, then keep watching in the background.

        If the first connect fails the gateway still starts (the store answered
        moments ago at boot, so this is a blip); the background task keeps
        trying and logs until it succeeds.
        """
        try:
            await self._connect()
        except (StoreUnavailable, asyncpg.PostgresError) as exc:
            self._log(
                "warn", f"revocation watcher: could not connect yet ({exc}); retrying in the background"
            )
        self._task = asyncio.create_task(self._run(), name="revocation-watcher")

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        await cancel_and_wait(self._task)
        self._task = None
        await self._disconnect()

    # -- connection management -----------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            if self._conn is None:
                try:
                    await self._connect()
                except Exception as exc:  # the watcher must outlive any single failure
                    delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                    if failures == 0:
                        self._log("warn", f"revocation watcher: reconnect failed ({exc}); retrying")
                    failures += 1
                    await asyncio.sleep(delay)
                    continue
                if failures:
                    self._log("info", "revocation watcher: reconnected and reloaded revocations")
                failures = 0
            await self._watch()

    async def _watch(self) -> None:
        """Return once the connection is lost (or we are closing)."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._lost.wait(), self._keepalive_s)
            except TimeoutError:
                self._forget_expired()
                if await self._alive():
                    continue
            break
        if not self._closing:
            self._log("warn", "revocation watcher: lost its database connection; reconnecting")
            await self._disconnect()

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            with unavailable_as("revocation watcher keepalive"):
                async with asyncio.timeout(self._keepalive_s):
                    await conn.fetchval(queries()["ping"])
        except (StoreUnavailable, asyncpg.PostgresError):
            return False
        return True

    async def _connect(self) -> None:
        params = connect_params(self._store.config)
        params["server_settings"] = {"application_name": "gatehouse-revocations"}
        with unavailable_as("revocation watcher connect"):
            conn = await asyncpg.connect(**params)
        self._conn = conn
        self._lost.clear()
        conn.add_termination_listener(self._on_terminated)
        try:
            with unavailable_as("revocation watcher listen"):
                await conn.add_listener(CHANNEL, self._on_notify)
                # LISTEN first, load second: a revocation committed in between
                # is then both heard and loaded, never neither.
                await self._reload(conn)
        except BaseException:
            self._conn = None
            conn.terminate()
            raise
        self.connected = True

    async def _reload(self, conn: asyncpg.Connection) -> None:
        now = self._clock()
        since = datetime.fromtimestamp(now - self._hold_s, UTC)
        async with asyncio.timeout(self._store.config.connect_timeout_seconds):
            rows = await conn.fetch(queries()["revocation_load"], since)
        for row in rows:
            self._add(row["family_id"], row["revoked_at"].timestamp() + self._hold_s)
        self._forget_expired()
        self.reloads += 1

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(1.0):
                    await conn.close()
            except Exception:
                conn.terminate()

    # -- callbacks from asyncpg ------------------------------------------------------
    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._add(payload, self._clock() + self._hold_s)
        self._forget_expired()

    def _on_terminated(self, conn: Any) -> None:
        # Connections we closed ourselves call this too; only the current one matters.
        if conn is self._conn:
            self._lost.set()

    # -- the set -------------------------------------------------------------------
    def _add(self, family_id: str, until: float) -> None:
        if until <= self._until.get(family_id, float("-inf")):
            return
        self._until[family_id] = until
        heapq.heappush(self._by_expiry, (until, family_id))

    def _forget_expired(self) -> None:
        now = self._clock()
        heap = self._by_expiry
        while heap and heap[0][0] <= now:
            until, family_id = heapq.heappop(heap)
            # A later _add may have extended this entry; only its newest expiry counts.
            if self._until.get(family_id) == until:
                del self._until[family_id]
