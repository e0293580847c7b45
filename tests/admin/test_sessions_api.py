"""The admin API's sign-in sessions (a Gatehouse extension) over real HTTP and a real PostgreSQL.

Sign-ins are started with the gateway's own ``SessionService`` on the same
database (what a completed device flow does), so the families, their tokens and
the revocation watcher are all real.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.app.build import build
from gateway.auth.identity import Identity
from gateway.auth.session_store import SessionService, TokenPair
from gateway.http.admin import ADMIN, AdminContext
from gateway.http.keys import RUNTIME
from gateway.http.routes import add_routes
from tests.admin.test_api import (
    ADMIN_GROUP,
    REQUEST_ID,
    Clock,
    R,
    W,
    assert_error,
    audit_events,
    start_admin_gateway,
)
from tests.harness import JWT_SECRET, RunningGateway, free_port

SESSIONS = "/v1/organizations/sessions"


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
async def gw(pg_url: str, clock: Clock):
    gateway = await start_admin_gateway(pg_url, clock)
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def start_replica(gw: RunningGateway, clock: Clock) -> RunningGateway:
    """Another replica of ``gw``'s config (same issuer, same database) on a port of its own."""
    cfg = gw.app[RUNTIME].config
    app = build(cfg, clock=clock)
    app[ADMIN] = AdminContext(cfg, clock=clock)
    add_routes(app, "admin")
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningGateway(f"http://127.0.0.1:{port}", app, runner)


def sessions_of(gw: RunningGateway, clock: Clock) -> SessionService:
    rt = gw.app[RUNTIME]
    return SessionService(rt.store, rt.tokens, secrets=(JWT_SECRET,), clock=clock, emit=lambda evt, **f: None)


def person(tag: str) -> Identity:
    n = time.monotonic_ns()
    return Identity(f"sub-{tag}-{n}", f"{tag}-{n}@Example.com", tag.title(), ("eng",))


async def sign_in(gw: RunningGateway, clock: Clock, who: Identity, *, ip: str = "10.0.0.7") -> TokenPair:
    return await sessions_of(gw, clock).start_family(who, "idp-rt", client_ip=ip)


def family_of(gw: RunningGateway, pair: TokenPair) -> str:
    sid = gw.app[RUNTIME].tokens.verify_ignoring_time(pair.access_token).sid
    assert sid is not None
    return sid


async def call(http, gw, method: str, path: str = "", *, headers=None, **kw) -> tuple[int, Any, Any]:
    async with http.request(method, gw.url + SESSIONS + path, headers=W if headers is None else headers, **kw) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None), r.headers


async def bearer_status(http, gw: RunningGateway, access_token: str) -> int:
    async with http.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {access_token}"}) as r:
        return r.status


# ---------------------------------------------------------------- listing


async def test_a_read_key_lists_a_persons_sign_ins_newest_first(gw, http, clock):
    alice = person("alice")
    first = await sign_in(gw, clock, alice, ip="10.0.0.1")
    clock.advance(1)
    second = await sign_in(gw, clock, alice, ip="10.0.0.2")
    await sign_in(gw, clock, person("bob"))

    # Any letter case finds them, as `gatehouse sessions list` does.
    status, body, headers = await call(http, gw, "GET", params={"email": alice.email.upper()}, headers=R)
    assert status == 200, body
    assert REQUEST_ID.match(headers["request-id"]) and headers["Cache-Control"] == "no-store"
    assert [d["id"] for d in body["data"]] == [family_of(gw, second), family_of(gw, first)]
    assert (body["has_more"], body["first_id"], body["last_id"]) == (
        False, family_of(gw, second), family_of(gw, first),
    )  # fmt: skip
    doc = body["data"][0]
    assert list(doc) == [
        "type", "id", "user_id", "email_address", "groups", "created_at", "last_refreshed_at",
        "refresh_count", "expires_at", "client_ip", "state", "revoked_at", "revoke_reason",
    ]  # fmt: skip
    assert doc["type"] == "session" and doc["user_id"] == alice.sub and doc["email_address"] == alice.email
    assert (doc["state"], doc["client_ip"], doc["groups"], doc["refresh_count"]) == ("active", "10.0.0.2", ["eng"], 0)
    assert doc["created_at"].endswith("Z") and doc["last_refreshed_at"] is None and doc["revoked_at"] is None

    status, body, _ = await call(http, gw, "GET", params={"email": "nobody@example.com"}, headers=R)
    assert status == 200 and body == {"data": [], "has_more": False, "first_id": None, "last_id": None}


