"""One LISTEN connection per process, shared by every feature that hears NOTIFY (edge).

A LISTEN belongs to one session, so it cannot live in the pool: the listener
keeps one dedicated connection (to ``store.gatehouse.listen_url`` when set: a
transaction-pooling PgBouncer never delivers a notification to a client) and delivers each notification to the callback
registered for its channel. Notifications sent while that connection is down
are lost, so every (re)connect first LISTENs on every channel and then runs
each subscription's ``on_connect`` with the new connection: the subscriber
reloads whatever it may have missed (a change committed in between is then
both heard and reloaded, never neither).

Connection loss is noticed at once through asyncpg's termination callback, and
a keepalive query every ``keepalive_s`` catches a connection that died
silently (a dropped network path). Reconnects back off along
``reconnect_delays_s`` and keep trying until :meth:`Listener.close`. A failed
``on_connect`` counts as a failed connect: the connection is dropped and the
whole (re)connect is tried again, so no subscriber is left unsynchronised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from gateway import audit
from gateway.db.store import Store, StoreUnavailable, connect_params, queries, unavailable_as
from gateway.db.tasks import cancel_and_wait

KEEPALIVE_S = 5.0
RECONNECT_DELAYS_S = (0.1, 0.25, 0.5, 1.0, 2.0)

Log = Callable[[str, str], None]
OnNotify = Callable[[str], None]  # the payload
OnConnect = Callable[[asyncpg.Connection], Awaitable[None]]  # resynchronise; may query on the connection
Sleep = Callable[[float], Awaitable[None]]


class Subscription:
    """One channel's callbacks on a :class:`Listener`; ``await unsubscribe()`` when done."""

    def __init__(self, listener: Listener, channel: str, on_notify: OnNotify, on_connect: OnConnect | None) -> None:
        self._listener = listener
        self.channel = channel
        self.on_notify = on_notify
        self.on_connect = on_connect

    def _deliver(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.on_notify(payload)

    async def unsubscribe(self) -> None:
        await self._listener._unsubscribe(self)


class Listener:
    """Create, :meth:`subscribe`, ``await start()``, ``await close()``.

    Subscribing before ``start`` only registers (``start`` then LISTENs and
    resynchronises everyone in one connect); subscribing to a connected
    listener LISTENs and runs ``on_connect`` before returning.
    """

    def __init__(
        self,
        store: Store,
        *,
        application_name: str = "gatehouse-listener",
        log: Log = audit.log,
        keepalive_s: float = KEEPALIVE_S,
        reconnect_delays_s: Sequence[float] = RECONNECT_DELAYS_S,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._store = store
        self._name = application_name
        self._log = log
        self._keepalive_s = keepalive_s
        self._delays = tuple(reconnect_delays_s)
        self._sleep = sleep
        self._subs: list[Subscription] = []
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one connect or subscribe at a time
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False  # LISTENing on every channel, every subscriber resynchronised
        self.connects = 0  # completed (re)connects; lets tests and health checks see reconnects

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.channel for s in self._subs))

    async def subscribe(self, channel: str, on_notify: OnNotify, *, on_connect: OnConnect | None = None) -> Subscription:
        sub = Subscription(self, channel, on_notify, on_connect)
        async with self._lock:
            self._subs.append(sub)
            conn = self._conn
            if conn is not None and self.connected:
                try:
                    await self._attach(conn, (sub,))
                except Exception as exc:
                    # Reconnect and resynchronise everyone, as after any loss.
                    self._log("warn", f"{self._name}: subscribing to {channel} failed ({exc}); reconnecting")
                    self._drop(conn)
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        async with self._lock:
            if sub not in self._subs:
                return
            self._subs.remove(sub)
            conn = self._conn
            if conn is not None and not conn.is_closed():
                try:
                    with unavailable_as(f"{self._name} unlisten"):
                        async with asyncio.timeout(1.0):
                            await conn.remove_listener(sub.channel, sub._deliver)
                except Exception:
                    pass  # the connection is going anyway; its notifications no longer reach sub

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Connect once before returning, then keep the connection in the background.

        If the first connect fails the gateway still starts (the store answered
        moments ago at boot, so this is a blip); the background task keeps
        trying and logs until it succeeds.
        """
        if self._task is not None:
            return
        try:
            await self._connect()
        except Exception as exc:
            self._log("warn", f"{self._name}: could not connect yet ({exc}); retrying in the background")
        self._task = asyncio.create_task(self._run(), name=self._name)

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
                except Exception as exc:  # the listener must outlive any single failure
                    delay = self._delays[min(failures, len(self._delays) - 1)]
                    if failures == 0:
                        self._log("warn", f"{self._name}: reconnect failed ({exc}); retrying")
                    failures += 1
                    await self._sleep(delay)
                    continue
                if failures:
                    self._log("info", f"{self._name}: reconnected and resynchronised {', '.join(self.channels)}")
                failures = 0
            await self._watch()

    async def _watch(self) -> None:
        """Return once the connection is lost (or we are closing)."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._lost.wait(), self._keepalive_s)
            except TimeoutError:
                if await self._alive():
                    continue
            break
        if not self._closing:
            self._log("warn", f"{self._name}: lost its database connection; reconnecting")
            await self._disconnect()

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            with unavailable_as(f"{self._name} keepalive"):
                async with asyncio.timeout(self._keepalive_s):
                    await conn.fetchval(queries()["ping"])
        except (StoreUnavailable, asyncpg.PostgresError):
            return False
        return True

    async def _connect(self) -> None:
        async with self._lock:
            params = connect_params(self._store.config, direct=True)
            params["server_settings"] = {"application_name": self._name}
            with unavailable_as(f"{self._name} connect"):
                async with asyncio.timeout(self._store.config.connect_timeout_seconds):
                    conn = await asyncpg.connect(**params)
            self._conn = conn
            self._lost.clear()
            conn.add_termination_listener(self._on_terminated)
            try:
                await self._attach(conn, tuple(self._subs))
            except BaseException:
                self._conn = None
                conn.terminate()
                raise
            self.connected = True
            self.connects += 1

    async def _attach(self, conn: asyncpg.Connection, subs: Sequence[Subscription]) -> None:
        """LISTEN first, resynchronise second: a change committed in between is heard and reloaded."""
        with unavailable_as(f"{self._name} listen"):
            for sub in subs:
                await conn.add_listener(sub.channel, sub._deliver)
            for sub in subs:
                if sub.on_connect is not None:
                    await sub.on_connect(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        """Give up ``conn`` (the current connection): the background task reconnects."""
        if conn is self._conn:
            self.connected = False
            self._lost.set()

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
    def _on_terminated(self, conn: Any) -> None:
        # Connections we closed ourselves call this too; only the current one matters.
        self._drop(conn)
