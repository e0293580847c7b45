"""SPEC §4 (device authorization), §5 (verification page), §6 (token), §7 (refresh), §8 (revocation).

The verification page's fields are not part of the protocol, so the browser
leg is driven generically: the first same-origin form of the page is the
approval, and the field whose value is the user code is the code.
Device-code expiry is judged through unknown and consumed codes, never by
waiting out ``expires_in``.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import parse_qs, urlsplit

from protocol_spec.browser import Page, ScriptedBrowser, login_at_idp
from protocol_spec.conformance.context import CLI_HEADERS, DEVICE_GRANT, Ctx, Identity
from protocol_spec.conformance.target import Answer
from protocol_spec.conformance.verdicts import Skip, check

# DEV-5: upper-case consonants (any 20 of the 21); DEV-13: Gatehouse's RFC 8628 set.
USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXYZ]{4}-[BCDFGHJKLMNPQRSTVWXYZ]{4}$")
GATEHOUSE_USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")
DEVICE_CODE = re.compile(r"^[A-Za-z0-9_-]{43,}$")
FOREIGN_ORIGIN = "http://conformance-attacker.example"
# How long revocation may take to reach every replica (SPEC REVOKE-5), plus slack.
REVOCATION_WAIT_S = 6.0


def _no_store(c: Ctx, rid: str, answer: Answer, what: str) -> None:
    c.equal(rid, answer.header("Cache-Control"), "no-store", f"{what}: Cache-Control")
    c.equal(rid, answer.header("Pragma"), "no-cache", f"{what}: Pragma")


def _form_index(page: Page) -> int | None:
    for index, form in enumerate(page.forms):
        if urlsplit(form.action)[:2] == urlsplit(page.url)[:2]:
            return index
    return None


def _code_field(page: Page, index: int, user_code: str) -> str | None:
    for name, value in page.forms[index].fields.items():
        if isinstance(value, str) and value.strip().upper() == user_code:
            return name
    return None


@check("device authorization", "DEV-1", "DEV-2", "DEV-3", "DEV-4", "DEV-5", "DEV-7", "DEV-8", "DEV-13", "ROLE-1", "ROLE-2", "ROLE-3")
async def device_authorization(c: Ctx) -> None:
    if c.suite.signin != "device":
        raise Skip("sign-in checks need --signin device")
    base = c.state.public_url
    empty = await c.t.post(
        "/oauth/device_authorization", body=b"", headers={**CLI_HEADERS, "Content-Type": "application/x-www-form-urlencoded"}
    )
    c.status("DEV-1", empty, 200, "an empty form body")
    c.expect("ROLE-3", not 300 <= empty.status < 400, "no redirect", observed=empty.status)
    extra = await c.suite.start_device({"surface": "claude_code", "client_id": "someone", "scope": "openid", "conformance_unknown": "1"})
    c.status("DEV-2", extra, 200, "surface plus unknown parameters")
    c.status("ROLE-2", extra, 200, "unknown form fields are ignored")
    spoofed = await c.t.post(
        "/oauth/device_authorization",
        form={"surface": "claude_code"},
        headers={**CLI_HEADERS, "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"},
    )
    doc = spoofed.json() if isinstance(spoofed.json(), dict) else {}
    code = doc.get("user_code", "")
    c.equal("DEV-3", doc.get("verification_uri"), base + "/device", "verification_uri")
    c.equal("DEV-3", doc.get("verification_uri_complete"), f"{base}/device?user_code={code}", "verification_uri_complete")
    c.equal("DEV-3", doc.get("expires_in"), 600, "expires_in")
    c.equal("DEV-3", doc.get("interval"), 5, "interval")
    c.expect("ROLE-1", doc.get("verification_uri") == base + "/device", "links ignore X-Forwarded-Host", observed=doc.get("verification_uri"))
    c.expect("DEV-4", bool(DEVICE_CODE.match(str(doc.get("device_code", "")))), "device_code: at least 43 base64url characters", observed=doc.get("device_code"))
    c.expect("DEV-5", bool(USER_CODE.match(str(code))), "user_code: XXXX-XXXX of upper-case consonants", observed=code)
    c.expect("DEV-13", bool(GATEHOUSE_USER_CODE.match(str(code))), "user_code: XXXX-XXXX over BCDFGHJKLMNPQRSTVWXZ", observed=code)
    for answer, what in ((empty, "empty form"), (spoofed, "surface form")):
        _no_store(c, "DEV-7", answer, what)
    notice = doc.get("login_notice")
    c.expect("DEV-8", notice is None or (isinstance(notice, str) and len(notice) <= 500), "login_notice, when present, is text of at most 500 characters", observed=notice)


@check(
    "verification page and the IdP leg",
    "VERIFY-1", "VERIFY-2", "VERIFY-4", "VERIFY-5", "VERIFY-7", "VERIFY-8",
    "TOKEN-5", "TOKEN-6", "TOKEN-8", "TOKEN-9",
)
async def verification_page(c: Ctx) -> None:
    if c.suite.signin != "device":
        raise Skip("sign-in checks need --signin device")
    browser = ScriptedBrowser()
    try:
        await _pending_and_slow_down(c, browser)
        await _foreign_origin(c, browser)
        await _approve_step_by_step(c, browser)
    finally:
        await browser.close()


async def _pending_and_slow_down(c: Ctx, browser: ScriptedBrowser) -> None:
    doc = (await c.suite.start_device()).json()
    page = await browser.get(doc["verification_uri_complete"])
    c.expect("VERIFY-1", page.status == 200 and _form_index(page) is not None, "GET /device?user_code= shows a same-origin form", observed=(page.status, len(page.forms)))
    c.expect("VERIFY-1", doc["user_code"] in page.text, "the page shows the code", observed=page.text[:200])
    csp = page.headers.get("Content-Security-Policy", "")
    form_action = next((d.strip() for d in csp.split(";") if d.strip().startswith("form-action")), "")
    c.expect("VERIFY-5", "'self'" in form_action, "CSP form-action allows 'self'", observed=csp, expected="form-action 'self' <IdP origin>")
    c.expect("VERIFY-5", "frame-ancestors 'none'" in csp, "CSP frame-ancestors 'none'", observed=csp)
    first = await c.suite.poll(doc["device_code"])
    # Loading the page with a pre-filled code must not have approved anything.
    c.oauth_error("TOKEN-5", first, 400, "authorization_pending", "first poll of a new grant")
    c.oauth_error("VERIFY-1", first, 400, "authorization_pending", "poll after the page was only loaded")
    second = await c.suite.poll(doc["device_code"])
    c.oauth_error("TOKEN-6", second, (400, 429), "slow_down", "a second poll within the interval")


async def _foreign_origin(c: Ctx, browser: ScriptedBrowser) -> None:
    doc = (await c.suite.start_device()).json()
    page = await browser.get(doc["verification_uri_complete"])
    index = _form_index(page)
    if index is None:
        c.skip("the verification page has no same-origin form", "VERIFY-2")
        return
    forged = await browser.submit(page, index, origin=FOREIGN_ORIGIN, follow=False)
    c.expect("VERIFY-2", forged.status not in (301, 302, 303, 307, 308), "a cross-site submission is not sent on to the IdP", observed=(forged.status, forged.location))
    c.expect("VERIFY-2", "html" in forged.headers.get("Content-Type", ""), "the refusal is an HTML page", observed=forged.headers.get("Content-Type"))
    after = await c.suite.poll(doc["device_code"])
    c.oauth_error("VERIFY-2", after, 400, "authorization_pending", "the grant is unchanged after a forged submission")


async def _approve_step_by_step(c: Ctx, browser: ScriptedBrowser) -> None:
    unknown = await c.suite.poll("conformance-unknown-device-code")
    c.oauth_error("TOKEN-8", unknown, 400, "expired_token", "an unknown device code")
    doc = (await c.suite.start_device()).json()
    page = await browser.get(doc["verification_uri_complete"])
    index = _form_index(page)
    field = _code_field(page, index, doc["user_code"]) if index is not None else None
    if index is None or field is None:
        c.skip("the verification page's form carries no user-code field", "VERIFY-4")
        fields = None
    else:
        bogus = await browser.submit(page, index, fields={field: "BBBB-BBBB"}, follow=False)
        c.expect("VERIFY-4", bogus.status not in (301, 302, 303, 307, 308) and "html" in bogus.headers.get("Content-Type", ""),
                 "an unknown code gets an HTML page, not a redirect", observed=(bogus.status, bogus.location))
        page = await browser.get(doc["verification_uri_complete"])
        # Lower case, no dash, surrounding blanks: still the same code.
        fields = {field: "  " + doc["user_code"].lower().replace("-", "") + " "}
    redirect = await browser.submit(page, index or 0, fields=fields, follow=False)
    location = redirect.location or ""
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    to_idp = redirect.status in (302, 303) and location.startswith(c.state.idp_url)
    if fields is not None:
        c.expect("VERIFY-4", to_idp, "the code matches without case or dash", observed=(redirect.status, location[:120]))
    c.expect("VERIFY-7", to_idp, "a valid code redirects to the IdP", observed=(redirect.status, location[:160]), expected=f"302 to {c.state.idp_url}")
    for name, want in (("response_type", "code"), ("redirect_uri", c.state.public_url + "/oauth/callback"), ("code_challenge_method", "S256"), ("response_mode", "query")):
        c.equal("VERIFY-7", query.get(name), want, f"authorization request {name}")
    for name in ("client_id", "scope", "state", "nonce", "code_challenge"):
        c.expect("VERIFY-7", bool(query.get(name)), f"authorization request carries {name}", observed=query.get(name))
    c.expect("VERIFY-7", "openid" in query.get("scope", "").split(), "scope includes openid", observed=query.get("scope"))
    cookies = redirect.headers.getall("Set-Cookie", [])
    binding = [ck for ck in cookies if all(flag in ck.lower() for flag in ("httponly", "samesite=lax", "path=/"))]
    c.expect("VERIFY-8", bool(binding), "the redirect sets an HttpOnly, SameSite=Lax, Path=/ cookie", observed=cookies)
    login = await browser.get(location)
    final = await login_at_idp(browser, login, {"sub": c.suite.user("normal")["sub"]})
    c.expect("TOKEN-9", final.origin == c.t.origin, "the IdP sends the browser back to the gateway", observed=final.url)
    token = await c.suite.poll(doc["device_code"])
    body = token.json() if isinstance(token.json(), dict) else {}
    c.expect("TOKEN-9", token.status == 200 and isinstance(body.get("access_token"), str), "the approved grant gets tokens", observed=token.summary())
    again = await c.suite.poll(doc["device_code"])
    c.oauth_error("TOKEN-8", again, 400, "expired_token", "a device code already redeemed")
    c.oauth_error("TOKEN-9", again, 400, "expired_token", "tokens are issued exactly once")


@check("token response", "TOKEN-9", "TOKEN-10", "TOKEN-11", "BEARER-2", "BEARER-3")
async def token_response(c: Ctx) -> None:
    if c.suite.signin != "device":
        raise Skip("the token response is only seen with --signin device")
    person = await c.identity("normal")
    answer = person.answer
    assert answer is not None
    doc = person.token_response
    c.expect("TOKEN-9", isinstance(doc.get("access_token"), str) and bool(doc.get("access_token")), "access_token", observed=doc)
    c.equal("TOKEN-9", doc.get("token_type"), "Bearer", "token_type")
    c.expect("TOKEN-9", isinstance(doc.get("expires_in"), int), "expires_in is an integer", observed=doc.get("expires_in"))
    c.expect("TOKEN-9", isinstance(doc.get("refresh_token"), str), "refresh_token", observed=doc.get("refresh_token"))
    _no_store(c, "TOKEN-11", answer, "token success")
    c.equal("TOKEN-10", doc.get("email"), c.suite.user("normal")["email"], "email in the token response")
    claims, header = person.claims, person.header
    if isinstance(claims.get("exp"), int) and isinstance(doc.get("expires_in"), int):
        left = claims["exp"] - int(time.time())
        c.expect("TOKEN-10", abs(left - doc["expires_in"]) <= 5, "expires_in is the time until exp", observed=(doc["expires_in"], left))
    c.equal("BEARER-2", header.get("alg"), "HS256", "JWT alg")
    c.equal("BEARER-2", header.get("typ"), "JWT", "JWT typ")
    import hashlib

    kid = hashlib.sha256(c.state.jwt_secret.encode()).hexdigest()[:16]
    c.equal("BEARER-2", header.get("kid"), kid, "JWT kid = first 16 hex of SHA-256(secret)")
    user = c.suite.user("normal")
    c.equal("BEARER-3", claims.get("iss"), c.state.public_url, "iss")
    aud = claims.get("aud")
    c.expect("BEARER-3", aud == "claude-gateway" or (isinstance(aud, list) and "claude-gateway" in aud), "aud", observed=aud)
    c.equal("BEARER-3", claims.get("sub"), user["sub"], "sub")
    c.equal("BEARER-3", claims.get("email"), user["email"], "email")
    c.equal("BEARER-3", claims.get("groups"), user["groups"], "groups")
    if isinstance(claims.get("iat"), int) and isinstance(claims.get("exp"), int):
        c.equal("BEARER-3", claims["exp"] - claims["iat"], int(c.state.ttl_hours * 3600), "exp - iat")
    c.expect("BEARER-3", isinstance(claims.get("sid"), str) and bool(claims.get("sid")), "sid names the sign-in family", observed=claims.get("sid"))


@check("refused sign-ins", "VERIFY-11", "VERIFY-13", "TOKEN-7")
async def refused_sign_ins(c: Ctx) -> None:
    if c.suite.signin != "device":
        raise Skip("sign-in checks need --signin device")
    for role, why in (("unverified", "email_verified false"), ("outsider", "email domain not allowed")):
        result = await c.suite.sign_in(role)
        c.oauth_error("VERIFY-11", result.token, 400, "access_denied", f"{why}: the poll")
        c.oauth_error("TOKEN-7", result.token, 400, "access_denied", f"{why}: the poll")
        page = result.page
        # The status of the refusal page is not specified; it must be the gateway's own HTML page.
        ok = page is not None and page.origin == c.t.origin and page.status < 500 and "html" in page.headers.get("Content-Type", "")
        c.expect("VERIFY-13", ok, f"{why}: the browser ends on an HTML page of the gateway",
                 observed=None if page is None else (page.status, page.headers.get("Content-Type"), page.url[:80]))


@check("token endpoint errors", "TOKEN-1", "TOKEN-2", "TOKEN-3", "TOKEN-4", "TOKEN-11", "ERR-4")
async def token_errors(c: Ctx) -> None:
    as_json = await c.t.post_json("/oauth/token", {"grant_type": DEVICE_GRANT, "device_code": "x"}, headers=CLI_HEADERS)
    c.oauth_error("TOKEN-1", as_json, 400, "invalid_request", "a JSON body")
    cases = [
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type", "an unknown grant_type"),
        ({}, "unsupported_grant_type", "no grant_type"),
        ({"grant_type": DEVICE_GRANT}, "invalid_request", "a device grant without device_code"),
        ({"grant_type": "refresh_token"}, "invalid_request", "a refresh grant without refresh_token"),
    ]
    answers = [(as_json, "a JSON body")]
    for form, code, what in cases:
        answer = await c.suite.token_form(form) if form else await c.t.post(
            "/oauth/token", body=b"", headers={**CLI_HEADERS, "Content-Type": "application/x-www-form-urlencoded"}
        )
        c.oauth_error("TOKEN-4", answer, 400, code, what)
        answers.append((answer, what))
    with_client = await c.suite.token_form({"grant_type": DEVICE_GRANT, "device_code": "conformance-unknown", "client_id": "someone", "client_secret": "x"})
    c.oauth_error("TOKEN-2", with_client, 400, "expired_token", "client_id and client_secret are ignored")
    answers.append((with_client, "an unknown device code"))
    for answer, what in answers:
        c.equal("TOKEN-3", answer.header("Cache-Control"), "no-store", f"{what}: Cache-Control")
        c.equal("TOKEN-3", answer.content_type, "application/json", f"{what}: Content-Type")
        _no_store(c, "TOKEN-11", answer, what)


@check("refresh", "REFRESH-1", "REFRESH-3", "REFRESH-4", "REFRESH-6", "TOKEN-11", "BEARER-9")
async def refresh(c: Ctx) -> None:
    if c.suite.signin != "device":
        raise Skip("refresh needs a refresh token: run with --signin device")
    person = await c.suite.fresh_identity("normal")
    if not person.refresh_token:
        raise Skip("the target issued no refresh token")
    first = await c.suite.token_form({"grant_type": "refresh_token", "refresh_token": person.refresh_token})
    doc = first.json() if isinstance(first.json(), dict) else {}
    c.status("REFRESH-1", first, 200, "a refresh grant")
    c.equal("REFRESH-1", doc.get("token_type"), "Bearer", "token_type")
    c.expect("REFRESH-1", isinstance(doc.get("access_token"), str) and isinstance(doc.get("expires_in"), int), "access_token and expires_in", observed=doc)
    _no_store(c, "TOKEN-11", first, "refresh success")
    new_refresh = doc.get("refresh_token")
    c.expect("REFRESH-3", isinstance(new_refresh, str) and new_refresh != person.refresh_token, "the refresh token rotates", observed="the same token" if new_refresh == person.refresh_token else new_refresh)
    models = await c.t.get("/v1/models", bearer=doc.get("access_token", ""))
    c.status("BEARER-9", models, 200, "the refreshed access token is accepted")
    replay = await c.suite.token_form({"grant_type": "refresh_token", "refresh_token": person.refresh_token})
    again = replay.json() if isinstance(replay.json(), dict) else {}
    c.status("REFRESH-4", replay, 200, "the used refresh token again within 60 s")
    c.expect("REFRESH-4", (again.get("access_token"), again.get("refresh_token")) == (doc.get("access_token"), new_refresh),
             "the same successor pair", observed=again, expected="the pair of the first refresh")
    unknown = await c.suite.token_form({"grant_type": "refresh_token", "refresh_token": "conformance-unknown-refresh-token"})
    c.oauth_error("REFRESH-6", unknown, 401, "invalid_grant", "an unknown refresh token")


@check("deprovisioning at the IdP ends refresh", "REFRESH-7")
async def deprovisioned(c: Ctx) -> None:
    if c.suite.signin != "device":
        raise Skip("needs a sign-in of its own: run with --signin device")
    person = await c.suite.fresh_identity("deprovisioned")
    if not person.refresh_token:
        raise Skip("the target issued no refresh token")
    sub = c.suite.user("deprovisioned")["sub"]
    # oidc-provider-mock's test hook: forget every token issued to this user.
    async with c.suite.session.post(f"{c.state.idp_url}/users/{sub}/revoke-tokens") as resp:
        if resp.status != 204:
            raise Skip(f"the test IdP did not revoke the user's tokens ({resp.status})")
    answer = await c.suite.token_form({"grant_type": "refresh_token", "refresh_token": person.refresh_token})
    c.oauth_error("REFRESH-7", answer, 401, "invalid_grant", "a refresh after the IdP refused the user")


@check("revocation", "REVOKE-1", "REVOKE-2", "REVOKE-3", "REVOKE-4", "REVOKE-5", "BEARER-7", "DISC-3", timeout_s=30)
async def revocation(c: Ctx) -> None:
    discovery = c.suite.discovery
    if discovery is None:
        discovery = (await c.t.get("/.well-known/oauth-authorization-server")).json() or {}
    if not discovery.get("revocation_endpoint"):
        raise Skip("the target advertises no revocation_endpoint (revocation, SPEC §8, is a Gatehouse extension)")
    c.equal("DISC-3", discovery.get("revocation_endpoint"), c.state.public_url + "/oauth/revoke", "revocation_endpoint")
    garbage = await c.t.post("/oauth/revoke", form={"token": "not-a-token", "token_type_hint": "conformance"}, headers=CLI_HEADERS)
    c.expect("REVOKE-2", garbage.status == 200 and garbage.body == b"", "an unknown token answers 200 with an empty body", observed=garbage.summary())
    c.expect("REVOKE-1", not 300 <= garbage.status < 400, "answers directly", observed=garbage.status)
    c.expect("REVOKE-3", garbage.status == 200, "an unrecognised token_type_hint is ignored", observed=garbage.summary())
    missing = await c.t.post("/oauth/revoke", form={"token_type_hint": "access_token"}, headers=CLI_HEADERS)
    c.oauth_error("REVOKE-3", missing, 400, "invalid_request", "no token")
    if c.suite.signin != "device":
        c.skip("needs a sign-in family of its own: run with --signin device", "REVOKE-4", "REVOKE-5", "BEARER-7")
        return
    person: Identity = await c.suite.fresh_identity("normal")
    ok = await c.t.get("/v1/models", bearer=person.access_token)
    c.status("REVOKE-4", ok, 200, "the family's access token works before revocation")
    revoked = await c.t.post("/oauth/revoke", form={"token": person.refresh_token or "", "token_type_hint": "refresh_token"}, headers=CLI_HEADERS)
    c.expect("REVOKE-1", revoked.status == 200 and revoked.body == b"", "revoking a refresh token answers 200, empty", observed=revoked.summary())
    refresh = await c.suite.token_form({"grant_type": "refresh_token", "refresh_token": person.refresh_token or ""})
    c.oauth_error("REVOKE-5", refresh, 401, "invalid_grant", "the revoked refresh token, at once")
    deadline = time.monotonic() + REVOCATION_WAIT_S
    answer = ok
    while time.monotonic() < deadline:
        answer = await c.t.get("/v1/models", bearer=person.access_token)
        if answer.status == 401:
            break
        await asyncio.sleep(0.25)
    for rid in ("REVOKE-4", "REVOKE-5", "BEARER-7"):
        c.envelope(rid, answer, 401, "authentication_error", no_retry=True, what="the family's access token after revocation")
