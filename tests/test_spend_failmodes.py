"""When PostgreSQL stops answering: fail open by default, fail closed when configured; and what
is refused before the spend gate runs at all."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from tests.harness import make_config, start_gateway, upstream_block
from tests.netfaults import TcpProxy

BODY = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}).encode()
ADMIN = """
admin:
  write_keys: [{id: t, key: "admin-write-key-0123456789abcdef0123456789"}]
gatehouse:
  spend:
    store_timeout_ms: 300
"""


async def capped_then_store_down(pg_cluster, fake_upstream, name: str, extra: str):
    """A gateway behind a TCP proxy to PostgreSQL, a cap in force (seen by one admitted request),
    then the proxy stopped. Returns the gateway, the proxy and the client session."""
    db = pg_cluster.create_database(name)
    url = urlsplit(db)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    gw = await start_gateway(make_config(proxied, [upstream_block(fake_upstream.url)], ADMIN + extra))
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
