"""Every body the gateway writes is one of the Structs of protocol_spec/wire.py.

Two checks. Statically: no module in gateway/ spells a response shape as a dict
literal (the Structs are the single source of wire types, so schema.json
describes what is really sent). End to end: each endpoint's answer, from a real
in-process gateway with a real PostgreSQL, decodes with its Struct, and encoding
the decoded value gives back the very bytes that were served, so the Struct
carries every member, in wire order, with the same omissions.
"""

from __future__ import annotations

import ast
import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import msgspec
import pytest

from protocol_spec import wire
from protocol_spec.browser import ScriptedBrowser, approve_device
from protocol_spec.fakes import Reply
from protocol_spec.idp_process import IdpProcess

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
WRITE_KEY = "wire-types-admin-write-0123456789abcdef0123"
ADMIN = {"x-api-key": WRITE_KEY}
LIMITS = "/v1/organizations/spend_limits"
MESSAGE = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}).encode()
EXTRA = f"""
admin:
  write_keys: [{{id: wire, key: "{WRITE_KEY}"}}]
managed:
  policies:
    - match: {{ groups: [contractors] }}
      cli:
        availableModels: [claude-sonnet-4-6, claude-haiku-4-5]
        permissions: {{ deny: [WebFetch] }}
        env: {{ GREETING: "Grüß Gott — 欢迎" }}
gatehouse:
  signin:
    login_notice: Use your corp account
"""


# ---------------------------------------------------------------- static: no dict-literal bodies

# Shapes the gateway writes, by their members; a dict literal in gateway/ whose
# string keys are all members of one of these and include its required ones
# (two keys at least) is that shape built by hand.
WRITTEN = (
    wire.ErrorEnvelope,
    wire.ErrorEvent,
    wire.ErrorDetail,
    wire.AuthorizationServerMetadata,
    wire.DeviceAuthorization,
    wire.TokenResponse,
    wire.OAuthErrorBody,
    wire.ServerInfo,
    wire.ModelInfo,
    wire.ModelList,
    wire.ProtocolDocument,
    wire.ManagedSettings,
    wire.UsageReport,
    wire.ExtraUsage,
    wire.PeriodCredits,
    wire.UsageLimit,
    wire.SpendLimit,
    wire.SpendLimitPage,
    wire.SpendLimitDeleted,
    wire.SpendLimitSnapshot,
    wire.AuditEvent,
    wire.AuditPage,
    wire.UserActor,
    wire.EffectiveLimit,
    wire.EffectivePage,
    wire.SignInSession,
    wire.SignInSessionPage,
    wire.SessionRevoked,
    wire.SessionsRevoked,
)
# Plain data that is not a response body and is kept as a dict on purpose:
# spend.Cap.source is a {"type", "user_id" | "rbac_group_id"} value the pure
# spend core compares and the admin API converts to SpendLimitScope.
# load_test.py's canned Messages replies (built once at boot) have a "type" and a
# "message" like ErrorDetail, but are SSE events of a success.
NOT_BODIES = {
    ("gateway/spend/caps.py", "_source"),
    ("gateway/upstreams/load_test.py", "<module>"),
    ("gateway/upstreams/load_test.py", "stream_events"),
}


def _members(struct: type[msgspec.Struct]) -> tuple[frozenset[str], frozenset[str]]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    names = {f.encode_name for f in info.fields}
    required = {f.encode_name for f in info.fields if f.required}
    if info.tag_field is not None:
        names.add(info.tag_field)
        required.add(info.tag_field)
    return frozenset(names), frozenset(required)


def _dict_literals(tree: ast.AST):
    """(enclosing function name, string keys) of every dict display in ``tree``."""
    for func in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
        name = getattr(func, "name", "<module>")
        for node in ast.walk(func):
            if isinstance(node, ast.Dict):
                keys = {
                    k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                }
                yield name, frozenset(keys)


def test_no_module_in_gateway_builds_a_wire_body_as_a_dict():
    shapes = {cls.__name__: _members(cls) for cls in WRITTEN}
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for func, keys in _dict_literals(ast.parse(path.read_text())):
            if len(keys) < 2 or (rel, func) in NOT_BODIES:
                continue
            for name, (members, required) in shapes.items():
                if keys <= members and required <= keys:
                    found.append(f"{rel}:{func} builds {name} as a dict {sorted(keys)}")
    assert not found, "\n".join(sorted(set(found)))


def test_the_static_check_sees_a_hand_built_body():
    source = 'def f():\n    return {"access_token": "a", "token_type": "Bearer", "expires_in": 1}\n'
    members, required = _members(wire.TokenResponse)
    hits = [keys for _, keys in _dict_literals(ast.parse(source)) if keys <= members and required <= keys]
    assert hits


# ---------------------------------------------------------------- end to end


