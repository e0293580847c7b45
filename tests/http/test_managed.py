"""GET /managed/settings and GET /user/bootstrap end to end, over real HTTP.

The gateway under test runs in this process. Until the app registers these
routes itself, the tests compose it the way ``gateway.app.build.build`` does (same
runtime, same envelope middleware) and add the managed routes; once the app
wires them (``POLICIES`` present after ``build``), the real app is used as is.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import gateway
from gateway.app import build as gateway_app
from gateway.http.keys import RUNTIME
from gateway.http.managed import (
    ChecksumSightings,
    if_none_match_hits,
)
from tests.harness import make_config, upstream_block

EMPTY = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
# Recorded: the document Anthropic's gateway served and the If-None-Match the real client sent back.
RECORDED_SETTINGS = {
    "availableModels": ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"],
    "permissions": {"deny": ["WebFetch"]},
}
RECORDED_CHECKSUM = "sha256:35433d4825c79cc012326b95df42b54a0623a15ec87a729be5892c36297027a5"

POLICIES_YAML = """
managed:
  policies:
    - match: { groups: [contractors] }
      cli:
        availableModels: [claude-opus-4-8, claude-sonnet-4-6, claude-haiku-4-5]
        permissions: { deny: [WebFetch] }
    - match: { groups: [empty] }
      cli: {}
    - match: { groups: [intl] }
      settings:
        companyAnnouncements: ["Bienvenue à l’équipe — 欢迎 🎉", "naïve café"]
        env: { GREETING: "Grüß Gott", ZED: "\\u2028sep\\u2029", TAB: "a\\tb/c" }
        spinnerVerbs: { verbs: ["Überlegen", "思考"] }
        feedbackSurveyRate: 0.05
        cleanupPeriodDays: 30.0
        skillListingBudgetFraction: 1.5e-7
    - match: { email_domain: example.com }
      cli:
        permissions: { deny: [WebFetch] }