async def test_listing_pages_with_limit_and_after_id(gw, http, clock):
    carol = person("carol")
    made = []
    for _ in range(5):
        made.append(family_of(gw, await sign_in(gw, clock, carol)))
        clock.advance(1)
    newest_first = made[::-1]
    seen: list[str] = []
    params: dict[str, str] = {"email": carol.email, "limit": "2"}
    while True:
        status, body, _ = await call(http, gw, "GET", params=params)
        assert status == 200, body
        seen += [d["id"] for d in body["data"]]
        if not body["has_more"]:
            break
        params["after_id"] = body["last_id"]
    assert seen == newest_first
    status, body, headers = await call(http, gw, "GET", params={"email": carol.email, "after_id": "no-such-family"})
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"].startswith("after_id:")


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "email: required"),
        ({"email": ""}, "email: required"),
        ({"email": "not-an-address"}, "email: must be an email address"),
        ({"email": "a b@example.com"}, "email: must be an email address"),
        ({"email": "@example.com"}, "email: must be an email address"),
        ({"email": "x\x01@example.com"}, "email: must not contain control characters"),
        ({"email": "a@example.com", "limit": "0"}, "limit:"),
    ],
)
async def test_listing_needs_a_valid_email(gw, http, params, message):
    status, body, headers = await call(http, gw, "GET", params=params, headers=R)
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"].startswith(message)


# ---------------------------------------------------------------- revoking one


