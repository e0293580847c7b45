"""What a check works with: the target, the fake upstream, signed-in people, and its verdicts.

One :class:`Suite` lives for a whole run and holds what checks share: the
HTTP session, the fake upstream's control client, the fixture state, and
the people signed in so far (each role signs in once, lazily, through the
device flow and the scripted browser, or is the ``--token`` given).

Each check gets its own :class:`Ctx`, which is the suite plus that check's
:class:`~protocol_spec.conformance.verdicts.Verdicts` and a few helpers that
record common expectations (the error envelope, the no-retry header).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from protocol_spec.browser import Page, ScriptedBrowser, approve_device
from protocol_spec.conformance.fixtures import PROTOCOL_PING_INTERVAL_S, FixtureState
from protocol_spec.conformance.target import Answer, Target
from protocol_spec.conformance.verdicts import NOT_GIVEN, Skip, Verdicts
from protocol_spec.fakes.bedrock_remote import RemoteBedrock
from protocol_spec.fakes.remote import RemoteFake

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# What the real client sends to the sign-in endpoints (SPEC DISC-9).
CLI_HEADERS = {"User-Agent": "claude-code/2.1.328", "Accept": "application/json, text/plain, */*"}
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")
# Anthropic-API paths, where the gateway's own errors use the envelope (SPEC ERR-1).
ENVELOPE_PREFIXES = ("/v1/", "/managed/settings", "/api/oauth/usage")


@dataclass
class Identity:
    """A person signed in to the target: their tokens and the token response they came in."""

    role: str
    access_token: str
    refresh_token: str | None = None
    token_response: dict[str, Any] = field(default_factory=dict)
    # The token endpoint's answer that carried these tokens (None for --token).
    answer: Answer | None = None

    @property
    def claims(self) -> dict[str, Any]:
        return jwt_part(self.access_token, 1)

    @property
    def header(self) -> dict[str, Any]:
        return jwt_part(self.access_token, 0)


def jwt_part(token: str, index: int) -> dict[str, Any]:
    """One decoded part of a JWT, unverified ({} when it is not one)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(parts[index] + "=" * (-len(parts[index]) % 4))
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class SignIn:
    """Everything one device sign-in produced, for checks that look at the steps."""

    device: Answer
    page: Page | None
    token: Answer

    @property
    def device_doc(self) -> dict[str, Any]:
        doc = self.device.json()
        return doc if isinstance(doc, dict) else {}


class Suite:
    def __init__(
        self,
        target: Target,
        state: FixtureState,
        session: aiohttp.ClientSession,
        *,
        signin: str,
        token: str | None,
        admin_key: str | None,
        ping_interval_s: float = PROTOCOL_PING_INTERVAL_S,
    ) -> None:
        self.target = target
        self.state = state
        self.fake = RemoteFake(state.fake_url, session)
        # The cloud fakes, when the fixtures run them (else None, and the cloud checks SKIP).
        self.bedrock = RemoteBedrock(state.bedrock_url, session) if state.bedrock_url else None
        self.vertex = RemoteFake(state.vertex_url, session) if state.vertex_url else None
        self.ping_interval_s = ping_interval_s
        self.session = session
        self.signin = signin
        self.given_token = token
        self.admin_key = admin_key
        self._people: dict[str, Identity] = {}
        self.discovery: dict[str, Any] | None = None

    def user(self, role: str) -> dict[str, Any]:
        return self.state.users[role]

    async def identity(self, role: str = "normal") -> Identity:
        """A signed-in ``role`` (cached); raises Skip when this run cannot sign them in."""
        if role in self._people:
            return self._people[role]
        if self.signin == "token":
            if role != "normal" or not self.given_token:
                raise Skip(f"needs a signed-in {role} user: run with --signin device")
            person = Identity("normal", self.given_token)
        else:
            person = await self.fresh_identity(role)
        self._people[role] = person
        return person

    async def fresh_identity(self, role: str = "normal") -> Identity:
        """A new sign-in family for ``role`` (never cached): for checks that end or rotate it."""
        result = await self.sign_in(role)
        doc = result.token.json()
        if result.token.status != 200 or not isinstance(doc, dict) or "access_token" not in doc:
            raise RuntimeError(f"device sign-in as {role} failed: {result.token.summary()}")
        return Identity(role, doc["access_token"], doc.get("refresh_token"), doc, result.token)

    async def sign_in(self, role: str) -> SignIn:
        """Run a whole device sign-in as ``role``: authorize, approve in the browser, poll once."""
        if self.signin != "device":
            raise Skip("needs --signin device")
        device = await self.start_device()
        doc = device.json()
        if device.status != 200 or not isinstance(doc, dict) or "verification_uri_complete" not in doc:
            raise RuntimeError(f"device authorization failed: {device.summary()}")
        page = await self.approve(doc["verification_uri_complete"], self.user(role)["sub"])
        token = await self.poll(doc["device_code"])
        return SignIn(device, page, token)

    async def start_device(self, form: dict[str, str] | None = None) -> Answer:
        return await self.target.post(
            "/oauth/device_authorization", form=form if form is not None else {"surface": "claude_code"}, headers=CLI_HEADERS
        )

    async def approve(self, verification_uri_complete: str, sub: str) -> Page:
        browser = ScriptedBrowser()
        try:
            return await approve_device(browser, verification_uri_complete, idp_fields={"sub": sub})
        finally:
            await browser.close()

    async def poll(self, device_code: str) -> Answer:
        return await self.token_form({"grant_type": DEVICE_GRANT, "device_code": device_code})

    async def token_form(self, form: dict[str, str]) -> Answer:
        return await self.target.post("/oauth/token", form=form, headers=CLI_HEADERS)


