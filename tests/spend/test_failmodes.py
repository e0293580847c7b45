"""When PostgreSQL stops answering: fail open by default, fail closed when configured; every
request served meanwhile is charged once the store is back; one request's values never fail
another's; and what is refused before the spend gate runs at all."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from gateway.http.keys import RUNTIME
from tests.harness import make_config, start_gateway, upstream_block
from tests.netfaults import TcpProxy

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}).encode()
ADMIN = """
admin:
  write_keys: [{id: t, key: "admin-write-key-0123456789abcdef0123456789"}]
gatehouse:
  spend:
    store_timeout_ms: 1000
"""


async def capped_then_store_down(pg_cluster, fake_upstream, name: str, extra: str):
    """A gateway behind a TCP proxy to PostgreSQL, a cap in force (seen by one admitted request),
    then the proxy stopped. Returns the gateway, the proxy and the client session; the database's
    URL (direct, not through the proxy) is ``gw.db``."""
    db = pg_cluster.create_database(name)
    url = urlsplit(db)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    gw = await start_gateway(make_config(proxied, [upstream_block(fake_upstream.url)], ADMIN + extra))
    gw.db = db
    s = aiohttp.ClientSession()
    limit = {"scope": {"type": "organization"}, "amount": "100000", "period": "monthly"}
    async with s.post(gw.url + "/v1/organizations/spend_limits", json=limit, headers={"x-api-key": "admin-write-key-0123456789abcdef0123456789"}) as r:
        assert r.status == 200
    for _ in range(50):  # the new cap reaches the limits cache by NOTIFY
        async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
            assert r.status == 200
            if "anthropic-ratelimit-unified-status" in r.headers:
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the cap never applied")
    await asyncio.sleep(0.2)  # a lease, if one was asked for, is granted by now
    await proxy.stop()  # PostgreSQL unreachable from here on
    return gw, proxy, s


@pytest.mark.parametrize("fail_closed", [False, True])
async def test_store_down_during_the_spend_check(pg_cluster, fake_upstream, fail_closed):
    extra = "    leases: false\n" + ("enforcement:\n  fail_closed_on_error: true\n" if fail_closed else "")
    gw, proxy, s = await capped_then_store_down(pg_cluster, fake_upstream, f"failmode_{int(fail_closed)}", extra)
    try:
        async with s:
            async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                doc = await r.read()
                if fail_closed:
                    assert r.status == 429
                    assert json.loads(doc)["error"] == {"type": "billing_error", "message": "spend limit unavailable"}
                    assert r.headers["x-should-retry"] == "false"
                    assert r.headers["anthropic-ratelimit-unified-overage-disabled-reason"] == "fetch_error"
                    unified = [h for h in r.headers if h.lower().startswith("anthropic-ratelimit-unified-")]
                    assert [h.lower() for h in unified] == ["anthropic-ratelimit-unified-overage-disabled-reason"]
                    assert "retry-after" not in r.headers
                else:
                    assert r.status == 200
                    assert not [h for h in r.headers if h.lower().startswith("anthropic-ratelimit-")]
            # count_tokens is never blocked, store or not.
            async with s.post(gw.url + "/v1/messages/count_tokens", data=BODY, headers=gw.auth()) as r:
                assert r.status == 200
            async with s.get(gw.url + "/api/oauth/usage", headers=gw.auth()) as r:
                assert r.status == 503
        await proxy.start()  # PostgreSQL is back: queued usage rows and settlements land
    finally:
        await gw.close()


async def test_store_down_a_lease_admits_until_it_is_stale_then_enforcement_fails_closed(pg_cluster, fake_upstream):
    # A lease is headroom already reserved in the store, so admitting against it needs no store:
    # the cap still holds. Once the lease has gone unrenewed for half its time to live, the
    # store is asked again, and fail_closed_on_error decides.
    extra = "    lease_ttl_seconds: 4\nenforcement:\n  fail_closed_on_error: true\n"
    gw, proxy, s = await capped_then_store_down(pg_cluster, fake_upstream, "failmode_lease", extra)
    try:
        async with s:
            async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                assert r.status == 200
                assert r.headers["anthropic-ratelimit-unified-status"] == "allowed"  # from the lease
            await asyncio.sleep(2.5)  # renewals fail meanwhile; the lease is now stale
            async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                assert r.status == 429
                assert json.loads(await r.read())["error"]["message"] == "spend limit unavailable"
        await proxy.start()
    finally:
        await gw.close()


async def settled(db: str) -> tuple[dict[str, int], int]:
    """Every stored settlement (request id → µUSD charged), and user-dev's (gw.auth()'s) monthly spend."""
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT request_id, settled_micro FROM spend_reservations WHERE state = 'settled'")
        spent = await conn.fetchval(
            "SELECT spent_micro FROM spend_counters WHERE scope_type = 'user' AND scope_id = 'user-dev' AND period = 'monthly'"
        )
    finally:
        await conn.close()
    return {r["request_id"]: r["settled_micro"] for r in rows}, spent


async def test_requests_served_through_an_outage_are_each_charged_once_when_the_store_is_back(
    pg_cluster, fake_upstream
):
    # Issue 12: fail-open requests were settled at 0. Now each is charged what it cost, once.
    gw, proxy, s = await capped_then_store_down(pg_cluster, fake_upstream, "failmode_charged", "    leases: false\n")
    try:
        async with s:
            before, spent_before = await settled(gw.db)
            costs = set(before.values())
            assert len(costs) == 1 and (cost := costs.pop()) > 0  # the same body costs the same
            assert spent_before == cost * len(before)

            async def one() -> str:
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    assert r.status == 200
                    await r.read()
                    return r.headers["request-id"]

            served = await asyncio.gather(*(one() for _ in range(12)))  # together: one failed batch
            served += [await one() for _ in range(3)]  # one by one: a timeout each
            assert gw.app[RUNTIME].spend.owed == 15
            await proxy.start()  # the store is back: the owed charges land within a second or two
            for _ in range(150):
                after, spent = await settled(gw.db)
                if len(after) == len(before) + len(served):
                    break
                await asyncio.sleep(0.1)
            assert {r: after.get(r) for r in served} == {r: cost for r in served}
            assert spent == cost * (len(before) + len(served))  # served × cost = recorded
            assert gw.app[RUNTIME].spend.owed == 0
    finally:
        await gw.close()
    assert await settled(gw.db) == (after, spent)  # shutdown stored nothing twice


async def test_at_the_owed_bound_requests_are_refused_not_served_uncharged(pg_cluster, fake_upstream):
    gw, proxy, s = await capped_then_store_down(pg_cluster, fake_upstream, "failmode_bound", "    leases: false\n")
    rt = gw.app[RUNTIME]
    rt.spend.max_owed = 3  # what MAX_OWED (100 000) is in production
    try:
        async with s:
            served = []
            for _ in range(3):
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    assert r.status == 200
                    served.append(r.headers["request-id"])
            async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                assert r.status == 429
                assert json.loads(await r.read())["error"] == {"type": "billing_error", "message": "spend limit unavailable"}
                assert r.headers["x-should-retry"] == "false"
                refused = r.headers.get("request-id")
            assert rt.spend.owed == 3  # the refusal owes nothing
            await proxy.start()
            for _ in range(150):  # admitting again once the store has taken the owed charges
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("never admitted again")
            after, _ = await settled(gw.db)
            assert all(after.get(r, 0) > 0 for r in served)
            assert refused is None or refused not in after
    finally:
        await gw.close()


async def test_a_request_whose_values_the_store_refuses_is_refused_alone(pg_cluster, fake_upstream):
    # The body view keeps control characters out of `model`; a subject from the identity provider
    # still reaches the store. PostgreSQL cannot hold NUL: that request alone gets a clear 400,
    # the requests batched with it (other people's) are admitted and served.
    db = pg_cluster.create_database("failmode_poison")
    # The store is up here: a generous timeout, so halving a refused batch down to the one
    # bad request never runs past it on a busy machine (which would let requests through unjudged).
    admin = ADMIN.replace("store_timeout_ms: 1000", "store_timeout_ms: 10000")
    gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], admin + "    leases: false\n"))
    try:
        async with aiohttp.ClientSession() as s:
            limit = {"scope": {"type": "organization"}, "amount": "100000", "period": "monthly"}
            async with s.post(gw.url + "/v1/organizations/spend_limits", json=limit, headers={"x-api-key": "admin-write-key-0123456789abcdef0123456789"}) as r:
                assert r.status == 200
            for _ in range(50):  # the cap reaches the limits cache by NOTIFY
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    if "anthropic-ratelimit-unified-status" in r.headers:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the cap never applied")

            async def one(sub: str) -> tuple[int, dict]:
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth(sub=sub)) as r:
                    return r.status, json.loads(await r.read())

            subs = [f"user-{n}" for n in range(40)]
            subs.insert(20, "user-\x00-poisoned")
            results = await asyncio.gather(*(one(sub) for sub in subs))
            poisoned = results.pop(20)
            assert poisoned[0] == 400 and poisoned[1]["error"]["type"] == "invalid_request_error"
            assert "cannot be stored" in poisoned[1]["error"]["message"]
            assert [status for status, _ in results] == [200] * 40
    finally:
        await gw.close()


async def test_a_model_outside_the_allowlist_is_refused_before_the_spend_gate(pg_cluster, fake_upstream):
    # Over the cap and asking for a model the policy leaves out: the allowlist answers (400, SPEC
    # MSG-4) and the spend gate never runs, so nothing is reserved for a request that cannot go.
    db = pg_cluster.create_database("allowlist_first")
    extra = ADMIN + """