"""
# Node-verified (JSON.stringify of the key-sorted object) for the "intl" policy above,
# merged onto nothing (there is no match: {} base in POLICIES_YAML).
INTL_CANONICAL = (
    '{"cleanupPeriodDays":30,"companyAnnouncements":["Bienvenue à l’équipe — 欢迎 🎉","naïve café"],'
    '"env":{"GREETING":"Grüß Gott","TAB":"a\\tb/c","ZED":"\u2028sep\u2029"},"feedbackSurveyRate":0.05,'
    '"skillListingBudgetFraction":1.5e-7,"spinnerVerbs":{"verbs":["Überlegen","思考"]}}'
)
INTL_CHECKSUM = "sha256:e303a689407999885857743b32b75a263f0c7ca29bbcb31fd5dcd1ff5c6dd50c"


@dataclass
class Gateway:
    url: str
    app: web.Application

    def auth(
        self, groups: tuple[str, ...] = (), email: str | None = "dev@other.org", sub: str = "user-1"
    ) -> dict[str, str]:
        token = self.app[RUNTIME].tokens.mint(sub=sub, email=email, groups=groups, now=int(time.time()))
        return {"Authorization": f"Bearer {token}"}


async def _serve(cfg: Any) -> AsyncIterator[Gateway]:
    app = gateway_app.build(cfg)
    runner = web.AppRunner(app, access_log=None, **gateway_app.parser_limits(cfg))  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", cfg.listen.port)
    await site.start()
    try:
        yield Gateway(f"http://127.0.0.1:{cfg.listen.port}", app)
    finally:
        await runner.cleanup()


@pytest.fixture
async def gw(pg_url: str) -> AsyncIterator[Gateway]:
    async for g in _serve(make_config(pg_url, [upstream_block("http://127.0.0.1:9")], POLICIES_YAML)):
        yield g


async def get(gw: Gateway, path: str = "/managed/settings", headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + path, headers=headers or {}) as r:
            return r.status, r.headers, await r.read()


def assert_served(headers: Any, body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert list(doc) == ["uuid", "checksum", "settings"]
    assert doc["uuid"] == doc["checksum"]
    assert headers["ETag"] == f'"{doc["checksum"]}"'
    assert headers["x-cc-gateway-version"] == gateway.__version__
    assert "Cache-Control" not in headers
    assert headers["Content-Type"].startswith("application/json")
    # The served settings are the canonical bytes themselves, so a client recomputing
    # the checksum over what it received gets the same value.
    raw = body[body.index(b'"settings":') + len(b'"settings":') : -1]
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == doc["checksum"]
    return doc


# ---------------------------------------------------------------- 200


async def test_serves_the_policy_with_etag_and_version(gw):
    status, headers, body = await get(gw, headers=gw.auth(groups=("contractors",)))
    assert status == 200
    doc = assert_served(headers, body)
    assert doc["settings"] == RECORDED_SETTINGS
    assert doc["checksum"] == RECORDED_CHECKSUM  # the value Anthropic's gateway served for this document


async def test_empty_policy_is_200_with_empty_settings(gw):
    status, headers, body = await get(gw, headers=gw.auth(groups=("empty",)))
    assert status == 200
    assert json.loads(body) == {"uuid": EMPTY, "checksum": EMPTY, "settings": {}}
    assert_served(headers, body)


async def test_non_ascii_and_float_policy(gw):
    status, headers, body = await get(gw, headers=gw.auth(groups=("intl",)))
    assert status == 200
    doc = assert_served(headers, body)
    assert body.endswith(b'"settings":' + INTL_CANONICAL.encode("utf-8") + b"}")  # raw UTF-8, no \u escapes
    assert doc["checksum"] == INTL_CHECKSUM
    status, _, _ = await get(gw, headers={**gw.auth(groups=("intl",)), "If-None-Match": f'"{INTL_CHECKSUM}"'})
    assert status == 304


async def test_email_domain_selects_a_policy(gw):
    status, _, body = await get(gw, headers=gw.auth(email="dev@EXAMPLE.com"))
    assert status == 200 and json.loads(body)["settings"] == {"permissions": {"deny": ["WebFetch"]}}


async def test_audit_records_each_serve(gw, capfd):
    capfd.readouterr()
    status, headers, _ = await get(
        gw, headers=gw.auth(groups=("contractors",), sub="alice", email="alice@x.org")
    )
    assert status == 200
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"managed.serve"' in line]
    assert len(events) == 1
    event = events[0]
    assert event["sub"] == "alice" and event["email"] == "alice@x.org"
    assert event["policy_index"] == 0 and event["checksum"] == RECORDED_CHECKSUM
    assert event["request_id"] == headers["request-id"]


# ---------------------------------------------------------------- 304 and If-None-Match


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [
        (f'"{RECORDED_CHECKSUM}"', 304),  # what the real client sent on every poll
        (f'"sha256:{"0" * 64}", "{RECORDED_CHECKSUM}"', 304),  # one entry of a list
        (f'  "{RECORDED_CHECKSUM}"  ', 304),
        ("*", 200),  # Claude Desktop's probe
        (RECORDED_CHECKSUM, 200),  # unquoted
        (f'W/"{RECORDED_CHECKSUM}"', 200),  # weak
        (f'"{EMPTY}"', 200),  # a client holding nothing yet
        (f'"{RECORDED_CHECKSUM.upper()}"', 200),
        ("", 200),
    ],
)
async def test_if_none_match(gw, if_none_match, status):
    got, headers, body = await get(
        gw, headers={**gw.auth(groups=("contractors",)), "If-None-Match": if_none_match}
    )
    assert got == status
    assert headers["x-cc-gateway-version"] == gateway.__version__
    assert headers["ETag"] == f'"{RECORDED_CHECKSUM}"'
    assert "Cache-Control" not in headers
    if status == 304:
        assert body == b""
    else:
        assert_served(headers, body)


async def test_recorded_empty_client_value_gets_304_for_an_empty_policy(gw):
    # samples/gateway-fake/g4_p_signed_in.jsonl: If-None-Match: "sha256:44136f…" (sha256 of {}).
    status, headers, body = await get(
        gw, headers={**gw.auth(groups=("empty",)), "If-None-Match": f'"{EMPTY}"'}
    )
    assert status == 304 and body == b"" and headers["ETag"] == f'"{EMPTY}"'


# ---------------------------------------------------------------- 404, 401


async def test_no_policy_for_this_user_is_404_no_store(gw):
    status, headers, body = await get(gw, headers={**gw.auth(groups=("nobody",)), "If-None-Match": "*"})
    assert status == 404
    assert headers["Cache-Control"] == "no-store"
    assert headers["x-cc-gateway-version"] == gateway.__version__
    assert "ETag" not in headers
    doc = json.loads(body)
    assert doc["error"] == {"type": "not_found_error", "message": "not configured"}
    assert doc["request_id"] == headers["request-id"]


async def test_no_managed_section_is_404(pg_url):
    async for g in _serve(make_config(pg_url, [upstream_block("http://127.0.0.1:9")])):
        status, headers, body = await get(g, headers=g.auth())
        assert status == 404 and headers["Cache-Control"] == "no-store"
        assert json.loads(body)["error"]["message"] == "not configured"


async def test_a_refused_model_is_400_naming_the_models_the_person_may_use(gw):
    # What `claude -p` with no --model sends to a policy that leaves its default out.
    body = json.dumps({"model": "claude-opus-5-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/messages", data=body, headers=gw.auth(groups=("contractors",))) as r:
            status, doc = r.status, await r.json()
    assert status == 400 and doc.pop("request_id")
    assert doc == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "model claude-opus-5-5 is not in your role's availableModels allowlist; models you may use: "
            "claude-opus-4-8, claude-sonnet-4-6, claude-haiku-4-5-20251001",
        },
    }


@pytest.mark.parametrize("path", ["/managed/settings", "/user/bootstrap"])
async def test_missing_or_bad_token_is_401_with_version(gw, path):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, got, body = await get(gw, path, headers=headers)
        assert status == 401
        assert got["x-cc-gateway-version"] == gateway.__version__
        assert got["x-should-retry"] == "false"
        assert "Cache-Control" not in got
        assert json.loads(body)["error"]["type"] == "authentication_error"


async def test_user_bootstrap_is_404_no_store(gw, capfd):
    capfd.readouterr()
    status, headers, body = await get(gw, "/user/bootstrap", headers=gw.auth(groups=("contractors",)))
    assert status == 404
    assert headers["Cache-Control"] == "no-store"
    assert headers["x-cc-gateway-version"] == gateway.__version__
    error = json.loads(body)["error"]
    assert error["type"] == "not_found_error" and "desktop" in error["message"].lower()
    assert '"desktop_bootstrap.denied"' in capfd.readouterr().err


# ---------------------------------------------------------------- helpers and the checksum recorder


@pytest.mark.parametrize(
    ("values", "hit"),
    [
        (['"a"'], True),
        (['"b", "a"'], True),
        (['"b"', '"a"'], True),
        (["*"], False),
        (["a"], False),
        (['W/"a"'], False),
        ([], False),
    ],
)
def test_if_none_match_hits(values, hit):
    assert if_none_match_hits(values, '"a"') is hit


GOOD = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def test_sightings_aggregate_hash_and_flag_stale():
    events: list[tuple[str, dict[str, Any]]] = []
    s = ChecksumSightings(emit=lambda evt, **f: events.append((evt, f)))
    for _ in range(3):
        s.note("alice", GOOD, served=GOOD)
    s.note("alice", OTHER, served=GOOD)
    s.note("bob", GOOD)
    s.note("bob", "not a checksum")
    s.flush()
    seen = {(f["sub"], f["checksum_hash"]): f for evt, f in events if evt == "managed.checksum_seen"}
    short = hashlib.sha256(GOOD.encode()).hexdigest()[:16]
    assert seen[("alice", short)] == {"sub": "alice", "checksum_hash": short, "requests": 3, "stale": False}
    assert seen[("alice", hashlib.sha256(OTHER.encode()).hexdigest()[:16])]["stale"] is True
    assert "stale" not in seen[("bob", short)]
    assert len(events) == 3
    assert not any(GOOD in json.dumps(f) or OTHER in json.dumps(f) for _, f in events)  # never logged as sent
    events.clear()
    s.flush()
    assert events == []


def test_sightings_are_bounded():
    events: list[tuple[str, dict[str, Any]]] = []
    s = ChecksumSightings(max_entries=2, emit=lambda evt, **f: events.append((evt, f)))
    for sub in ("a", "b", "c", "d"):
        s.note(sub, GOOD)
    s.note("a", GOOD)  # known entries still count when full
    s.flush()
    assert [f.get("requests") for evt, f in events if evt == "managed.checksum_seen"] == [2, 1]
    assert ("managed.checksum_seen.dropped", {"sightings": 2}) in events
