"""A value the database cannot store is the refusal of that one request, never an internal error.

Checked on the real HTTP path against real PostgreSQL: an IdP whose claims hold
a NUL byte (the session insert would fail), and the middleware's net under every
handler, reached through a route of the test's own that sends such a value to
the real pool.
"""

from __future__ import annotations

import uuid

import aiohttp
from aiohttp import web

from gateway.http.keys import RUNTIME
from tests.auth.test_signin import ALICE, sign_in
from tests.scripted_idp import ScriptedIdp


async def _sign_in_as(pg_cluster, fake_upstream, user):
    from tests.harness import make_config, start_gateway, upstream_block

    db = pg_cluster.create_database("claims_" + uuid.uuid4().hex[:8])
    idp = ScriptedIdp(client_id="gatehouse-tests", client_secret="gatehouse-tests-secret", users={"alice": user})
    async with idp:
        gw = await start_gateway(make_config(db, [upstream_block(fake_upstream.url)], issuer=idp.issuer))
        try:
            return await sign_in(gw)
        finally:
            await gw.close()


async def test_a_group_or_email_holding_a_nul_byte_refuses_the_sign_in_with_a_page(pg_cluster, fake_upstream):
    for claims in ({"groups": ["eng\x00admins"]}, {"email": "alice\x00@example.com"}, {"groups": ["eng\ud800"]}):
        _, page, status, doc = await _sign_in_as(pg_cluster, fake_upstream, {**ALICE, **claims})
        assert page.status == 403, (claims, page.status, page.text[:300])
        assert "Sign-in could not be completed" in page.text
        assert (status, doc["error"]) == (400, "access_denied")


async def test_a_display_name_holding_a_nul_byte_is_left_out_and_the_sign_in_succeeds(pg_cluster, fake_upstream):
    _, page, status, doc = await _sign_in_as(pg_cluster, fake_upstream, {**ALICE, "name": "Al\x00ice"})
    assert page.status == 200, page.text[:300]
    assert status == 200 and doc["access_token"]


async def test_a_value_the_database_refuses_is_a_400_for_that_request_alone(pg_cluster, fake_upstream, capfd):
    from tests.harness import make_config, start_gateway, upstream_block

    async def store_value(request: web.Request) -> web.Response:
        value = (await request.json())["value"]
        async with request.app[RUNTIME].store.pool.acquire() as conn:
            await conn.fetchval("SELECT length($1::text)", value)
        return web.json_response({"stored": True})

    db = pg_cluster.create_database("dataerr_" + uuid.uuid4().hex[:8])
    cfg = make_config(db, [upstream_block(fake_upstream.url)])
    gw = await start_gateway(cfg, before_start=lambda app: app.router.add_post("/test/store", store_value))
    try:
        async with aiohttp.ClientSession() as http:
            for value in ("secret\x00value", "lone \ud800 surrogate"):
                async with http.post(f"{gw.url}/test/store", json={"value": value}) as resp:
                    body = await resp.json()
                    assert resp.status == 400, body
                    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
                    assert resp.headers["request-id"] == body["request_id"]
            async with http.post(f"{gw.url}/test/store", json={"value": "fine"}) as resp:
                assert resp.status == 200
    finally:
        await gw.close()
    err = capfd.readouterr().err
    assert "the database refused a value" in err and "secret" not in err
