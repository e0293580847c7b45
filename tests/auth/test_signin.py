"""Sign-in end to end: the CLI's device flow, a scripted browser, a real OIDC provider process."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import pytest

from protocol_spec.browser import ScriptedBrowser, approve_device
from protocol_spec.idp_process import IdpProcess

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ALICE = {"sub": "alice", "email": "alice@example.com", "email_verified": True, "name": "Alice", "groups": ["eng"]}
BOB = {"sub": "bob", "email": "bob@contractor.test", "email_verified": True, "name": "Bob", "groups": ["contractors"]}
UNVERIFIED = {"sub": "mallory", "email": "mallory@example.com", "email_verified": False, "groups": ["eng"]}


@pytest.fixture(scope="module")
def idp():
    with IdpProcess([ALICE, BOB, UNVERIFIED]) as proc:
        yield proc


class FakeClock:
    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


async def cli_post(url: str, data: dict | None = None, **kw):
    """What the CLI sends: a form body, its own user agent, no client_id."""
    headers = {"User-Agent": "claude-code/2.1.328", "Accept": "application/json, text/plain, */*"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=data or {}, headers=headers, allow_redirects=False, **kw) as r:
            text = await r.text()
            return r.status, r.headers, (json.loads(text) if text else None)


async def start_device(gw):
    status, headers, doc = await cli_post(gw.url + "/oauth/device_authorization", {"surface": "claude_code"})
    assert status == 200 and headers["Cache-Control"] == "no-store"
    return doc


async def poll(gw, device_code):
    return await cli_post(gw.url + "/oauth/token", {"grant_type": DEVICE_GRANT, "device_code": device_code})


async def sign_in(gw, sub="alice"):
    dev = await start_device(gw)
    browser = ScriptedBrowser()
    try:
        page = await approve_device(browser, dev["verification_uri_complete"], idp_fields={"sub": sub})
    finally:
        await browser.close()
    status, _, doc = await poll(gw, dev["device_code"])
    return dev, page, status, doc


@pytest.fixture
async def signin_gateways(pg_cluster, fake_upstream, idp):
    """Gateways on a fresh database per test, so sign-in rate counters never leak between tests.

    ``await make(extra="", replicas=1, base=..., **build_kwargs)`` → list of replicas serving one config.
    """
    import uuid

    from tests.harness import BASE_CONFIG, free_port, make_config, start_gateway, upstream_block

    db = pg_cluster.create_database("signin_" + uuid.uuid4().hex[:10])
    started = []

    async def make(extra: str = "", *, replicas: int = 1, base: str = BASE_CONFIG, **kw):
        cfg = make_config(db, [upstream_block(fake_upstream.url)], extra, issuer=idp.issuer, base=base)
        gws = [await start_gateway(cfg, **kw)]
        for _ in range(replicas - 1):
            gws.append(await start_gateway(cfg, bind_port=free_port(), **kw))
        started.extend(gws)
        return gws

    yield make
    for gw in started:
        await gw.close()


async def gateway_with_idp(signin_gateways, extra="", **kw):
    return (await signin_gateways(extra, **kw))[0]


# ------------------------------------------------------------------ discovery and device authorization


async def test_discovery_document_is_built_from_public_url(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/.well-known/oauth-authorization-server", headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"}) as r:
            doc = await r.json()
    assert doc["issuer"] == gw.url
    assert doc["device_authorization_endpoint"] == gw.url + "/oauth/device_authorization"
    assert doc["token_endpoint"] == gw.url + "/oauth/token"
    assert doc["revocation_endpoint"] == gw.url + "/oauth/revoke"
    assert doc["grant_types_supported"] == [DEVICE_GRANT, "refresh_token"]
    assert "authorization_endpoint" not in doc


async def test_device_authorization_shape(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways, "gatehouse:\n  signin:\n    login_notice: Use your corp account\n")
    doc = await start_device(gw)
    assert len(doc["device_code"]) >= 43
    code = doc["user_code"]
    assert len(code) == 9 and code[4] == "-" and set(code.replace("-", "")) <= set("BCDFGHJKLMNPQRSTVWXZ")
    assert doc["verification_uri"] == gw.url + "/device"
    assert doc["verification_uri_complete"] == f"{gw.url}/device?user_code={code}"
    assert (doc["expires_in"], doc["interval"]) == (600, 5)
    assert doc["login_notice"] == "Use your corp account"
    # An empty form and unknown parameters are fine.
    status, _, _ = await cli_post(gw.url + "/oauth/device_authorization", {"client_id": "x", "whatever": "1"})
    assert status == 200


# ------------------------------------------------------------------ the happy path


async def test_full_sign_in_then_inference(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    dev, page, status, doc = await sign_in(gw)
    assert page.status == 200 and "signed in" in page.text.lower()
    assert status == 200, doc
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 3600
    assert doc["email"] == "alice@example.com"
    assert doc["refresh_token"]
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/v1/messages",
            data=json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}),
            headers={"Authorization": f"Bearer {doc['access_token']}"},
        ) as r:
            assert r.status == 200
    # The device code is single use.
    status, _, again = await poll(gw, dev["device_code"])
    assert (status, again) == (400, {"error": "expired_token"})


async def test_pending_then_slow_down(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    dev = await start_device(gw)
    status, _, doc = await poll(gw, dev["device_code"])
    assert (status, doc) == (400, {"error": "authorization_pending"})
    status, _, doc = await poll(gw, dev["device_code"])
    assert (status, doc) == (429, {"error": "slow_down"})


async def test_unknown_device_code_is_expired_token(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    status, _, doc = await poll(gw, "no-such-code")
    assert (status, doc) == (400, {"error": "expired_token"})


async def test_expired_device_code(signin_gateways, idp):
    clock = FakeClock()
    gw = await gateway_with_idp(signin_gateways, clock=clock)
    dev = await start_device(gw)
    clock.offset += 601
    status, _, doc = await poll(gw, dev["device_code"])
    assert (status, doc) == (400, {"error": "expired_token"})


async def test_token_endpoint_errors(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    status, _, doc = await cli_post(gw.url + "/oauth/token", {"grant_type": "password"})
    assert (status, doc["error"]) == (400, "unsupported_grant_type")
    status, _, doc = await cli_post(gw.url + "/oauth/token", {"grant_type": DEVICE_GRANT})
    assert (status, doc["error"]) == (400, "invalid_request")
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/oauth/token", json={"grant_type": DEVICE_GRANT}) as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_request"


# ------------------------------------------------------------------ the verification page


async def test_prefilled_code_is_not_auto_approved(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    dev = await start_device(gw)
    browser = ScriptedBrowser()
    try:
        page = await browser.get(dev["verification_uri_complete"])
        assert page.status == 200 and dev["user_code"] in page.text
        assert "started this sign-in yourself" in page.text
        assert "<script" not in page.text.lower()
    finally:
        await browser.close()
    status, _, doc = await poll(gw, dev["device_code"])
    assert doc == {"error": "authorization_pending"}


async def test_clickjacking_and_csp_headers(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    browser = ScriptedBrowser()
    try:
        page = await browser.get(gw.url + "/device")
    finally:
        await browser.close()
    assert page.headers["X-Frame-Options"] == "DENY"
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp


async def test_cross_site_post_is_blocked(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    dev = await start_device(gw)
    browser = ScriptedBrowser()
    try:
        page = await browser.get(dev["verification_uri_complete"])
        blocked = await browser.submit(page, origin="https://evil.example", follow=False)
        assert blocked.status == 403 and "another site" in blocked.text
        no_origin = await browser.submit(page, origin=None, follow=False)
        assert no_origin.status == 403
    finally:
        await browser.close()
    assert (await poll(gw, dev["device_code"]))[2] == {"error": "authorization_pending"}


async def test_deny(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    dev = await start_device(gw)
    browser = ScriptedBrowser()
    try:
        page = await browser.get(dev["verification_uri_complete"])
        done = await browser.submit(page, button="deny")
        assert done.status == 200 and "denied" in done.text.lower()
    finally:
        await browser.close()
    status, _, doc = await poll(gw, dev["device_code"])
    assert (status, doc) == (400, {"error": "access_denied"})


async def test_unknown_user_code_is_refused_on_the_page(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    browser = ScriptedBrowser()
    try:
        page = await browser.get(gw.url + "/device")
        answer = await browser.submit(page, fields={"user_code": "BCDF-GHJK"}, follow=False)
        assert answer.status == 400 and "not valid" in answer.text
    finally:
        await browser.close()


# ------------------------------------------------------------------ callback checks


async def _to_idp(gw, browser):
    """Approve on the page, stop at the redirect to the IdP; returns (device, location)."""
    dev = await start_device(gw)
    page = await browser.get(dev["verification_uri_complete"])
    redirect = await browser.submit(page, follow=False)
    assert redirect.status == 302
    return dev, redirect.headers["Location"]


async def _idp_to_callback(browser, location, sub="alice"):
    """Drive the IdP's form and stop at its redirect back to our callback; returns the callback URL."""
    idp_page = await browser.get(location)
    back = await browser.submit(idp_page, fields={"sub": sub}, follow=False)
    assert back.status in (302, 303)
    return back.headers["Location"]


