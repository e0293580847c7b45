"""gateway.db.listener against a real PostgreSQL: one LISTEN connection, callbacks per channel,
and a resynchronising reconnect after the server drops that connection."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest

from gateway.config.schema import Store as StoreCfg  # the config section itself
from gateway.db.listener import Listener
from gateway.db.store import Store


def quiet(*args: Any, **kwargs: Any) -> None:
    pass


class Lines(list):
    def __call__(self, level: str, message: str) -> None:
        self.append((level, message))


@pytest.fixture(scope="module")
async def store(pg_url):
    opened = await Store.open(StoreCfg(pg_url, connect_timeout_seconds=2), log=quiet)
    await opened.migrate()
    yield opened
    await opened.close()


class Heard:
    """A subscriber's view: payloads heard, and each connection it resynchronised on."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.resyncs: list[int] = []  # backend pid of each (re)connect

    def notify(self, payload: str) -> None:
        self.payloads.append(payload)

    async def resync(self, conn: asyncpg.Connection) -> None:
        self.resyncs.append(conn.get_server_pid())


def app_name() -> str:
    return "gatehouse-test-" + uuid.uuid4().hex[:8]


async def notify(store: Store, channel: str, payload: str) -> None:
    async with store.pool.acquire() as conn:
        await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


async def until(predicate, timeout: float = 5.0) -> None:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.005)


async def backends(store: Store, name: str) -> list[int]:
    async with store.pool.acquire() as conn:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", name)
    return [r["pid"] for r in rows]


async def test_channels_share_one_connection_and_each_gets_its_notifications(store):
    name = app_name()
    listener = Listener(store, application_name=name, log=quiet)
    first, second = Heard(), Heard()
    await listener.subscribe("chan_one", first.notify, on_connect=first.resync)
    await listener.subscribe("chan_two", second.notify, on_connect=second.resync)
    assert first.resyncs == [] and not listener.connected  # registered only, until started
    await listener.start()
    try:
        assert listener.connected and listener.channels == ("chan_one", "chan_two")
        pids = await backends(store, name)
        assert len(pids) == 1 and first.resyncs == second.resyncs == pids

        await notify(store, "chan_one", "a")
        await notify(store, "chan_two", "b")
        await notify(store, "chan_one", "c")
        await until(lambda: len(first.payloads) == 2 and len(second.payloads) == 1)
        assert (first.payloads, second.payloads) == (["a", "c"], ["b"])
    finally:
        await listener.close()
    assert await backends(store, name) == []


async def test_subscribing_to_a_connected_listener_listens_and_resyncs_at_once(store):
    listener = Listener(store, application_name=app_name(), log=quiet)
    await listener.start()
    try:
        late = Heard()
        subscription = await listener.subscribe("chan_late", late.notify, on_connect=late.resync)
        assert len(late.resyncs) == 1
        await notify(store, "chan_late", "x")
        await until(lambda: late.payloads == ["x"])

        await subscription.unsubscribe()
        assert listener.channels == ()
        await notify(store, "chan_late", "y")
        await notify(store, "chan_late", "z")
        await asyncio.sleep(0.05)
        assert late.payloads == ["x"]
    finally:
        await listener.close()


async def test_a_terminated_connection_reconnects_and_every_subscriber_resyncs(store, pg_cluster):
    name = app_name()
    lines = Lines()
    listener = Listener(store, application_name=name, log=lines)
    one, two = Heard(), Heard()
    await listener.subscribe("chan_a", one.notify, on_connect=one.resync)
    await listener.subscribe("chan_b", two.notify, on_connect=two.resync)
    await listener.start()
    try:
        [old] = await backends(store, name)
        admin = await asyncpg.connect(pg_cluster.url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old)
        finally:
            await admin.close()

        await until(lambda: len(one.resyncs) == 2 and len(two.resyncs) == 2 and listener.connected)
        assert one.resyncs[1] == two.resyncs[1] != old
        assert listener.connects == 2
        assert any("lost its database connection" in m for _, m in lines)

        # Listening again on every channel, on the new connection.
        await notify(store, "chan_a", "after")
        await notify(store, "chan_b", "after")
        await until(lambda: one.payloads == ["after"] and two.payloads == ["after"])
        assert await backends(store, name) == [one.resyncs[1]]
    finally:
        await listener.close()


async def test_a_failed_resync_is_retried_with_a_fresh_connection(store):
    lines = Lines()
    delays: list[float] = []

    async def no_wait(delay: float) -> None:  # the back-off timer, injected
        delays.append(delay)
        await asyncio.sleep(0)

    listener = Listener(store, application_name=app_name(), log=lines, sleep=no_wait)
    heard = Heard()
    failures = [RuntimeError("resync refused"), RuntimeError("resync refused again")]

    async def flaky(conn: asyncpg.Connection) -> None:
        if failures:
            raise failures.pop(0)
        await heard.resync(conn)

    await listener.subscribe("chan_flaky", heard.notify, on_connect=flaky)
    await listener.start()  # the first connect fails; the gateway still starts
    try:
        assert not listener.connected and any("could not connect yet" in m for _, m in lines)
        await until(lambda: listener.connected)
        assert len(heard.resyncs) == 1 and delays[:1] == [0.1]
        await notify(store, "chan_flaky", "p")
        await until(lambda: heard.payloads == ["p"])
    finally:
        await listener.close()
