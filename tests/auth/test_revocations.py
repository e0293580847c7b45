"""gateway.auth.revocations against a real PostgreSQL: a revocation on one replica reaches another.

Each "replica" here is its own Store (its own pool); the watcher holds its own
LISTEN connection. Revocations are made through SessionService, exactly as
the token endpoint and the admin CLI make them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.auth.identity import Identity
from gateway.auth.revocations import MARGIN_S, RevocationWatcher
from gateway.auth.session_store import SessionService
from gateway.auth.tokens import TokenService
from gateway.config.schema import Store as StoreCfg  # the config section itself
from gateway.db.store import Store
from tests.harness import Clock

SECRETS = ("r" * 40,)
TTL_S = 3600
ALICE = Identity("sub-alice", "alice@example.com", "Alice", ())


class Lines(list):
    def __call__(self, level: str, message: str) -> None:
        self.append((level, message))


def quiet(*args: Any, **kwargs: Any) -> None:
    pass


@pytest.fixture(scope="module")
async def store_a(pg_url):
    opened = await Store.open(StoreCfg(pg_url, connect_timeout_seconds=2), log=quiet)
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
async def store_b(pg_url, store_a):
    opened = await Store.open(StoreCfg(pg_url, connect_timeout_seconds=2), log=quiet)
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(store_a, clock) -> SessionService:
    return SessionService(
        store_a,
        TokenService(SECRETS, "http://gw.test", TTL_S),
        secrets=SECRETS,
        clock=clock,
        emit=quiet,
        log=quiet,
    )


@pytest.fixture
async def watcher(store_b, clock):
    running = RevocationWatcher(store_b, ttl_s=TTL_S, clock=clock, log=Lines())
    await running.start()
    yield running
    await running.close()


async def new_family(sessions: SessionService) -> str:
    pair = await sessions.start_family(ALICE, "idp-rt", client_ip=None)
    # The session service's clock is moved by the tests; only the sid is wanted here.
    principal = TokenService(SECRETS, "http://gw.test", TTL_S).verify_ignoring_time(pair.access_token)
    assert principal.sid
    return principal.sid


async def until(predicate, timeout: float = 5.0) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_revocation_reaches_another_replica_within_seconds(sessions, watcher):
    sid = await new_family(sessions)
    assert not watcher.is_revoked(sid)

    assert await sessions.revoke_family(sid, "admin")

    elapsed = await until(lambda: watcher.is_revoked(sid))
    assert elapsed < 5.0  # in practice a few milliseconds


async def test_revoke_by_email_reaches_another_replica(sessions, watcher):
    email = f"bulk-{time.monotonic_ns()}@example.com"
    sids = [
        (await sessions.start_family(ALICE._replace(email=email), None, client_ip=None)).access_token
        for _ in range(3)
    ]
    families = [f.family_id for f in await sessions.list_families(email)]
    assert len(families) == len(sids)

    assert await sessions.revoke_email(email, "admin") == 3
    await until(lambda: all(watcher.is_revoked(f) for f in families))


async def test_watcher_loads_earlier_revocations_at_start(sessions, store_b, clock):
    sid = await new_family(sessions)
    await sessions.revoke_family(sid, "admin")

    late = RevocationWatcher(store_b, ttl_s=TTL_S, clock=clock, log=Lines())
    await late.start()
    try:
        assert late.is_revoked(sid)
    finally:
        await late.close()


async def test_watcher_reloads_after_losing_its_connection(sessions, watcher, pg_cluster, pg_url):
    database = urlsplit(pg_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_cluster.url)
    try:
        reloads = watcher.reloads
        # Keep the watcher out while it is down, so the revocation below is
        # certainly made while it cannot hear the notification.
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'gatehouse-revocations'",
            database,
        )
        assert killed == 1
        await until(lambda: not watcher.connected)

        sid = await new_family(sessions)  # through store_a's pool, connected already
        await sessions.revoke_family(sid, "admin")
        await asyncio.sleep(0.3)  # a few reconnect attempts fail meanwhile
        assert not watcher.is_revoked(sid)

        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await until(lambda: watcher.is_revoked(sid))
        assert watcher.connected and watcher.reloads == reloads + 1

        # And it listens again.
        later = await new_family(sessions)
        await sessions.revoke_family(later, "admin")
        await until(lambda: watcher.is_revoked(later))
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()


async def test_entries_expire_after_the_token_lifetime(sessions, watcher, clock):
    sid = await new_family(sessions)
    await sessions.revoke_family(sid, "admin")
    await until(lambda: watcher.is_revoked(sid))

    # Every access token of the family has expired (with leeway) by then.
    clock.advance(TTL_S + MARGIN_S - 1)
    assert watcher.is_revoked(sid)
    clock.advance(2)
    assert not watcher.is_revoked(sid)

    # The next revocation heard sweeps the expired entry out of memory.
    before = len(watcher)
    other = await new_family(sessions)
    await sessions.revoke_family(other, "admin")
    await until(lambda: watcher.is_revoked(other))
    assert len(watcher) <= before


async def test_set_stays_bounded(sessions, watcher, clock):
    # One revocation every tenth of a token lifetime: at most the last
    # ~(ttl + margin) / step of them can be remembered at any time.
    step = TTL_S / 10
    bound = int((TTL_S + MARGIN_S) / step) + 1
    sizes = []
    for _ in range(40):
        sid = await new_family(sessions)
        await sessions.revoke_family(sid, "admin")
        await until(lambda sid=sid: watcher.is_revoked(sid))
        sizes.append(len(watcher))
        clock.advance(step)
    # Early sizes include what earlier tests revoked (loaded at start, some
    # with later clocks); by the last fifteen rounds all of that has expired.
    assert max(sizes[-15:]) <= bound


def test_no_sid_is_never_revoked(store_b):
    assert not RevocationWatcher(store_b, ttl_s=TTL_S).is_revoked(None)
    assert not RevocationWatcher(store_b, ttl_s=TTL_S).is_revoked("unknown")