async def test_missing_or_wrong_state_is_refused(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    browser = ScriptedBrowser()
    try:
        dev, location = await _to_idp(gw, browser)
        callback = await _idp_to_callback(browser, location)
        wrong = callback.replace("state=", "state=x")
        page = await browser.get(wrong)
        assert page.status == 400
        stateless = await browser.get(callback.split("&state=")[0] if "&state=" in callback else callback.split("state=")[0])
        assert stateless.status == 400
    finally:
        await browser.close()
    assert (await poll(gw, dev["device_code"]))[2] == {"error": "authorization_pending"}


async def test_a_non_ascii_state_is_refused_not_a_500(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    browser = ScriptedBrowser()
    try:
        await _to_idp(gw, browser)
        page = await browser.get(gw.url + "/oauth/callback?state=%C3%A9%00&code=x")
        assert page.status == 400 and "did not match" in page.text
    finally:
        await browser.close()


async def test_replayed_callback_is_refused(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    browser = ScriptedBrowser()
    try:
        dev, location = await _to_idp(gw, browser)
        callback = await _idp_to_callback(browser, location)
        first = await browser.get(callback)
        assert first.status == 200
        second = await browser.get(callback)
        assert second.status == 400
    finally:
        await browser.close()


async def test_callback_in_another_browser_is_refused(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    browser, other = ScriptedBrowser(), ScriptedBrowser()
    try:
        dev, location = await _to_idp(gw, browser)
        callback = await _idp_to_callback(browser, location)
        page = await other.get(callback)
        assert page.status == 400
    finally:
        await browser.close()
        await other.close()
    assert (await poll(gw, dev["device_code"]))[2] == {"error": "authorization_pending"}


@pytest.mark.parametrize(
    "oidc_rules, sub",
    [
        ("", "mallory"),  # email_verified: false is always refused
        ("  allowed_email_domains: [example.com]\n", "bob"),
        ("  allowed_groups: [eng]\n", "bob"),
    ],
)
async def test_people_the_rules_refuse_get_access_denied(signin_gateways, idp, oidc_rules, sub):
    from tests.harness import BASE_CONFIG

    secret_line = "  client_secret: gatehouse-tests-secret\n"
    (gw,) = await signin_gateways(base=BASE_CONFIG.replace(secret_line, secret_line + oidc_rules))
    dev, page, status, doc = await sign_in(gw, sub=sub)
    assert page.status == 403
    assert (status, doc) == (400, {"error": "access_denied"})


# ------------------------------------------------------------------ refresh and revocation


async def refresh(gw, token):
    return await cli_post(gw.url + "/oauth/token", {"grant_type": "refresh_token", "refresh_token": token})


async def test_refresh_rotates_and_concurrent_refreshes_both_succeed(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    _, _, _, doc = await sign_in(gw)
    before = int(time.time())
    (s1, _, a), (s2, _, b) = await asyncio.gather(refresh(gw, doc["refresh_token"]), refresh(gw, doc["refresh_token"]))
    after = int(time.time())
    assert s1 == s2 == 200
    # The same pair for both: the loser of the race gets the winner's stored successor.
    assert (a["access_token"], a["refresh_token"]) == (b["access_token"], b["refresh_token"])
    assert a["refresh_token"] != doc["refresh_token"]
    # expires_in is the whole seconds left until the token's exp when each answer is made
    # (TOKEN-10): the loser answers a moment later, and when a second boundary falls in
    # between, its figure is one less. Comparing whole answers made this fail about one
    # run in eight.
    exp = json.loads(base64.urlsafe_b64decode(a["access_token"].split(".")[1] + "=="))["exp"]
    for answer in (a, b):
        assert exp - after <= answer["expires_in"] <= exp - before


async def test_late_reuse_of_a_rotated_token_revokes_the_family(signin_gateways, idp):
    clock = FakeClock()
    gw = await gateway_with_idp(signin_gateways, clock=clock)
    _, _, _, doc = await sign_in(gw)
    _, _, rotated = await refresh(gw, doc["refresh_token"])
    clock.offset += 61
    status, _, err = await refresh(gw, doc["refresh_token"])
    assert (status, err["error"]) == (401, "invalid_grant")
    status, _, err = await refresh(gw, rotated["refresh_token"])
    assert (status, err["error"]) == (401, "invalid_grant")


async def test_person_removed_at_the_idp_is_refused_at_next_refresh(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways)
    _, _, _, doc = await sign_in(gw, sub="alice")
    await idp.revoke_tokens("alice")
    status, _, err = await refresh(gw, doc["refresh_token"])
    assert (status, err["error"]) == (401, "invalid_grant")


async def test_revoked_session_is_refused_at_once(signin_gateways, idp):
    gw, other = await signin_gateways(replicas=2)  # two replicas of one config on one database
    _, _, _, doc = await sign_in(gw)
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1, "messages": []})
    auth = {"Authorization": f"Bearer {doc['access_token']}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(other.url + "/v1/messages", data=body, headers=auth) as r:
            assert r.status == 200
        status, _, _ = await cli_post(gw.url + "/oauth/revoke", {"token": doc["access_token"]})
        assert status == 200
        for _ in range(100):  # well within 5 s
            async with s.post(other.url + "/v1/messages", data=body, headers=auth) as r:
                if r.status == 401:
                    assert r.headers["x-should-retry"] == "false"
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("revoked token still accepted by the other replica")
    status, _, err = await refresh(gw, doc["refresh_token"])
    assert (status, err["error"]) == (401, "invalid_grant")
    status, _, _ = await cli_post(gw.url + "/oauth/revoke", {"token": "unknown", "token_type_hint": "refresh_token"})
    assert status == 200


# ------------------------------------------------------------------ rate limits


async def test_device_authorization_rate_limit(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways, "rate_limits:\n  device_authorization:\n    max: 2\n    window_seconds: 600\n")
    for _ in range(2):
        await start_device(gw)
    status, headers, doc = await cli_post(gw.url + "/oauth/device_authorization", {"surface": "claude_code"})
    assert status == 429 and int(headers["Retry-After"]) > 0


async def test_device_verify_rate_limit(signin_gateways, idp):
    gw = await gateway_with_idp(signin_gateways, "rate_limits:\n  device_verify:\n    max: 2\n    window_seconds: 600\n")
    browser = ScriptedBrowser()
    try:
        page = await browser.get(gw.url + "/device")
        for _ in range(2):
            await browser.submit(page, fields={"user_code": "BCDF-GHJK"}, follow=False)
        limited = await browser.submit(page, fields={"user_code": "BCDF-GHJK"}, follow=False)
        assert limited.status == 429 and "Too many attempts" in limited.text
    finally:
        await browser.close()


async def test_sign_in_rate_limit_is_a_sliding_window(signin_gateways, idp):
    import time

    from tests.harness import Clock

    clock = Clock()
    # Five seconds before a clock-aligned boundary: a fixed window would admit two
    # more attempts ten seconds later, four in ten seconds with max 2.
    clock.now = float((int(time.time()) // 600 + 1) * 600 - 5)
    limits = "rate_limits:\n  device_authorization:\n    max: 2\n    window_seconds: 600\n"
    gw = await gateway_with_idp(signin_gateways, limits, clock=clock)
    await start_device(gw)
    clock.advance(1)
    await start_device(gw)
    clock.advance(10)
    status, headers, doc = await cli_post(gw.url + "/oauth/device_authorization", {"surface": "claude_code"})
    assert (status, doc["error"]) == (429, "slow_down")
    # Room again when the first attempt leaves the window: 600 s after it, 589 s from now.
    assert int(headers["Retry-After"]) == 589
    clock.advance(589)
    await start_device(gw)
    status, _, _ = await cli_post(gw.url + "/oauth/device_authorization", {"surface": "claude_code"})
    assert status == 429  # the second attempt is still inside the window
    clock.advance(1)
    await start_device(gw)
