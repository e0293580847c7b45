"""The scripted browser and the IdP process the sign-in tests are built on.

Form parsing is checked on plain HTML; the headers, redirects and cookies
against small aiohttp apps on loopback that record what arrives; the IdP
wrapper against a real oidc-provider-mock process, walking its authorize page
and using its token endpoint the way the gateway will.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from protocol_spec.browser import (
    Button,
    NavigationRefused,
    ScriptedBrowser,
    SignInFlowError,
    TooManyRedirects,
    approve_device,
    build_submission,
    fetch_site,
    login_at_idp,
    parse_forms,
)
from protocol_spec.idp_process import IdpProcess

PAGE = "http://127.0.0.1:8000/dir/page?x=1#frag"


# --------------------------------------------------------------------------
# Reading forms


def test_hidden_fields_and_relative_action():
    html = """
    <form method="POST" action="../submit">
      <input type="hidden" name="csrf" value="t&amp;k">
      <input name="user_code" value="ABCD-EFGH">
      <input type="text" name="blank">
      <input type="text" value="no name is never sent">
      <input type="checkbox" name="remember" checked>
      <input type="checkbox" name="spam" value="yes">
      <input type="radio" name="pick" value="a"><input type="radio" name="pick" value="b" checked>
      <input name="off" value="x" disabled>
      <textarea name="note">