class Ctx:
    """One check's view: the suite, plus recording verdicts against the check's IDs."""

    def __init__(self, suite: Suite, verdicts: Verdicts) -> None:
        self.suite = suite
        self.v = verdicts
        self.t = suite.target
        self.fake = suite.fake
        self.state = suite.state

    # -- recording -----------------------------------------------------------

    def declared(self, rid: str) -> bool:
        return rid in self.v.ids

    def expect(self, rid: str, ok: bool, what: str = "", *, observed: Any = NOT_GIVEN, expected: Any = NOT_GIVEN) -> bool:
        return self.v.expect(rid, ok, what, observed=observed, expected=expected)

    def equal(self, rid: str, observed: Any, expected: Any, what: str = "") -> bool:
        return self.v.expect(rid, observed == expected, what, observed=observed, expected=expected)

    def also(self, rid: str, ok: bool, what: str = "", *, observed: Any = NOT_GIVEN, expected: Any = NOT_GIVEN) -> None:
        """Record against ``rid`` only when this check declares it (shared helpers use this)."""
        if self.declared(rid):
            self.v.expect(rid, ok, what, observed=observed, expected=expected)

    def skip(self, reason: str, *rids: str) -> None:
        self.v.skip(reason, *rids)

    # -- shared expectations ---------------------------------------------------

    def status(self, rid: str, answer: Answer, expected: int, what: str = "") -> bool:
        return self.expect(
            rid, answer.status == expected, what or f"{answer.method} answers {expected}", observed=answer.summary(), expected=expected
        )

    def envelope(
        self,
        rid: str,
        answer: Answer,
        status: int,
        error_type: str,
        *,
        message: str | None = None,
        contains: str | None = None,
        no_retry: bool = False,
        what: str = "",
    ) -> dict[str, Any] | None:
        """Expect ``answer`` to be the gateway's own error in the envelope (SPEC §14.1).

        Records ``rid`` for status, type and message; and, when the check
        declares them, ERR-1 (envelope), ERR-2 (request id and content type),
        ERR-6 (status and type pair), ROLE-4 (request id form) and RETRY-2 /
        LIMIT-6 (``x-should-retry: false``).
        """
        label = what or f"{answer.method} {answer.url.split('?')[0]}"
        body = answer.json()
        detail = body.get("error") if isinstance(body, dict) else None
        shape_ok = (
            isinstance(body, dict)
            and body.get("type") == "error"
            and isinstance(detail, dict)
            and isinstance(detail.get("type"), str)
            and isinstance(detail.get("message"), str)
        )
        self.expect(rid, answer.status == status, f"{label}: status", observed=answer.summary(), expected=status)
        got_type = detail.get("type") if isinstance(detail, dict) else None
        self.expect(rid, got_type == error_type, f"{label}: error.type", observed=answer.summary(), expected=error_type)
        got_message = detail.get("message") if isinstance(detail, dict) else None
        if message is not None:
            self.equal(rid, got_message, message, f"{label}: error.message")
        if contains is not None:
            self.expect(
                rid,
                isinstance(got_message, str) and contains in got_message,
                f"{label}: error.message names {contains!r}",
                observed=got_message,
                expected=f"a message containing {contains!r}",
            )
        self.also("ERR-1", shape_ok, f"{label}: error envelope", observed=answer.summary(), expected='{"type":"error","error":{"type","message"},"request_id"}')
        self.also("ERR-6", answer.status == status and got_type == error_type, f"{label}: status/type pair", observed=(answer.status, got_type), expected=(status, error_type))
        header_id = answer.header("request-id")
        body_id = body.get("request_id") if isinstance(body, dict) else None
        self.also("ERR-2", header_id is not None and body_id == header_id and answer.content_type == "application/json",
                  f"{label}: request_id equals the request-id header, JSON content type",
                  observed=(body_id, header_id, answer.content_type), expected="same id twice, application/json")
        self.also("ROLE-4", bool(header_id and REQUEST_ID.match(header_id)), f"{label}: request-id header", observed=header_id, expected="req_ + 32 lowercase hex digits")
        if no_retry:
            retry = answer.header("x-should-retry")
            for rid_retry in (rid, "RETRY-2"):
                if rid_retry == rid or self.declared(rid_retry):
                    self.expect(rid_retry, retry == "false", f"{label}: x-should-retry", observed=retry, expected="false")
        return body if isinstance(body, dict) else None

    def oauth_error(self, rid: str, answer: Answer, status: int | tuple[int, ...], code: str, what: str = "") -> None:
        """Expect an OAuth error object (SPEC ERR-4, TOKEN-3) with ``code``."""
        statuses = status if isinstance(status, tuple) else (status,)
        body = answer.json()
        label = what or answer.url.split("?")[0]
        self.expect(rid, answer.status in statuses, f"{label}: status", observed=answer.summary(), expected=" or ".join(map(str, statuses)))
        got = body.get("error") if isinstance(body, dict) else None
        self.equal(rid, got, code, f"{label}: error")
        self.also("ERR-4", isinstance(got, str) and "type" not in (body or {}), f"{label}: OAuth error object", observed=answer.summary(), expected='{"error": ...}')

    # -- conveniences ------------------------------------------------------------

    async def identity(self, role: str = "normal") -> Identity:
        return await self.suite.identity(role)

    async def bearer(self, role: str = "normal") -> str:
        return (await self.identity(role)).access_token

    async def messages(
        self,
        body: Any = None,
        *,
        raw: bytes | None = None,
        role: str = "normal",
        path: str = "/v1/messages",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        bearer: str | None = None,
        **kw: Any,
    ) -> Answer:
        data = raw if raw is not None else json.dumps(body).encode()
        sent: list[tuple[str, str]] = [("Content-Type", "application/json"), ("anthropic-version", "2023-06-01")]
        extra = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in extra}
        sent = [(k, v) for k, v in sent if k.lower() not in names] + extra
        token = bearer if bearer is not None else await self.bearer(role)
        return await self.t.post(path, body=data, headers=sent, bearer=token, **kw)

    async def received(self) -> list[dict[str, Any]]:
        return await self.fake.received()

    def upstream_of(self, record: dict[str, Any]) -> str | None:
        """Which fixture upstream a request recorded by the fake was sent as (by its API key)."""
        key = header_value(record["headers"], "x-api-key")
        if key == self.state.primary_key:
            return "primary"
        if key == self.state.secondary_key:
            return "secondary"
        return None


def header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers if k.lower() == wanted), None)


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    wanted = name.lower()
    return [v for k, v in headers if k.lower() == wanted]


def obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (answers are untrusted)."""
    return value if isinstance(value, dict) else {}


def arr(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def small_request(model: str = "claude-sonnet-4-6", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi."}]}
    body.update(fields)
    return body