async def test_revoking_one_sign_in_audits_it_and_ends_it_on_every_replica(gw, http, clock, pg_url, capfd):
    replica = await start_replica(gw, clock)
    listener = await asyncpg.connect(pg_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("gatehouse_revocations", lambda *args: heard.put_nowait(args[3]))
    try:
        dave = person("dave")
        kept = await sign_in(gw, clock, dave)
        ended = await sign_in(gw, clock, dave)
        family = family_of(gw, ended)
        assert await bearer_status(http, replica, ended.access_token) == 200
        capfd.readouterr()

        status, body, _ = await call(http, gw, "DELETE", f"/{family}", params={"reason": "laptop lost"})
        assert status == 200, body
        assert body == {"type": "session_revoked", "id": family, "revoked_now": True}
        assert await asyncio.wait_for(heard.get(), 5) == family  # the same NOTIFY as /oauth/revoke
        # The other replica hears it and refuses the token (poll: delivery is asynchronous).
        for _ in range(100):
            if await bearer_status(http, replica, ended.access_token) == 401:
                break
            await asyncio.sleep(0.05)
        assert await bearer_status(http, replica, ended.access_token) == 401
        assert await bearer_status(http, replica, kept.access_token) == 200

        (event,) = audit_events(capfd, "session.revoke")
        assert (event["family"], event["reason"], event["actor"], event["sub"]) == (
            family, "admin_revoke", "admin-key:ops", dave.sub,
        )  # fmt: skip
        status, listed, _ = await call(http, gw, "GET", params={"email": dave.email})
        states = {d["id"]: (d["state"], d["revoke_reason"]) for d in listed["data"]}
        assert states == {family: ("revoked", "admin_revoke"), family_of(gw, kept): ("active", None)}

        async with http.get(gw.url + "/v1/organizations/spend_limits/audit", headers=R) as r:
            trail = await r.json()
        entry = next(e for e in trail["data"] if e["target_id"] == family)
        assert (entry["action"], entry["actor"], entry["reason"], entry["before"], entry["after"]) == (
            "session.revoke", "admin-key:ops", "laptop lost", None, None,
        )  # fmt: skip

        # Again: still 200, nothing new revoked, nothing new audited.
        status, body, _ = await call(http, gw, "DELETE", f"/{family}")
        assert status == 200 and body["revoked_now"] is False
        assert audit_events(capfd, "session.revoke") == []
    finally:
        await listener.close()
        await replica.close()


async def test_revoking_a_sign_in_that_does_not_exist_is_404(gw, http):
    for family in ("no-such-family", "x" * 300):
        status, body, headers = await call(http, gw, "DELETE", f"/{family}")
        assert_error(status, body, headers, 404, "not_found_error")
        assert body["error"]["message"] == "no sign-in session has this id"


async def test_read_keys_may_not_revoke(gw, http, clock, capfd):
    erin = person("erin")
    pair = await sign_in(gw, clock, erin)
    capfd.readouterr()
    status, body, headers = await call(http, gw, "DELETE", f"/{family_of(gw, pair)}", headers=R)
    assert_error(status, body, headers, 403, "permission_error")
    status, body, headers = await call(http, gw, "POST", "/revoke", headers=R, json={"email": erin.email})
    assert_error(status, body, headers, 403, "permission_error")
    assert [d["reason"] for d in audit_events(capfd, "admin.denied")] == ["read_only_key", "read_only_key"]
    status, listed, _ = await call(http, gw, "GET", params={"email": erin.email}, headers=R)
    assert [d["state"] for d in listed["data"]] == ["active"]
    # Without credentials: 401, as on every admin path.
    status, body, headers = await call(http, gw, "GET", params={"email": erin.email}, headers={})
    assert_error(status, body, headers, 401, "authentication_error")


# ---------------------------------------------------------------- revoking all of a person's


async def test_an_admin_group_bearer_revokes_all_of_a_persons_sign_ins(gw, http, clock, capfd):
    frank = person("frank")
    pairs = [await sign_in(gw, clock, frank) for _ in range(3)]
    other = await sign_in(gw, clock, person("grace"))
    bearer = {"Authorization": f"Bearer {gw.token(sub='admin-1', groups=[ADMIN_GROUP])}"}
    capfd.readouterr()

    status, body, _ = await call(http, gw, "POST", "/revoke", headers=bearer, json={"email": frank.email.lower()})
    assert status == 200, body
    assert body["type"] == "sessions_revoked" and body["email_address"] == frank.email.lower()
    assert body["revoked"] == 3 and sorted(body["ids"]) == sorted(family_of(gw, p) for p in pairs)
    events = audit_events(capfd, "session.revoke")
    assert sorted(e["family"] for e in events) == sorted(body["ids"])
    assert {e["actor"] for e in events} == {"oidc:admin-1"}
    for pair in pairs:
        for _ in range(100):
            if await bearer_status(http, gw, pair.access_token) == 401:
                break
            await asyncio.sleep(0.05)
        assert await bearer_status(http, gw, pair.access_token) == 401
    assert await bearer_status(http, gw, other.access_token) == 200

    # Nothing left to revoke: 200 with none.
    status, body, _ = await call(http, gw, "POST", "/revoke", json={"email": frank.email})
    assert status == 200 and (body["revoked"], body["ids"]) == (0, [])


@pytest.mark.parametrize(
    "payload, message",
    [
        ({}, "email: required"),
        ({"email": None}, "email: required"),
        ({"email": 42}, "email: expected a string"),
        ({"email": "frank"}, "email: must be an email address"),
        ({"email": "f@example.com", "reason": 7}, "reason:"),
        ([], "body: expected a JSON object"),
    ],
)
async def test_revoke_all_names_the_bad_field(gw, http, payload, message):
    status, body, headers = await call(http, gw, "POST", "/revoke", json=payload)
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"].startswith(message)


async def test_revoke_all_refuses_a_body_that_is_not_json(gw, http):
    status, body, headers = await call(http, gw, "POST", "/revoke", data=b"{not json", headers={**W, "Content-Type": "application/json"})
    assert_error(status, body, headers, 400, "invalid_request_error")
    assert body["error"]["message"] == "the request body is not valid JSON"


async def test_without_an_admin_section_the_sessions_paths_are_404(pg_url, http, clock):
    plain = await start_admin_gateway(pg_url, clock, with_admin=False)
    try:
        for method, path in (("GET", "?email=a@example.com"), ("POST", "/revoke"), ("DELETE", "/abc")):
            async with http.request(method, plain.url + SESSIONS + path, headers=W) as r:
                assert r.status == 404
    finally:
        await plain.close()