two
lines</textarea>
    </form>"""
    [form] = parse_forms(html, PAGE)
    assert form.method == "POST"
    assert form.action == "http://127.0.0.1:8000/submit"
    assert form.fields == {
        "csrf": "t&k",
        "user_code": "ABCD-EFGH",
        "blank": "",
        "remember": "on",
        "pick": "b",
        "note": "two\nlines",
    }


def test_buttons_submit_inputs_and_formaction():
    html = """
    <form method="post">
      <button name="action" value="approve">Approve</button>
      <button type="submit" name="action" value="deny" formaction="/deny">Deny</button>
      <button type="button" name="js">not a submitter</button>
      <button type="reset">reset</button>
      <input type="submit" name="go" value="Go">
      <input type="submit" value="Unnamed">
      <button name="dead" disabled>disabled</button>
    </form>"""
    [form] = parse_forms(html, PAGE)
    # No action attribute: the form posts to the document itself, query included.
    assert form.action == "http://127.0.0.1:8000/dir/page?x=1"
    assert form.buttons == [
        Button("action", "approve", None),
        Button("action", "deny", "http://127.0.0.1:8000/deny"),
        Button("go", "Go", None),
        Button(None, "Unnamed", None),
    ]
    assert form.fields == {}


def test_selects_pick_what_a_browser_submits():
    html = """
    <form><select name="first"><option>one<option value="2">two</select>
    <select name="chosen"><option value="a">A</option><option value="b" selected>B</option></select>
    <select name="many" multiple><option selected>x</option><option>y</option><option selected>z</option></select>
    <select name="none" multiple><option>q</option></select>
    <select name="off" disabled><option>q</option></select>
    </form>
    <form action="https://other.example/a"></form>"""
    first, second = parse_forms(html, PAGE)
    assert first.method == "GET"
    assert first.fields == {"first": "one", "chosen": "b", "many": ["x", "z"]}
    assert second.action == "https://other.example/a"


def test_base_href_and_unclosed_form():
    html = '<head><base href="/root/"></head><form action="go"><input name="a" value="1">'
    [form] = parse_forms(html, PAGE)
    assert form.action == "http://127.0.0.1:8000/root/go"
    assert form.fields == {"a": "1"}


def test_submission_overrides_fields_and_presses_buttons():
    html = """
    <form method="post" action="/device">
      <input type="hidden" name="csrf" value="tok"><input name="code" value="AB CD">
      <button name="action" value="approve">Approve</button>
      <button name="action" value="deny" formaction="/device/deny">Deny</button>
    </form>
    <form action="/search?old=1"><input name="q" value="a b"><input type="submit"></form>"""
    post, get = parse_forms(html, PAGE)
    sub = build_submission(post)
    assert sub.method == "POST"
    assert str(sub.url) == "http://127.0.0.1:8000/device"
    assert sub.body == b"csrf=tok&code=AB+CD&action=approve"
    sub = build_submission(post, {"csrf": None, "extra": "1"}, button="deny")
    assert str(sub.url) == "http://127.0.0.1:8000/device/deny"
    assert sub.body == b"code=AB+CD&extra=1&action=deny"
    assert build_submission(post, button="action=deny").body == b"csrf=tok&code=AB+CD&action=deny"
    # A GET form replaces the action's query with its own fields; unnamed buttons add nothing.
    sub = build_submission(get)
    assert (sub.method, sub.body) == ("GET", None)
    assert str(sub.url) == "http://127.0.0.1:8000/search?q=a+b"


def test_fetch_site_relations():
    here = URL("http://127.0.0.1:8000/p")
    assert fetch_site(None, [here]) == "none"
    assert fetch_site("http://127.0.0.1:8000", [here]) == "same-origin"
    # Ports do not make a different site, only a different origin.
    assert fetch_site("http://127.0.0.1:9000", [here]) == "same-site"
    assert fetch_site("https://evil.example", [here]) == "cross-site"
    assert fetch_site("https://a.example.com", [URL("https://b.example.com/")]) == "same-site"
    # One cross-site hop in the chain marks the whole navigation.
    chain = [here, URL("https://idp.example/"), here]
    assert fetch_site("http://127.0.0.1:8000", chain) == "cross-site"


# --------------------------------------------------------------------------
# Headers, redirects and cookies against a recording app


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str]


@dataclass
class Site:
    url: str
    seen: list[Seen] = field(default_factory=list)

    def last(self, path: str) -> Seen:
        return [s for s in self.seen if s.path == path][-1]


FORM_PAGE = """<!doctype html><title>form</title>
<form method="post" action="/submit"><input type="hidden" name="csrf" value="c1">
<button name="action" value="approve">Approve</button></form>
<form method="post" action="{other}/submit"><button>Elsewhere</button></form>
<form method="post" action="/r307"><input name="k" value="v"><button>307</button></form>
<form method="post" action="/r302"><input name="k" value="v"><button>302</button></form>
<form method="post" action="/r308-away"><input name="k" value="v"><button>308 away</button></form>
"""


def make_site_app(site: Site, peer: list[str]) -> web.Application:
    """Endpoints that record each request and answer with the hop under test."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        site.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.headers),
                await request.read(),
                dict(request.cookies),
            )
        )
        return await handler(request)

    async def form_page(request: web.Request) -> web.Response:
        return web.Response(text=FORM_PAGE.format(other=peer[0]), content_type="text/html")

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text="<p>landed</p>", content_type="text/html")

    def redirect(status: int, to: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            target = to.format(peer=peer[0])
            return web.Response(status=status, headers={"Location": target})

        return handler

    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.Response(status=302, headers={"Location": peer[0] + "/need-cookie"})
        resp.set_cookie("binding", "b1", httponly=True, samesite="Lax", path="/")
        return resp

    async def loop(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/loop"})

    app = web.Application(middlewares=[record])
    app.router.add_get("/form", form_page)
    app.router.add_post("/submit", redirect(303, "/landing"))
    app.router.add_post("/r307", redirect(307, "/echo"))
    app.router.add_post("/r302", redirect(302, "/echo"))
    app.router.add_post("/r308-away", redirect(308, "{peer}/echo"))
    app.router.add_route("*", "/echo", landing)
    app.router.add_get("/landing", landing)
    app.router.add_get("/set-cookie", set_cookie)
    app.router.add_get("/need-cookie", landing)
    app.router.add_get("/loop", loop)
    app.router.add_get("/to-internet", redirect(302, "http://93.184.215.14/"))
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def sites() -> AsyncIterator[tuple[Site, Site]]:
    """Two origins on 127.0.0.1 (different ports), each knowing the other's URL."""
    runners, made = [], []
    peers: list[list[str]] = [[], []]
    for i in range(2):
        site = Site("")
        runner, site.url = await serve(make_site_app(site, peers[i]))
        runners.append(runner)
        made.append(site)
    peers[0].append(made[1].url)
    peers[1].append(made[0].url)
    try:
        yield made[0], made[1]
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[ScriptedBrowser]:
    b = ScriptedBrowser()
    try:
        yield b
    finally:
        await b.close()


async def test_typed_navigation_headers(sites, browser):
    a, _ = sites
    page = await browser.get(a.url + "/form")
    assert page.status == 200 and len(page.forms) == 5
    seen = a.last("/form").headers
    assert seen["Sec-Fetch-Site"] == "none"
    assert seen["Sec-Fetch-Mode"] == "navigate"
    assert seen["Accept"].startswith("text/html")
    assert "Origin" not in seen and "Referer" not in seen


async def test_same_origin_post_then_303(sites, browser):
    a, _ = sites
    page = await browser.get(a.url + "/form")
    done = await browser.submit(page)
    post = a.last("/submit")
    assert post.method == "POST"
    assert post.headers["Origin"] == a.url
    assert post.headers["Sec-Fetch-Site"] == "same-origin"
    assert post.headers["Referer"] == a.url + "/form"
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert post.body == b"csrf=c1&action=approve"
    # 303 turns the POST into a bodiless GET that carries no Origin.
    landing = a.last("/landing")
    assert landing.method == "GET" and landing.body == b""
    assert "Origin" not in landing.headers and "Content-Type" not in landing.headers
    assert landing.headers["Referer"] == a.url + "/form"
    assert done.url == a.url + "/landing" and done.status == 200
    assert done.history == [(303, a.url + "/submit")]


async def test_cross_origin_post_and_forged_origins(sites, browser):
    a, b = sites
    page = await browser.get(a.url + "/form")
    await browser.submit(page, 1)
    seen = b.last("/submit").headers
    # Another port on the same IP is a different origin but the same site.
    assert seen["Origin"] == a.url
    assert seen["Sec-Fetch-Site"] == "same-site"
    assert seen["Referer"] == a.url + "/"

    await browser.submit(page, 0, origin="http://evil.example")
    seen = a.last("/submit").headers
    assert seen["Origin"] == "http://evil.example"
    assert seen["Sec-Fetch-Site"] == "cross-site"
    assert seen["Referer"] == "http://evil.example/"
    # From an https page to an http target the default policy drops Referer.
    await browser.submit(page, 0, origin="https://evil.example")
    seen = a.last("/submit").headers
    assert (seen["Origin"], seen["Sec-Fetch-Site"]) == ("https://evil.example", "cross-site")
    assert "Referer" not in seen

    # No origin: a client without fetch metadata, unless the header is forced.
    await browser.submit(page, 0, origin=None)
    seen = a.last("/submit").headers
    assert "Origin" not in seen and "Sec-Fetch-Site" not in seen
    assert seen["Referer"] == a.url + "/form"
    await browser.submit(page, 0, origin=None, sec_fetch_site="same-origin")
    seen = a.last("/submit").headers
    assert "Origin" not in seen and seen["Sec-Fetch-Site"] == "same-origin"


async def test_redirect_method_rules(sites, browser):
    a, b = sites
    page = await browser.get(a.url + "/form")
    # 307 keeps method, body and Origin.
    await browser.submit(page, 2)
    echo = a.last("/echo")
    assert (echo.method, echo.body, echo.headers["Origin"]) == ("POST", b"k=v", a.url)
    # 302 after a POST becomes a GET, as every browser does.
    await browser.submit(page, 3)
    assert a.last("/echo").method == "GET" and a.last("/echo").body == b""
    # 308 to another origin keeps the POST; the origin is still the initiator's.
    done = await browser.submit(page, 4)
    echo = b.last("/echo")
    assert (echo.method, echo.body, echo.headers["Origin"]) == ("POST", b"k=v", a.url)
    assert echo.headers["Sec-Fetch-Site"] == "same-site"
    assert done.history == [(308, a.url + "/r308-away")]


async def test_no_follow_returns_the_redirect(sites, browser):
    a, _ = sites
    page = await browser.get(a.url + "/form")
    hop = await browser.submit(page, 0, follow=False)
    assert hop.status == 303 and hop.location == a.url + "/landing"
    assert a.seen[-1].path == "/submit"  # and nothing fetched after it


async def test_cookies_survive_hops_between_loopback_ports(sites, browser):
    a, b = sites
    page = await browser.get(a.url + "/set-cookie")
    assert page.url == b.url + "/need-cookie"
    # Cookies are not port-scoped: the binding cookie set by one port reaches the other.
    assert b.last("/need-cookie").cookies == {"binding": "b1"}
    await browser.get(a.url + "/landing")
    assert a.last("/landing").cookies == {"binding": "b1"}


async def test_redirect_loops_and_leaving_loopback_are_refused(sites, browser):
    a, _ = sites
    with pytest.raises(TooManyRedirects):
        await browser.get(a.url + "/loop")
    assert len([s for s in a.seen if s.path == "/loop"]) == 11
    with pytest.raises(NavigationRefused):
        await browser.get(a.url + "/to-internet")
    with pytest.raises(NavigationRefused):
        await browser.get("https://example.com/")


# --------------------------------------------------------------------------
# A real oidc-provider-mock

USERS: list[dict[str, object]] = [
    {"sub": "alice", "email": "alice@example.com", "email_verified": True, "groups": ["eng"]},
    {"sub": "bob", "email": "bob@example.com"},
]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdpProcess]:
    with IdpProcess(USERS) as running:
        yield running


@pytest.fixture
async def callback_site() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in relying party: records what the IdP sends to /cb."""
    got: list[dict[str, str]] = []

    async def cb(request: web.Request) -> web.Response:
        got.append(dict(request.query))
        return web.Response(text="<p>callback reached</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/cb", cb)
    runner, url = await serve(app)
    try:
        yield url + "/cb", got
    finally:
        await runner.cleanup()


def authorize_url(idp: IdpProcess, redirect_uri: str, state: str = "st") -> str:
    query = {
        "client_id": "gatehouse-test",
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "openid email profile",
        "state": state,
        "nonce": "n-" + state,
    }
    return f"{idp.issuer}/oauth2/authorize?{urlencode(query)}"


async def token_request(idp: IdpProcess, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    # client_secret_basic; the mock accepts any client id and secret.
    auth = aiohttp.BasicAuth("gatehouse-test", "any-secret")
    async with aiohttp.ClientSession() as session:
        async with session.post(idp.issuer + "/oauth2/token", data=form, auth=auth) as resp:
            return resp.status, await resp.json()


def claims_of(id_token: str) -> dict[str, Any]:
    payload = id_token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


async def sign_in(browser: ScriptedBrowser, idp: IdpProcess, cb: str, fields=None) -> dict[str, Any]:
    page = await browser.get(authorize_url(idp, cb))
    back = await login_at_idp(browser, page, fields)
    assert back.status == 200 and back.url.startswith(cb + "?")
    query = parse_qs(urlsplit(back.url).query)
    assert query["state"] == ["st"]
    status, tokens = await token_request(
        idp, {"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": cb}
    )
    assert status == 200, tokens
    return tokens


async def test_idp_discovery_names_its_endpoints(idp):
    async with aiohttp.ClientSession() as session:
        async with session.get(idp.discovery_url) as resp:
            doc = await resp.json()
    assert doc["issuer"] == idp.issuer
    assert doc["authorization_endpoint"] == idp.issuer + "/oauth2/authorize"
    assert doc["token_endpoint"] == idp.issuer + "/oauth2/token"


async def test_authorize_page_to_code_to_id_token(idp, callback_site, browser):
    cb, got = callback_site
    page = await browser.get(authorize_url(idp, cb))
    # The mock's page: a free-text "sub" form, a Deny form, one button per predefined user.
    assert [f.fields for f in page.forms] == [{"sub": ""}, {}, {}]
    assert [b.value for b in page.forms[2].buttons] == ["alice", "bob"]
    tokens = await sign_in(browser, idp, cb)  # default: the first predefined user
    claims = claims_of(tokens["id_token"])
    assert claims["iss"] == idp.issuer and claims["aud"] == ["gatehouse-test"]
    assert (claims["sub"], claims["email"], claims["email_verified"]) == ("alice", "alice@example.com", True)
    assert claims["groups"] == ["eng"] and claims["nonce"] == "n-st"
    assert got[-1]["state"] == "st"
    bob = claims_of((await sign_in(browser, idp, cb, {"sub": "bob"}))["id_token"])
    assert bob["email"] == "bob@example.com"


async def test_put_user_changes_the_next_login(idp, callback_site, browser):
    cb, _ = callback_site
    await idp.put_user("carol", {"email": "carol@example.com", "email_verified": False})
    claims = claims_of((await sign_in(browser, idp, cb, {"sub": "carol"}))["id_token"])
    assert claims["email_verified"] is False
    await idp.put_user("carol", {"email": "carol@other.example"})
    claims = claims_of((await sign_in(browser, idp, cb, {"sub": "carol"}))["id_token"])
    assert claims["email"] == "carol@other.example" and "email_verified" not in claims


async def userinfo(idp: IdpProcess, access_token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {access_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(idp.issuer + "/userinfo", headers=headers) as resp:
            assert resp.status == 200
            info: dict[str, Any] = await resp.json()
            return info


async def test_refresh_sees_new_claims_through_userinfo(idp, callback_site, browser):
    cb, _ = callback_site
    await idp.put_user("dave", {"email": "dave@example.com"})
    tokens = await sign_in(browser, idp, cb, {"sub": "dave"})
    await idp.put_user("dave", {"email": "dave@elsewhere.example"})
    status, fresh = await token_request(
        idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert status == 200
    # The mock's refresh answer has a new access token only: no id_token and
    # no rotated refresh token, so a relying party re-reads claims from userinfo.
    assert "id_token" not in fresh and "refresh_token" not in fresh
    assert (await userinfo(idp, fresh["access_token"]))["email"] == "dave@elsewhere.example"


async def test_revoke_tokens_fails_the_refresh_grant(idp, callback_site, browser):
    cb, _ = callback_site
    tokens = await sign_in(browser, idp, cb, {"sub": "bob"})
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, _ = await token_request(idp, refresh)
    assert status == 200
    await idp.revoke_tokens("bob")
    status, body = await token_request(idp, refresh)
    assert (status, body["error"]) == (400, "invalid_grant")


# --------------------------------------------------------------------------
# approve_device against a miniature gateway


def make_mini_gateway(idp: IdpProcess, outcome: list[dict[str, str]]) -> web.Application:
    """Just enough of a verification page: a CSRF-checked Approve that sends the
    browser to the IdP, and a callback that reports what came back."""

    async def device(request: web.Request) -> web.Response:
        resp = web.Response(
            content_type="text/html",
            text="""<form method="post" action="https://elsewhere.example/x"><button>Not ours</button></form>
            <form method="post" action="/device"><input type="hidden" name="csrf" value="k">
            <button name="action" value="approve">Approve</button>
            <button name="action" value="deny">Deny</button></form>""",
        )
        resp.set_cookie("flow", "f1", httponly=True, samesite="Lax")
        return resp

    async def device_post(request: web.Request) -> web.Response:
        form = await request.post()
        same_origin = request.headers.get("Origin") == f"http://{request.host}"
        if not same_origin or form.get("csrf") != "k" or request.cookies.get("flow") != "f1":
            return web.Response(status=403, text="refused")
        if form.get("action") != "approve":
            return web.Response(text="denied")
        cb = f"http://{request.host}/oauth/callback"
        raise web.HTTPFound(authorize_url(idp, cb, state="dev"))

    async def callback(request: web.Request) -> web.Response:
        outcome.append({**request.query, "flow": request.cookies.get("flow", "")})
        return web.Response(text="<p>You are signed in.</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/device", device)
    app.router.add_post("/device", device_post)
    app.router.add_get("/oauth/callback", callback)
    return app


async def test_approve_device_walks_the_whole_leg(idp, browser):
    outcome: list[dict[str, str]] = []
    runner, url = await serve(make_mini_gateway(idp, outcome))
    try:
        final = await approve_device(browser, url + "/device?user_code=ABCD-EFGH")
        assert final.status == 200 and "signed in" in final.text
        assert final.url.startswith(url + "/oauth/callback?")
        assert outcome[-1]["state"] == "dev" and outcome[-1]["flow"] == "f1" and outcome[-1]["code"]
        assert [status for status, _ in final.history] == [302]  # the IdP's redirect back
    finally:
        await runner.cleanup()


async def test_approve_device_reports_a_page_it_cannot_use(idp, browser):
    async def no_form(request: web.Request) -> web.Response:
        return web.Response(
            text='<form action="https://elsewhere.example/"></form>', content_type="text/html"
        )

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text="unknown code")

    app = web.Application()
    app.router.add_get("/device", no_form)
    app.router.add_get("/gone", gone)
    runner, url = await serve(app)
    try:
        with pytest.raises(SignInFlowError, match="no same-origin form"):
            await approve_device(browser, url + "/device")
        with pytest.raises(SignInFlowError, match="404"):
            await approve_device(browser, url + "/gone")
    finally:
        await runner.cleanup()


async def test_extra_flags_reach_the_idp(callback_site, browser):
    cb, _ = callback_site
    with IdpProcess([{"sub": "erin"}], extra_args=["--no-refresh-token", "true"]) as bare:
        tokens = await sign_in(browser, bare, cb)
        assert "refresh_token" not in tokens and tokens["id_token"]
    assert bare.proc is not None and bare.proc.returncode is not None


def test_a_bad_flag_fails_loudly_with_the_idp_output():
    with pytest.raises(RuntimeError, match="No such option"):
        IdpProcess(extra_args=["--no-such-flag"]).start()
