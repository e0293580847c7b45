"""Malformed and hostile input over the real HTTP path (issue 12, findings 2, 3 and 6–9).

Every answer is a clear refusal in the endpoint's own envelope, never a 500;
nothing a client sent in bulk is written out in bulk; no credential is ever
echoed or logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time

import aiohttp
import asyncpg
import pytest

from tests.harness import JWT_SECRET

WRITE_KEY = "gh-admin-write-0123456789abcdef0123456789"
ADMIN_YAML = f"""
admin:
  write_keys:
    - id: ops
      key: {WRITE_KEY}
  admin_groups: [platform-admins]
"""
LIMITS = "/v1/organizations/spend_limits"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: object, claims: object, secret: str = JWT_SECRET) -> str:
    """An HS256 token over any header and claims, signed with the gateway's own secret."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())}"


def claims_for(gw, **over) -> dict:
    now = int(time.time())
    return {"sub": "user-dev", "iss": gw.url, "aud": "claude-gateway", "iat": now, "exp": now + 3600, **over}


async def send(gw, method: str, path: str, *, data=None, headers=None, json_body=None):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, gw.url + path, data=data, json=json_body, headers=headers or {}) as r:
            return r.status, r.headers, await r.read()


async def raw_exchange(gw, request: bytes) -> bytes:
    """Write bytes no HTTP client would send; read the answer until the server closes."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def envelope(body: bytes) -> dict:
    doc = json.loads(body)
    assert doc["type"] == "error", doc
    return doc["error"]


# ---------------------------------------------------------------- 2: routed fields at the body view


@pytest.mark.parametrize(
    "model, message",
    [
        ("claude-sonnet-4-6\u0000x", "model must not contain control characters"),
        ("claude-sonnet-4-6-\u0001", "model must not contain control characters"),
        ("claude-sonnet-4-6\u2028", "model must not contain control characters"),
        ("claude-sonnet-4-6-" + "a" * 300, "model must be at most 256 characters"),
    ],
)
async def test_unprintable_or_absurd_models_are_400_before_any_upstream(gateway_factory, fake_upstream, model, message):
    # An allowlist entry lets "<allowed id>-" + anything through; the body view still refuses.
    extra = "managed:\n  policies:\n    - match: {}\n      cli:\n        availableModels: [claude-sonnet-4-6]\n"
    gw = await gateway_factory([fake_upstream.url], extra)
    status, headers, body = await send(
        gw, "POST", "/v1/messages", json_body={**BODY, "model": model}, headers=gw.auth()
    )
    assert status == 400, body
    assert envelope(body) == {"type": "invalid_request_error", "message": message}
    assert fake_upstream.received == []


async def test_json_nested_past_the_recursion_limit_is_400(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    for depth in (1_000, 100_000):
        body = b'{"model":"claude-sonnet-4-6","messages":' + b"[" * depth + b"]" * depth + b"}"
        status, _, reply = await send(
            gw, "POST", "/v1/messages", data=body, headers={**gw.auth(), "content-type": "application/json"}
        )
        assert status == 400, reply
        assert envelope(reply)["type"] == "invalid_request_error"


# ---------------------------------------------------------------- 3: malformed bearers are 401 everywhere

BEARER_ENDPOINTS = [
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/managed/settings"),
    ("GET", "/user/bootstrap"),
    ("GET", "/api/oauth/usage"),
    ("GET", LIMITS),
    ("POST", LIMITS),
    ("GET", LIMITS + "/effective"),
    ("GET", LIMITS + "/audit"),
    ("GET", LIMITS + "/spl_x"),
    ("DELETE", LIMITS + "/spl_x"),
    ("POST", "/v1/metrics"),
    ("POST", "/v1/logs"),
    ("POST", "/v1/traces"),
]


def malformed_tokens(gw) -> list[str]:
    good = claims_for(gw)
    return [
        forge({"alg": "HS256", "kid": ["a", "b"]}, good),
        forge({"alg": "HS256", "kid": {"k": 1}}, good),
        forge({"alg": "HS256", "kid": 7}, good),
        forge(["HS256"], good),
        forge({"alg": "HS256"}, ["not", "claims"]),
        forge({"alg": "HS256"}, claims_for(gw, sub="")),
        forge({"alg": "HS256"}, claims_for(gw, iat=int(time.time()) + 3600)),
        forge({"alg": "HS256"}, claims_for(gw, nbf=int(time.time()) + 3600)),
        forge({"alg": "HS256"}, claims_for(gw, nbf="soon")),
        "a.b.c" + "\u00e9",
    ]


async def test_malformed_bearers_are_401_on_every_bearer_endpoint(gateway_factory, fake_upstream, capfd):
    gw = await gateway_factory([fake_upstream.url], ADMIN_YAML)
    # The forger itself is right: the same recipe with sound claims is accepted.
    ok = forge({"alg": "HS256"}, claims_for(gw))
    assert (await send(gw, "GET", "/v1/models", headers={"Authorization": f"Bearer {ok}"}))[0] == 200
    async with aiohttp.ClientSession() as s:
        for token in malformed_tokens(gw):
            for method, path in BEARER_ENDPOINTS:
                payload = BODY if method == "POST" else None
                async with s.request(
                    method, gw.url + path, json=payload, headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    body = await r.read()
                    assert r.status == 401, (token, path, r.status, body)
                    assert envelope(body)["type"] == "authentication_error"
    err = capfd.readouterr().err
    assert "Traceback" not in err


async def test_undecodable_bearer_bytes_are_401(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    for token in (b"\xff\xfe.\x80.\xc3", gw.token().encode() + b"\xff"):
        request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"
        reply = await raw_exchange(gw, request)
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


async def test_malformed_bearer_given_to_revoke_is_a_quiet_200(gateway_factory, fake_upstream, capfd):
    gw = await gateway_factory([fake_upstream.url])
    for token in malformed_tokens(gw):
        status, _, body = await send(gw, "POST", "/oauth/revoke", data={"token": token})
        assert status == 200, (token, body)
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------- 7: malformed forms on the sign-in endpoints

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BAD_FORMS = [b"grant_type=\xff\xfe", b"grant_type=%ff", b"device_code=%00abc", b"surface=a%0Ab", b"token=a&token=b"]


@pytest.mark.parametrize("path", ["/oauth/device_authorization", "/oauth/token", "/oauth/revoke"])
async def test_malformed_forms_are_oauth_invalid_request(gateway_factory, fake_upstream, path):
    gw = await gateway_factory([fake_upstream.url])
    for body in BAD_FORMS:
        status, headers, reply = await send(gw, "POST", path, data=body, headers=FORM)
        assert status == 400, (body, reply)
        assert json.loads(reply)["error"] == "invalid_request"
        assert headers["Content-Type"].startswith("application/json")


async def test_malformed_form_on_the_verification_page_is_an_html_400(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    for body in BAD_FORMS:
        status, headers, reply = await send(gw, "POST", "/device", data=body, headers=FORM)
        assert status == 400, (body, reply)
        assert headers["Content-Type"].startswith("text/html")


# ---------------------------------------------------------------- 7: malformed admin API requests

ADMIN_BAD_BODIES = [
    b'{"scope":{"type":"user","user_id":"u\\u0000"},"amount":"100","period":"daily"}',
    b'{"scope":{"type":"user","user_id":"u\\ud800"},"amount":"100","period":"daily"}',
    b'{"scope":{"type":"organization"},"amount":"100","period":"daily","reason":"r\\u0000"}',
    b'{"scope":{"type":"organization"},"amount":"100","period":"daily","reason":"\\udfff"}',
    b'{"scope":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    b'{"scope":{"type":"user","user_id":"\xff\xfe"},"amount":"100","period":"daily"}',
    # A wrong value the refusal quotes: a lone surrogate cannot be written as UTF-8 (fuzz finding).
    b'{"scope":{"type":"organization"},"amount":"100","period":"dai\\ud800ly"}',
    b'{"scope":{"type":"organization"},"amount":"100","period":"x\\u0000\\n"}',
]


async def test_malformed_admin_bodies_are_400_in_the_envelope(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], ADMIN_YAML)
    key = {"x-api-key": WRITE_KEY, "content-type": "application/json"}
    for body in ADMIN_BAD_BODIES:
        status, _, reply = await send(gw, "POST", LIMITS, data=body, headers=key)
        assert status == 400, (body[:80], reply)
        assert envelope(reply)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", LIMITS + "?after_id=%00", 400),
        ("GET", LIMITS + "/effective?q=a%00b", 400),
        ("GET", LIMITS + "/effective?user_ids[]=%00", 400),
        ("DELETE", LIMITS + "/spl_x?reason=%00", 400),
        ("GET", LIMITS + "/spl_%00", 404),
        ("DELETE", LIMITS + "/spl_%00", 404),
    ],
)
async def test_nul_in_admin_queries_and_paths_is_refused(gateway_factory, fake_upstream, method, path, status):
    gw = await gateway_factory([fake_upstream.url], ADMIN_YAML)
    async with aiohttp.ClientSession() as s:
        async with s.request(method, gw.url + path, headers={"x-api-key": WRITE_KEY}) as r:
            assert r.status == status, await r.text()
            assert envelope(await r.read())["type"] in ("invalid_request_error", "not_found_error")


async def test_undecodable_admin_key_header_is_401(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url], ADMIN_YAML)
    reply = await raw_exchange(gw, f"GET {LIMITS} HTTP/1.1\r\nHost: x\r\nx-api-key: \xff\xfe\r\nConnection: close\r\n\r\n".encode("latin-1"))
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]


# ---------------------------------------------------------------- 8: bounded logs and rows


async def test_a_huge_refused_model_writes_a_bounded_log_line(gateway_factory, fake_upstream, capfd):
    gw = await gateway_factory([fake_upstream.url])
    capfd.readouterr()
    status, _, _ = await send(gw, "POST", "/v1/messages", json_body={**BODY, "model": "m" * 1_000_000}, headers=gw.auth())
    assert status == 400
    err = capfd.readouterr().err
    assert len(err) < 4096, len(err)


async def test_long_client_strings_are_capped_in_logs_and_usage_rows(gateway_factory, fake_upstream, capfd, pg_url):
    from gateway.client_text import LOG_CHARS

    gw = await gateway_factory([fake_upstream.url], ADMIN_YAML)
    capfd.readouterr()
    # The refusal names the path it refused; a 50 KB path is not logged whole.
    status, _, _ = await send(gw, "GET", LIMITS + "/" + "p" * 50_000)
    assert status == 401
    # A served request whose token carries a very long email (the IdP's to choose).
    auth = gw.auth(email="e" * 20_000 + "@example.com")
    status, headers, _ = await send(gw, "POST", "/v1/messages", json_body=BODY, headers=auth)
    assert status == 200
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(100):
            row = await conn.fetchrow("SELECT email FROM usage_records WHERE request_id = $1", headers["request-id"])
            if row is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    err = capfd.readouterr().err
    assert '"evt":"admin.denied"' in err and '"evt":"inference"' in err
    assert max(len(line) for line in err.splitlines()) < 4 * LOG_CHARS
    assert row is not None and row["email"].startswith("eeee") and len(row["email"]) < 2 * LOG_CHARS


async def test_a_long_surface_is_stored_cut(gateway_factory, fake_upstream, pg_url):
    gw = await gateway_factory([fake_upstream.url])
    status, _, reply = await send(gw, "POST", "/oauth/device_authorization", data={"surface": "s" * 20_000})
    assert status == 200, reply
    conn = await asyncpg.connect(pg_url)
    try:
        longest = await conn.fetchval("SELECT max(length(surface)) FROM device_grants")
    finally:
        await conn.close()
    assert longest == 64


# ---------------------------------------------------------------- 6 and 9: what aiohttp's parser refuses


@pytest.mark.parametrize(
    "bad_header",
    [
        b"Authorization: Bearer SECRET-TOKEN-1234\x7fabc\r\n",
        b"Authorization: Bearer SECRET-TOKEN-1234\nX-After: y\r\n",
        b"Authorization: Bearer SECRET-TOKEN-1234\x00\r\n",
        b"Author\x01zation: Bearer SECRET-TOKEN-1234\r\n",
    ],
)
async def test_a_credential_in_a_malformed_header_is_never_echoed_or_logged(
    gateway_factory, fake_upstream, capfd, caplog, bad_header
):
    caplog.set_level(logging.DEBUG)
    gw = await gateway_factory([fake_upstream.url])
    capfd.readouterr()
    reply = await raw_exchange(
        gw, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + bad_header + b"Content-Length: 2\r\n\r\n{}"
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", reply[:300]
    assert envelope(body)["type"] == "invalid_request_error"
    assert b"SECRET-TOKEN" not in reply
    captured = capfd.readouterr()
    logged = captured.err + captured.out + caplog.text
    assert "SECRET-TOKEN" not in logged
    assert "Traceback" not in logged


async def test_oversize_url_and_headers_are_414_and_431_in_the_envelope_by_default(gateway_factory, fake_upstream, capfd):
    gw = await gateway_factory([fake_upstream.url])  # no limits: configured
    reply = await raw_exchange(gw, b"GET /v1/models?x=" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"414", reply[:300]
    assert envelope(body)["type"] == "invalid_request_error"
    for header in (b"X-Big: " + b"b" * 300_000 + b"\r\n", b"".join(b"X-%d: v\r\n" % i for i in range(1100))):
        reply = await raw_exchange(gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"431", reply[:300]
        assert envelope(body)["type"] == "invalid_request_error"
    assert b"aaaa" not in reply and "bbbbbbbb" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "expect", [b"\xff\xfe-continue", b"100-continue\xc3", b"something-else", b"\x80" * 100]
)
async def test_an_unsupported_expect_header_is_417_in_the_envelope_never_quoted(
    gateway_factory, fake_upstream, capfd, caplog, expect
):
    """aiohttp answers Expect before any middleware, quoting the value; a byte that is
    not UTF-8 there was a 500 with a traceback (fuzz finding)."""
    caplog.set_level(logging.DEBUG)
    gw = await gateway_factory([fake_upstream.url])
    capfd.readouterr()
    for path in (b"/v1/messages", b"/no/such/route"):
        reply = await raw_exchange(
            gw, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nExpect: " + expect + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"417", reply[:300]
        assert envelope(body) == {"type": "invalid_request_error", "message": "unsupported Expect header: only 100-continue is understood"}
        assert expect not in reply
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out + caplog.text


async def test_expect_100_continue_still_gets_its_interim_answer(gateway_factory, fake_upstream):
    gw = await gateway_factory([fake_upstream.url])
    reply = await raw_exchange(
        gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), reply[:200]