managed:
  policies:
    - match: {}
      cli:
        availableModels: [claude-haiku-4-5]
"""
    gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], extra))
    try:
        async with aiohttp.ClientSession() as s:
            limit = {"scope": {"type": "organization"}, "amount": "0", "period": "monthly"}
            async with s.post(gw.url + "/v1/organizations/spend_limits", json=limit, headers={"x-api-key": "admin-write-key-0123456789abcdef0123456789"}) as r:
                assert r.status == 200
            allowed = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []}).encode()
            for _ in range(50):  # the zero cap reaches the limits cache by NOTIFY
                async with s.post(gw.url + "/v1/messages", data=allowed, headers=gw.auth()) as r:
                    if r.status == 429:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the cap never applied")
            conn = await asyncpg.connect(db)
            try:
                await asyncio.sleep(0.2)  # the first request's settlement (queued up to 50 ms) is stored
                before = await conn.fetchval("SELECT count(*) FROM spend_reservations")
                async with s.post(gw.url + "/v1/messages", data=BODY, headers=gw.auth()) as r:
                    doc = json.loads(await r.read())
                    assert r.status == 400 and doc["error"]["type"] == "invalid_request_error"
                    assert "claude-sonnet-4-6" in doc["error"]["message"]
                await asyncio.sleep(0.2)  # a settlement, had there been a reservation, would be stored by now
                assert await conn.fetchval("SELECT count(*) FROM spend_reservations") == before
            finally:
                await conn.close()
    finally:
        await gw.close()