def decoded(body: bytes, struct: type[T]) -> T:
    """``body`` as ``struct``, checking that the Struct writes exactly these bytes back."""
    value = msgspec.json.decode(body, type=struct)
    assert wire.encoder.encode(value) == body, f"{struct.__name__} does not re-encode to the served bytes"
    return value


async def fetch(method: str, url: str, **kw: Any) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, allow_redirects=False, **kw) as r:
            return r.status, r.headers, await r.read()


def sse_data(body: bytes, event: str) -> list[bytes]:
    return [
        line.removeprefix(b"data: ")
        for block in body.split(b"\n\n")
        if block.startswith(b"event: " + event.encode() + b"\n")
        for line in block.split(b"\n")
        if line.startswith(b"data: ")
    ]


@pytest.fixture(scope="module")
def idp():
    with IdpProcess(
        [{"sub": "wanda", "email": "wanda@example.com", "email_verified": True, "groups": ["eng"]}]
    ) as proc:
        yield proc


@pytest.fixture
async def gw(gateway_factory, fake_upstream):
    return await gateway_factory([fake_upstream.url], EXTRA)


async def test_landing_models_and_protocol_document(gw):
    status, _, body = await fetch("GET", gw.url + "/")
    assert status == 200 and decoded(body, wire.ServerInfo).name == "gatehouse"
    status, _, body = await fetch("GET", gw.url + "/v1/models", headers=gw.auth())
    listing = decoded(body, wire.ModelList)
    assert status == 200 and listing.data and listing.first_id == listing.data[0].id
    status, _, body = await fetch("GET", gw.url + "/protocol.json")
    doc = decoded(body, wire.ProtocolDocument)
    assert status == 200 and doc.requirements and "ManagedSettings" in doc.schema["$defs"]


async def test_errors_use_the_anthropic_envelope(gw, fake_upstream):
    status, _, body = await fetch("GET", gw.url + "/no/such/path")
    envelope = decoded(body, wire.ErrorEnvelope)
    assert status == 404 and envelope.error.type == "not_found_error" and envelope.request_id
    status, _, body = await fetch("POST", gw.url + "/v1/messages", data=MESSAGE)
    assert status == 401 and decoded(body, wire.ErrorEnvelope).error.type == "authentication_error"
    # After the first byte of a stream, a failure is an SSE error event: the envelope without request_id.
    fake_upstream.script(Reply(stream=True, deltas=4, reset_after=3))
    stream = json.dumps({**json.loads(MESSAGE), "stream": True}).encode()
    status, _, body = await fetch("POST", gw.url + "/v1/messages", data=stream, headers=gw.auth())
    (data,) = sse_data(body, "error")
    event = decoded(data, wire.ErrorEvent)
    assert status == 200 and event.error == wire.ErrorDetail("api_error", "upstream stream interrupted")


async def test_managed_settings_body(gw):
    status, headers, body = await fetch(
        "GET", gw.url + "/managed/settings", headers=gw.auth(groups=["contractors"])
    )
    served = decoded(body, wire.ManagedSettings)
    assert status == 200 and served.uuid == served.checksum and headers["ETag"] == f'"{served.checksum}"'
    assert json.loads(bytes(served.settings))["availableModels"] == ["claude-sonnet-4-6", "claude-haiku-4-5"]


async def test_sign_in_documents(gateway_factory, fake_upstream, idp):
    gw = await gateway_factory([fake_upstream.url], EXTRA, issuer=idp.issuer)
    status, _, body = await fetch("GET", gw.url + "/.well-known/oauth-authorization-server")
    meta = decoded(body, wire.AuthorizationServerMetadata)
    assert status == 200 and meta.issuer == gw.url and meta.gateway_protocol_version == 1
    status, _, body = await fetch(
        "POST", gw.url + "/oauth/device_authorization", data={"surface": "claude_code"}
    )
    device = decoded(body, wire.DeviceAuthorization)
    assert status == 200 and device.login_notice == "Use your corp account"
    pending = {"grant_type": DEVICE_GRANT, "device_code": device.device_code}
    status, _, body = await fetch("POST", gw.url + "/oauth/token", data=pending)
    assert (status, decoded(body, wire.OAuthErrorBody)) == (400, wire.OAuthErrorBody("authorization_pending"))
    status, _, body = await fetch("POST", gw.url + "/oauth/token", data={"grant_type": "refresh_token"})
    refused = decoded(body, wire.OAuthErrorBody)
    assert status == 400 and refused.error == "invalid_request" and refused.error_description
    # A second sign-in, approved, so its first poll gets tokens (a second poll of the
    # first one within the interval would only get slow_down).
    _, _, body = await fetch("POST", gw.url + "/oauth/device_authorization")
    device = decoded(body, wire.DeviceAuthorization)
    browser = ScriptedBrowser()
    try:
        page = await approve_device(browser, device.verification_uri_complete, idp_fields={"sub": "wanda"})
    finally:
        await browser.close()
    assert page.status == 200
    poll = {"grant_type": DEVICE_GRANT, "device_code": device.device_code}
    status, _, body = await fetch("POST", gw.url + "/oauth/token", data=poll)
    tokens = decoded(body, wire.TokenResponse)
    assert status == 200 and tokens.email == "wanda@example.com" and isinstance(tokens.refresh_token, str)
    status, _, body = await fetch(
        "POST",
        gw.url + "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
    )
    refreshed = decoded(body, wire.TokenResponse)
    assert status == 200 and refreshed.email is msgspec.UNSET  # only the device grant names the person


