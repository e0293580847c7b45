"""The gateway behind a real PgBouncer in transaction pooling mode, and through a primary's restart
and a read-only period (issue #17 item 4).

PgBouncer is Debian's (1.18: no prepared statements across transactions), run as the
``postgres`` user (or as whoever runs the tests) with a config in a temporary folder, on a free
loopback port, in front of a PostgreSQL cluster of this module's own: the tests restart it and
make it read-only, which the session's shared cluster must never see. Gateways point
``store.postgres_url`` at PgBouncer and ``store.gatehouse.listen_url`` straight at PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from gateway.config.load import ConfigError, loads, redacted
from gateway.config.schema import Store as StoreCfg
from gateway.config.schema import StoreGatehouse
from gateway.db.store import Store, connect_params, connection, is_unavailable
from gateway.devenv.postgres import Cluster, free_port
from gateway.http.keys import RUNTIME
from protocol_spec.idp_process import IdpProcess
from tests.auth.test_signin import ALICE, refresh, sign_in
from tests.harness import make_config, start_gateway, upstream_block

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}).encode()
WRITE_KEY = "admin-write-key-0123456789abcdef0123456789"
ADMIN = {"x-api-key": WRITE_KEY}


def quiet(level: str, message: str) -> None:
    pass


class PgBouncer:
    """One pgbouncer process in transaction pooling mode in front of ``pg``; ``stop()`` ends it."""

    def __init__(self, pg: Cluster, *, pool_size: int = 4) -> None:
        self.folder = tempfile.mkdtemp(prefix="gatehouse-pgbouncer-")
        self.port = free_port()
        ini = os.path.join(self.folder, "pgbouncer.ini")
        users = os.path.join(self.folder, "userlist.txt")
        with open(users, "w") as fh:
            fh.write('"postgres" ""\n')
        with open(ini, "w") as fh:
            fh.write(
                f"""[databases]
