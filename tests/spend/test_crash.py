"""A PostgreSQL crash under load loses no charge (issue 12): served × cost = recorded.

A gateway with a cap in force serves a steady stream of requests from several people while one
of its database backends is killed with SIGKILL: PostgreSQL then ends every connection and
runs crash recovery, as after an OOM kill. Requests keep being served (fail-open, or against
leases), and once the database is back every one of them is charged exactly what it cost,
once; nothing is reported unsettled and nothing stays reserved. The cluster is this module's
own, so the crash touches no other test's connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import asyncpg
import pytest

from gateway.devenv.postgres import Cluster
from gateway.http.keys import RUNTIME
from tests.harness import make_config, start_gateway, upstream_block

WRITE_KEY = "admin-write-key-0123456789abcdef0123456789"
CONFIG = f"""
admin:
  write_keys: [{{id: t, key: "{WRITE_KEY}"}}]
gatehouse:
  spend:
    store_timeout_ms: 300
"""
BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}).encode()
PEOPLE = [f"user-{n}" for n in range(6)]


@pytest.fixture(scope="module")
async def own_cluster():
    with Cluster.start() as cluster:
        # Throwaway clusters skip synchronous commit for speed, and a crash then loses commits
        # already acknowledged: PostgreSQL's own trade, which no client can make up for. A
        # production database commits synchronously; so does this one.
        conn = await asyncpg.connect(cluster.url)
        try:
            await conn.execute("ALTER SYSTEM SET synchronous_commit = on")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        yield cluster


async def charges(db: str) -> tuple[dict[str, int], int, int]:
    """Settled requests (id → µUSD), and the monthly spent and reserved summed over every person."""
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "SELECT request_id, settled_micro FROM spend_reservations "
            "WHERE state = 'settled' AND request_id NOT LIKE 'lease:%'"
        )
        spent, reserved = await conn.fetchrow(
            "SELECT coalesce(sum(spent_micro), 0), coalesce(sum(reserved_micro), 0) FROM spend_counters "
            "WHERE scope_type = 'user' AND period = 'monthly'"
        )
    finally:
        await conn.close()
    return {r["request_id"]: r["settled_micro"] for r in rows}, spent, reserved


async def kill_a_backend(db: str) -> int:
    conn = await asyncpg.connect(db)
    try:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'gatehouse' AND pid <> pg_backend_pid() LIMIT 1"
        )
    finally:
        await conn.close()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the postmaster ends every connection and recovers
    return pid


@pytest.mark.parametrize("leases", [False, True], ids=["per-request", "leases"])
async def test_a_postgresql_crash_under_load_loses_no_charge(own_cluster, fake_upstream, capfd, leases):
    # Without leases every admission asks the database, so the crash lets requests through
    # unjudged (fail-open); with them most are admitted from memory and only settling waits.
    db = own_cluster.create_database(f"crash_{int(leases)}")
    extra = CONFIG + f"    leases: {str(leases).lower()}\n"
    gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], extra))
    served: list[str] = []
    statuses: list[int] = []
    try:
        async with aiohttp.ClientSession() as s:
            limit = {"scope": {"type": "organization"}, "amount": "1000000", "period": "monthly"}
            async with s.post(gw.url + "/v1/organizations/spend_limits", json=limit, headers={"x-api-key": WRITE_KEY}) as r:
                assert r.status == 200
            for _ in range(50):  # the cap reaches the limits cache by NOTIFY
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    assert r.status == 200
                    served.append(r.headers["request-id"])
                    if "anthropic-ratelimit-unified-status" in r.headers:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the cap never applied")

            stop = asyncio.Event()

            async def person(sub: str) -> None:
                auth = gw.auth(sub=sub)
                while not stop.is_set():
                    async with s.post(gw.url + "/v1/messages", data=BODY, headers=auth) as r:
                        await r.read()
                        statuses.append(r.status)
                        if r.status == 200:
                            served.append(r.headers["request-id"])

            ready: list[int] = []

            async def probe() -> None:  # /readyz through the crash: ready or not, never a 500
                while not stop.is_set():
                    async with s.get(gw.url + "/readyz") as r:
                        ready.append(r.status)
                    await asyncio.sleep(0.02)

            load = [asyncio.create_task(person(sub)) for sub in PEOPLE] + [asyncio.create_task(probe())]
            await asyncio.sleep(0.3)
            before_crash = len(served)
            await kill_a_backend(db)
            await asyncio.sleep(1.0)  # the load goes on through the crash and the recovery
            stop.set()
            await asyncio.gather(*load)
            assert len(served) > before_crash  # requests were served through it
            assert set(statuses) == {200}  # fail-open: nobody refused, nothing failed
            assert set(ready) <= {200, 503}

            spend = gw.app[RUNTIME].spend
            for _ in range(150):  # the owed charges land within a second or two
                if spend.owed == 0:
                    break
                await asyncio.sleep(0.1)
            assert spend.owed == 0
    finally:
        await gw.close()

    recorded, spent, reserved = await charges(db)
    cost = recorded[served[0]]
    assert cost > 0
    assert {r: recorded.get(r) for r in served} == {r: cost for r in served}  # each charged, once
    assert spent == cost * len(served)  # served × cost = recorded
    assert reserved == 0  # nothing left held: every reservation settled, every lease given back
    assert '"evt":"spend.unsettled"' not in capfd.readouterr().err