async def test_admin_api_and_usage_bodies(gw, pg_url):
    who = "wire-" + uuid.uuid4().hex[:8]
    scope = {"type": "user", "user_id": who}
    status, _, body = await fetch(
        "POST", gw.url + LIMITS, headers=ADMIN, json={"scope": scope, "amount": "0", "period": "daily"}
    )
    created = decoded(body, wire.SpendLimit)
    assert (
        status == 200 and created.scope == wire.SpendLimitScope("user", user_id=who) and created.amount == "0"
    )
    pooled = {"scope": {"type": "rbac_group", "rbac_group_id": who}, "amount": "500", "period": "monthly",
              "pooled_limit_enabled": True, "pooled_monthly_credit_limit": "9000"}  # fmt: skip
    status, _, body = await fetch("POST", gw.url + LIMITS, headers=ADMIN, json=pooled)
    group_cap = decoded(body, wire.SpendLimit)
    assert (
        status == 200
        and group_cap.pooled_limit_enabled is True
        and group_cap.pooled_monthly_credit_limit == "9000"
    )
    status, _, body = await fetch("GET", gw.url + LIMITS + "/" + created.id, headers=ADMIN)
    assert status == 200 and decoded(body, wire.SpendLimit) == created
    status, _, body = await fetch("GET", gw.url + LIMITS + "?limit=1000", headers=ADMIN)
    page = decoded(body, wire.SpendLimitPage)
    assert status == 200 and created.id in {c.id for c in page.data}

    # A zero cap refuses at once (once NOTIFY has reached the limits cache): the 429 body.
    auth = gw.auth(sub=who, email=f"{who}@example.com")
    for _ in range(100):
        status, _, body = await fetch("POST", gw.url + "/v1/messages", data=MESSAGE, headers=auth)
        if status == 429:
            break
        await asyncio.sleep(0.02)
    refused = decoded(body, wire.ErrorEvent)
    assert status == 429 and refused.error.type == "billing_error"
    status, _, body = await fetch("GET", gw.url + "/api/oauth/usage", headers=auth)
    report = decoded(body, wire.UsageReport)
    assert status == 200 and report.limits and report.extra_usage.daily is msgspec.UNSET
    status, _, body = await fetch("GET", gw.url + "/api/oauth/usage", headers=gw.auth(sub="wire-uncapped"))
    uncapped = decoded(body, wire.UsageReport)
    assert (
        status == 200 and uncapped.limits == [] and isinstance(uncapped.extra_usage.daily, wire.PeriodCredits)
    )

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO principals (sub, email, name, groups, updated_at) VALUES ($1, $2, NULL, $3::jsonb, $4)"
            " ON CONFLICT (sub) DO NOTHING",
            who, f"{who}@example.com", json.dumps([who]), datetime.now(UTC),
        )  # fmt: skip
    finally:
        await conn.close()
    status, _, body = await fetch("GET", gw.url + LIMITS + f"/effective?user_ids[]={who}", headers=ADMIN)
    effective = decoded(body, wire.EffectivePage)
    assert status == 200 and {row.period for row in effective.data} == {"daily", "weekly", "monthly"}
    daily = next(row for row in effective.data if row.period == "daily")
    assert daily.source == wire.SpendLimitScope("user", user_id=who) and daily.actor.user_id == who

    status, _, body = await fetch(
        "DELETE", gw.url + LIMITS + "/" + created.id + "?reason=done", headers=ADMIN
    )
    assert (status, decoded(body, wire.SpendLimitDeleted)) == (200, wire.SpendLimitDeleted(created.id))
    status, _, body = await fetch("GET", gw.url + LIMITS + "/audit", headers=ADMIN)
    trail = decoded(body, wire.AuditPage)
    mine = [e for e in trail.data if e.target_id == created.id]
    assert status == 200 and [e.action for e in mine] == ["spend_limit.delete", "spend_limit.upsert"]
    assert mine[0].before == mine[1].after and mine[0].after is None and mine[0].reason == "done"
    pooled_event = next(e for e in trail.data if e.target_id == group_cap.id)
    assert pooled_event.after is not None and pooled_event.after.pooled_monthly_credit_limit == "9000"
