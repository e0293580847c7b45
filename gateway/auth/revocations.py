"""Which session families are revoked, known on every replica without a query per request (edge).

Theory of operation:

* Revoking a family (gateway/auth/session_store.py) marks its row and, in the same
  statement, sends ``NOTIFY gatehouse_revocations, '<family id>'``.
* Each replica runs one :class:`RevocationWatcher`, subscribed to that channel
  on the process's LISTEN connection (:class:`gateway.db.listener.Listener`,
  shared with the spend store; a watcher given none opens one of its own). It
  adds each family id it hears to an in-memory dict. The relay asks
  :meth:`RevocationWatcher.is_revoked` with the token's ``sid``: a dict
  lookup, no await, no database round trip. Notifications arrive within
  milliseconds, far inside the 5 s the issue allows.
* Notifications sent while the connection is down are lost, so every
  (re)connect of the listener LISTENs first and then, through the watcher's
  ``on_connect``, reloads every family revoked in the last ``ttl_s + 60`` s.
  A notification racing with the reload is merely recorded twice. Noticing a
  lost connection (at once, or by the keepalive query) and reconnecting with
  back-off is the listener's work.
* **Bounded.** An entry is only needed while an access token of the family
  can still verify: tokens are minted before the revocation and live at most
  ``ttl_s`` (plus the verifier's 30 s clock leeway), so each entry expires
  ``ttl_s + 60`` s after the revocation and the dict holds at most the
  revocations of that span. Expired entries are dropped as new ones arrive and
  on every reload (between them the dict does not grow).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from gateway import audit
from gateway.db.listener import KEEPALIVE_S, Listener, Subscription
from gateway.db.store import Store, queries

CHANNEL = "gatehouse_revocations"
# Beyond ttl_s: the verifier's exp leeway (30 s) plus room for clock drift
# between the revoking replica and this one.
MARGIN_S = 60.0
# The connection a watcher opens when given no listener (tests kill it by this name).
OWN_CONNECTION = "gatehouse-revocations"

Log = Callable[[str, str], None]


class RevocationWatcher:
    def __init__(
        self,
        store: Store,
        *,
        ttl_s: float,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.time,
        log: Log = audit.log,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self._store = store
        self._hold_s = ttl_s + MARGIN_S
        self._clock = clock
        self._own = listener is None
        self._listener = listener or Listener(
            store, application_name=OWN_CONNECTION, log=log, keepalive_s=keepalive_s
        )
        self._until: dict[str, float] = {}  # family id -> when the entry may be forgotten
        self._by_expiry: list[tuple[float, str]] = []  # heap over the same entries
        self._subscription: Subscription | None = None
        self.reloads = 0  # completed full loads; lets tests and health checks see reconnects

    # -- the hot path --------------------------------------------------------------
    def is_revoked(self, sid: str | None) -> bool:
        if sid is None:
            return False
        until = self._until.get(sid)
        return until is not None and self._clock() < until

    def __len__(self) -> int:
        return len(self._until)

    @property
    def connected(self) -> bool:
        """Listening, with the revocations loaded since the last (re)connect."""
        return self._subscription is not None and self._listener.connected

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe; the revocations load when the listener (re)connects.

        With a listener of its own the watcher starts it, which connects and
        loads once before returning; a shared one is started by its owner
        after every subscriber subscribed (or, if already connected, loads
        during this call).
        """
        self._subscription = await self._listener.subscribe(CHANNEL, self._on_notify, on_connect=self._reload)
        if self._own:
            await self._listener.start()

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if self._own:
            await self._listener.close()
        elif subscription is not None:
            await subscription.unsubscribe()

    # -- resynchronising -----------------------------------------------------------
    async def _reload(self, conn: asyncpg.Connection) -> None:
        now = self._clock()
        since = datetime.fromtimestamp(now - self._hold_s, UTC)
        async with asyncio.timeout(self._store.config.connect_timeout_seconds):
            rows = await conn.fetch(queries()["revocation_load"], since)
        for row in rows:
            self._add(row["family_id"], row["revoked_at"].timestamp() + self._hold_s)
        self._forget_expired()
        self.reloads += 1

    # -- from the listener -----------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        self._add(payload, self._clock() + self._hold_s)
        self._forget_expired()

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