* = host=127.0.0.1 port={pg.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
; a client waits this long for a server connection (default 120 s)
query_wait_timeout = 10
; after a failed server login, try again after this long (default 15 s)
server_login_retry = 1
logfile = {os.path.join(self.folder, "pgbouncer.log")}
"""
            )
        run_as: list[str] = []
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            owner = pwd.getpwnam("postgres")
            for path in (self.folder, ini, users):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.proc = subprocess.Popen([*run_as, binary, ini], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._listening():
            assert self.proc.poll() is None, f"pgbouncer exited: {self.log()}"
            assert time.monotonic() < deadline, f"pgbouncer did not listen: {self.log()}"
            time.sleep(0.05)

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        try:
            with open(os.path.join(self.folder, "pgbouncer.log")) as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pg() -> Iterator[Cluster]:
    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def bouncer(pg: Cluster) -> Iterator[PgBouncer]:
    if shutil.which("pgbouncer") is None and not os.path.exists("/usr/sbin/pgbouncer"):
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)")
    b = PgBouncer(pg)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def idp():
    with IdpProcess([ALICE]) as proc:
        yield proc


def pooled(pg: Cluster, bouncer: PgBouncer, name: str) -> tuple[str, str]:
    """A fresh database: (its URL through PgBouncer, its URL straight to PostgreSQL)."""
    direct = pg.create_database(name)
    return bouncer.url_for(name), direct


def store_yaml(through: str, direct: str) -> str:
    return f"""
store:
  postgres_url: {through}
  gatehouse:
    listen_url: {direct}
    pool_mode: transaction
"""


def gateway_config(through: str, direct: str, upstream: str, extra: str = "", **kw: Any) -> Any:
    cfg = make_config(through, [upstream_block(upstream)], extra, **kw)
    # make_config writes store.postgres_url only; the rest of the store section is ours.
    store = msgspec.structs.replace(
        cfg.store, gatehouse=StoreGatehouse(listen_url=direct, pool_mode="transaction")
    )
    return msgspec.structs.replace(cfg, store=store)


async def wait_until(predicate, timeout: float = 15.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(every)


async def cap_applies(s: aiohttp.ClientSession, gw, headers: dict[str, str]) -> None:
    """An organisation cap, then requests until one is admitted against it (limits arrive by NOTIFY)."""
    limit = {"scope": {"type": "organization"}, "amount": "100000", "period": "monthly"}
    async with s.post(gw.url + "/v1/organizations/spend_limits", json=limit, headers=ADMIN) as r:
        assert r.status == 200, await r.text()

    async def admitted() -> bool:
        async with s.post(gw.url + "/v1/messages", data=BODY, headers=headers) as r:
            assert r.status == 200
            return "anthropic-ratelimit-unified-status" in r.headers

    await wait_until(admitted, every=0.05)


async def settled(direct: str) -> dict[str, int]:
    conn = await asyncpg.connect(direct)
    try:
        rows = await conn.fetch("SELECT request_id, settled_micro FROM spend_reservations WHERE state = 'settled'")
    finally:
        await conn.close()
    return {r["request_id"]: r["settled_micro"] for r in rows}


async def spent(direct: str, sub: str) -> int:
    conn = await asyncpg.connect(direct)
    try:
        return await conn.fetchval(
            "SELECT coalesce(spent_micro, 0) FROM spend_counters WHERE scope_type = 'user' AND scope_id = $1 AND period = 'monthly'",
            sub,
        ) or 0
    finally:
        await conn.close()


# ---------------------------------------------------------------- configuration


def test_transaction_pooling_needs_a_direct_url_for_listen_and_migrations():
    text = """
listen: {host: 127.0.0.1, port: 8080}
oidc: {issuer: "https://idp.example.com", client_id: c, client_secret: s}
session: {jwt_secret: "0123456789abcdef0123456789abcdef"}
store:
  postgres_url: postgres://gw@pgbouncer:6432/gw
  gatehouse: {pool_mode: transaction}
upstreams: [{provider: anthropic, auth: {api_key: k}}]
"""
    with pytest.raises(ConfigError) as err:
        loads(text, {}, source="<test>")
    assert "store.gatehouse.listen_url: required when store.gatehouse.pool_mode is transaction" in str(err.value)
    # PgBouncer's statement mode would break every transaction: not a choice.
    with pytest.raises(ConfigError) as err:
        loads(text.replace("{pool_mode: transaction}", "{pool_mode: statement}"), {}, source="<test>")
    assert "store.gatehouse.pool_mode: must be one of 'session', 'transaction'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        loads(text.replace("{pool_mode: transaction}", "{listen_url: mysql://x}"), {}, source="<test>")
    assert "store.gatehouse.listen_url: must start with postgres:// or postgresql://" in str(err.value)
    ok = loads(text.replace("{pool_mode: transaction}", "{pool_mode: transaction, listen_url: postgres://gw@db:5432/gw}"), {}, source="<test>")
    assert ok.store.gatehouse.listen_url == "postgres://gw@db:5432/gw"


def test_the_direct_url_is_used_only_for_session_work_and_its_password_is_masked():
    cfg = StoreCfg(
        "postgres://gw:pooled-secret@pgbouncer:6432/gw?sslmode=require",
        gatehouse=StoreGatehouse(listen_url="postgres://gw:direct-secret@db:5432/gw?sslmode=verify-full", pool_mode="transaction"),
    )
    pooled_params, direct_params = connect_params(cfg), connect_params(cfg, direct=True)
    assert (pooled_params["host"], pooled_params["port"], pooled_params["ssl"]) == ("pgbouncer", 6432, "require")
    assert (direct_params["host"], direct_params["port"], direct_params["ssl"]) == ("db", 5432, "verify-full")
    assert direct_params["password"] == "direct-secret"
    # store.password wins over both URLs' passwords, as it always did over postgres_url's.
    both = msgspec.structs.replace(cfg, password="from-the-store-section")
    assert connect_params(both, direct=True)["password"] == "from-the-store-section"
    # Without listen_url, session work goes where everything else goes.
    assert connect_params(StoreCfg("postgres://gw@db:5432/gw"), direct=True)["host"] == "db"
    text = """
listen: {host: 127.0.0.1, port: 8080}
oidc: {issuer: "https://idp.example.com", client_id: c, client_secret: s}
session: {jwt_secret: "0123456789abcdef0123456789abcdef"}
store:
  postgres_url: postgres://gw:pooled-secret@pgbouncer:6432/gw
  gatehouse: {pool_mode: transaction, listen_url: "postgres://gw:direct-secret@db:5432/gw"}
upstreams: [{provider: anthropic, auth: {api_key: k}}]
"""
    shown = json.dumps(redacted(loads(text, {}, source="<test>")))
    assert "pooled-secret" not in shown and "direct-secret" not in shown and "postgres://gw:" in shown


def test_a_read_only_database_is_an_outage_not_a_bug():
    # A demoted primary (or a replica answering during promotion) refuses writes with 25006:
    # the writable database is not there right now, so the work waits or fails over like any outage.
    assert is_unavailable(asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"))
    assert is_unavailable(asyncpg.exceptions.CannotConnectNowError("the database system is starting up"))
    assert is_unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"))


async def test_a_pooled_connection_that_met_a_read_only_server_is_closed_not_reused(pg):
    # After a failover the old address may still reach the demoted primary on connections
    # opened before; a new connection resolves the address again and may reach the new one.
    db = pg.create_database("pgb_read_only_conn")
    store = await Store.open(StoreCfg(db, max_connections=1), log=quiet)
    try:
        async with connection(store.pool, 5) as conn:
            before = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            async with connection(store.pool, 5) as conn:
                await conn.execute("SET default_transaction_read_only = on")  # as a demoted primary answers
                await conn.execute("CREATE TABLE t (x int)")
        async with connection(store.pool, 5) as conn:
            after = await conn.fetchval("SELECT pg_backend_pid()")
            assert not await conn.fetchval("SELECT current_setting('transaction_read_only')::bool")
        assert after != before
    finally:
        await store.close()


# ---------------------------------------------------------------- migrations


async def test_concurrent_migrations_through_pgbouncer_apply_each_migration_once(pg, bouncer):
    through, direct = pooled(pg, bouncer, "pgb_migrate")
    cfg = StoreCfg(through, connect_timeout_seconds=5, gatehouse=StoreGatehouse(listen_url=direct, pool_mode="transaction"))
    stores = [await Store.open(cfg, log=quiet) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        assert sorted(v for done in applied for v in done) == sorted(set(v for done in applied for v in done))
        assert any(applied)
        # The lock was taken and released on direct connections: none is left held.
        conn = await asyncpg.connect(direct)
        try:
            held = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            versions = await conn.fetch("SELECT version FROM gatehouse_migrations ORDER BY version")
        finally:
            await conn.close()
        assert held == 0
        assert [r["version"] for r in versions] == sorted(v for done in applied for v in done)
        assert await stores[0].migrate() == []  # and again: nothing to do, no lock left behind
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------- the full path


async def test_sign_in_spend_caps_and_revocation_through_pgbouncer(pg, bouncer, idp, fake_upstream):
    through, direct = pooled(pg, bouncer, "pgb_path")
    extra = f"""
admin:
  write_keys: [{{id: t, key: "{WRITE_KEY}"}}]
gatehouse:
  spend:
    leases: false
"""
    cfg = gateway_config(through, direct, fake_upstream.url, extra, issuer=idp.issuer)
    a = await start_gateway(cfg)
    b = await start_gateway(cfg, bind_port=free_port())
    try:
        _, _, status, doc = await sign_in(a)
        assert status == 200, doc
        bearer = {"Authorization": f"Bearer {doc['access_token']}"}
        async with aiohttp.ClientSession() as s:
            await cap_applies(s, a, bearer)
            served = []
            for gw in (a, b) * 5:
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=bearer) as r:
                    assert r.status == 200
                    assert r.headers["anthropic-ratelimit-unified-status"] == "allowed"
                    served.append(r.headers["request-id"])
            status, _, fresh = await refresh(b, doc["refresh_token"])  # the rotation, on the other replica
            assert status == 200, fresh
            costs = await wait_until(lambda: _all_settled(direct, served))
            assert len(set(costs.values())) == 1 and min(costs.values()) > 0

            # A revocation on one replica reaches the other by NOTIFY on its direct connection.
            bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
            async with s.post(b.url + "/v1/messages", data=BODY, headers=bearer) as r:
                assert r.status == 200
            async with s.post(a.url + "/v1/organizations/sessions/revoke", json={"email": ALICE["email"]}, headers=ADMIN) as r:
                assert r.status == 200, await r.text()

            async def refused_on_b() -> bool:
                async with s.post(b.url + "/v1/messages", data=BODY, headers=bearer) as r:
                    return r.status == 401

            await wait_until(refused_on_b, timeout=5)
        # Both listeners sit on direct connections, not on PgBouncer's.
        assert await listeners(direct) == 2
    finally:
        await a.close()
        await b.close()


async def listeners(direct: str) -> int:
    """LISTEN connections of gateways on this database (each names itself gatehouse-listener)."""
    conn = await asyncpg.connect(direct)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gatehouse-listener' AND datname = current_database()"
        )
    finally:
        await conn.close()


async def _equals(value, expected) -> bool:
    return await value == expected


async def _all_settled(direct: str, served: list[str]) -> dict[str, int] | None:
    done = await settled(direct)
    return {r: done[r] for r in served} if all(r in done for r in served) else None


# ---------------------------------------------------------------- failover


async def test_a_restart_and_a_read_only_period_under_traffic_lose_no_settled_spend(pg, bouncer, fake_upstream):
    through, direct = pooled(pg, bouncer, "pgb_failover")
    extra = f"""
admin:
  write_keys: [{{id: t, key: "{WRITE_KEY}"}}]
gatehouse:
  spend:
    leases: false
    store_timeout_ms: 1000
"""
    fail_open = await start_gateway(gateway_config(through, direct, fake_upstream.url, extra))
    closed_cfg = gateway_config(through, direct, fake_upstream.url, extra + "enforcement:\n  fail_closed_on_error: true\n")
    fail_closed = await start_gateway(closed_cfg, bind_port=free_port())
    gateways = (fail_open, fail_closed)
    statuses: dict[str, dict[int, int]] = {"open": {}, "closed": {}}
    served: list[str] = []
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            await cap_applies(s, fail_open, fail_open.auth())
            await cap_applies_seen(s, fail_closed)

            async def traffic(gw, name: str) -> None:
                while not stop.is_set():
                    async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                        await r.read()
                        statuses[name][r.status] = statuses[name].get(r.status, 0) + 1
                        if r.status == 200:
                            served.append(r.headers["request-id"])
                    await asyncio.sleep(0.02)

            load = [asyncio.create_task(traffic(fail_open, "open")), asyncio.create_task(traffic(fail_closed, "closed"))]
            await asyncio.sleep(0.5)

            # 1. The primary restarts (pg_ctl -m fast): every server connection is cut.
            await asyncio.to_thread(pg.pause)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pg.resume)
            await healthy_again(s, gateways)

            # 2. A read-only period, as while a replica is promoted.
            await set_read_only(direct, True)
            before = {k: dict(v) for k, v in statuses.items()}
            await asyncio.sleep(2.0)
            during = {k: _minus(statuses[k], before[k]) for k in statuses}
            await set_read_only(direct, False)
            await healthy_again(s, gateways)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*load)

            # Fail open kept serving; fail closed refused while writes were refused.
            assert set(during["open"]) == {200}, during
            assert 429 in during["closed"] and set(during["closed"]) <= {200, 429}, during
            assert set(statuses["open"]) == {200} and set(statuses["closed"]) <= {200, 429}, statuses

            # Every request served was charged exactly once, once the store took the owed charges.
            costs = await wait_until(lambda: _all_settled(direct, served), timeout=20)
            cost = max(costs.values())
            assert set(costs.values()) == {cost} and cost > 0
            for gw in gateways:
                assert gw.app[RUNTIME].spend.owed == 0
            # The counters hold exactly what the settlements say: nothing lost, nothing twice.
            # A refused request is recorded as settled at nothing, so it can never be charged later.
            everything = await settled(direct)
            assert await spent(direct, "user-dev") == sum(everything.values())
            assert {v for v in everything.values() if v} == {cost}
            assert sum(1 for v in everything.values() if v == 0) == statuses["closed"].get(429, 0)
            # The listeners reconnected by themselves.
            await wait_until(lambda: _equals(listeners(direct), 2))
    finally:
        stop.set()
        for gw in gateways:
            await gw.close()


def _minus(now: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


async def cap_applies_seen(s: aiohttp.ClientSession, gw) -> None:
    async def admitted() -> bool:
        async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
            return r.status == 200 and "anthropic-ratelimit-unified-status" in r.headers

    await wait_until(admitted, every=0.05)


async def healthy_again(s: aiohttp.ClientSession, gateways) -> None:
    """Each gateway admits a capped request against the store again, by itself."""
    for gw in gateways:
        await cap_applies_seen(s, gw)


async def set_read_only(direct: str, on: bool) -> None:
    conn = await asyncpg.connect(direct)
    try:
        await conn.execute("SET default_transaction_read_only = off")  # this session may still write
        if on:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
