"""A bounded HTTP fuzz run against a real gateway process (issue 12, "a fuzz run that keeps it so").

Thousands of mutated requests (methods, paths, headers, bearer tokens, Messages
bodies, sign-in forms and the IdP callback, admin API bodies and queries for spend
limits and sessions, OTLP exports in every type and coding, raw byte flips),
written as raw bytes on their own connections so that nothing a client library
would refuse to send is left out. The gateway runs on real PostgreSQL, a real OIDC
provider, a healthy fake upstream and a loopback OTLP collector (the relay stamps
identities, so every export is decoded), with spend caps set. The run fails on any
5xx (the fake never fails, so no 5xx is an upstream's), on any hang and on any
traceback in the gateway's log.

Every request comes from its own seeded generator (``GATEHOUSE_FUZZ_SEED`` + its
index), so a failure names the index that reproduces it whatever the concurrency.
``GATEHOUSE_FUZZ_REQUESTS`` sets the count (default 3000, about 20 s here); the
production run scales it to 100,000.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import pathlib
import platform
import random
import re
import signal
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import pytest

from gateway.auth.tokens import TokenService
from protocol_spec.idp_process import IdpProcess
from tests.harness import JWT_SECRET
from tests.system.test_process import free_port, spawn, wait_exit, wait_ready

REQUESTS = int(os.environ.get("GATEHOUSE_FUZZ_REQUESTS", "3000"))
SEED = int(os.environ.get("GATEHOUSE_FUZZ_SEED", "12"))
# Replay: only these request indices (comma-separated), printing each request and answer.
ONLY = [int(i) for i in os.environ.get("GATEHOUSE_FUZZ_ONLY", "").split(",") if i.strip()]
# Where to write summary.json and summary.md (make fuzz: bench/results/<date>-<host>-fuzz/).
OUT = os.environ.get("GATEHOUSE_FUZZ_OUT", "")
CONCURRENCY = 16
# Bounded in time as well as in count: ~150 requests a second here, so these bounds are generous.
RUN_BOUND_S = max(90.0, REQUESTS / 25)
ANSWER_WITHIN_S = 15.0  # a request with no answer and no close by then is a hang
WRITE_KEY = "fuzz-write-key-0123456789abcdef0123456789"
READ_KEY = "fuzz-read-key-0123456789abcdef01234567890"
USERS = ("fuzz-alice", "fuzz-capped", "fuzz-bob")
ALICE = {"sub": "alice", "email": "alice@example.com", "email_verified": True, "groups": ["eng"]}
# Lines in the gateway's log that mean an exception escaped a handler.
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "Error handling request", "Unhandled exception")

# ------------------------------------------------------------------ the gateway under test


@dataclass
class Target:
    port: int
    public_url: str
    tokens: TokenService
    proc: object
    device_code: str = ""
    user_code: str = ""

    def token(self, sub: str, groups: list[str] | None = None) -> str:
        return self.tokens.mint(sub=sub, email=f"{sub}@example.com", groups=groups or ["eng"], now=int(time.time()))


@pytest.fixture(scope="module")
def idp():
    with IdpProcess([ALICE]) as proc:
        yield proc


@pytest.fixture(scope="module")
async def upstream():
    from protocol_spec.fakes.upstream import FakeUpstream

    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
async def collector():
    from tests.telemetry.collector import Collector

    c = await Collector().start()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture(scope="module")
async def target(tmp_path_factory, pg_cluster, upstream, idp, collector):
    db = pg_cluster.create_database("fuzz_" + uuid.uuid4().hex[:8])
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    cfg = tmp_path_factory.mktemp("fuzz") / "gateway.yaml"
    cfg.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}, public_url: "{public}", trusted_proxies: ["127.0.0.1/32"]}}
access_control: {{deny_cidrs: ["203.0.113.0/24"]}}
managed:
  policies:
    - match: {{groups: [contractors]}}
      cli: {{availableModels: [claude-haiku-4-5], model: claude-haiku-4-5}}
    - match: {{}}
      cli: {{permissions: {{allow: [Read]}}}}
oidc: {{issuer: "{idp.issuer}", client_id: gatehouse, client_secret: fuzz-secret}}
session: {{jwt_secret: "${{JWT}}"}}
store: {{postgres_url: "{db}"}}
upstreams: [{{provider: anthropic, base_url: "{upstream.url}", auth: {{api_key: "${{UPSTREAM_KEY}}"}}}}]
admin:
  write_keys: [{{id: fuzz, key: "{WRITE_KEY}"}}]
  read_keys: [{{id: fuzz-read, key: "{READ_KEY}"}}]
  admin_groups: [gatehouse-admins]
telemetry:
  forward_to: [{{url: "{collector.url}", metrics: true, logs: true, traces: true}}]
gatehouse:
  connections:
    header_read_timeout_seconds: 2
    body_read_timeout_seconds: 2
    keepalive_idle_timeout_seconds: 2
  telemetry: {{stamp_identity: true}}
"""
    )
    proc = spawn("serve", "--config", str(cfg))
    try:
        await wait_ready(port, proc)
        tgt = Target(port, public, TokenService((JWT_SECRET,), public, 3600), proc)
        await _set_caps(tgt)
        tgt.device_code, tgt.user_code = await _start_device_sign_in(tgt)
        yield tgt
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await wait_exit(proc)


async def _set_caps(tgt: Target) -> None:
    """An organization cap nobody reaches and a tiny one for fuzz-capped (so both paths run)."""
    caps = [
        {"scope": {"type": "organization"}, "amount": "100000", "period": "monthly"},
        {"scope": {"type": "user", "user_id": "fuzz-capped"}, "amount": "1", "period": "daily"},
    ]
    async with aiohttp.ClientSession() as s:
        for cap in caps:
            async with s.post(
                f"{tgt.public_url}/v1/organizations/spend_limits", json=cap, headers={"x-api-key": WRITE_KEY}
            ) as r:
                assert r.status == 200, await r.text()


async def _start_device_sign_in(tgt: Target) -> tuple[str, str]:
    """A live device code and user code, so the mutated sign-in forms reach past the lookup."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{tgt.public_url}/oauth/device_authorization", data={"surface": "cli"}) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
    return doc["device_code"], doc["user_code"]


# ------------------------------------------------------------------ one raw exchange


@dataclass
class Exchange:
    status: int | None  # None: closed without an answer
    hung: bool = False
    answer: bytes = b""


async def send_raw(port: int, raw: bytes) -> Exchange:
    """Write ``raw`` on a fresh connection; the status line of the answer, if any."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), ANSWER_WITHIN_S)
    except (OSError, TimeoutError):
        return Exchange(None, hung=True)
    line = b""
    try:
        try:
            writer.write(raw)
            await writer.drain()
        except ConnectionError:
            pass  # the gateway may answer and close before reading all of it
        try:
            line = await asyncio.wait_for(reader.readline(), ANSWER_WITHIN_S)
            if line:
                # Read the rest so the gateway finishes its side; it closes (Connection: close,
                # or a deadline on a request we left unfinished).
                line += await asyncio.wait_for(reader.read(), ANSWER_WITHIN_S)
        except ConnectionError:
            pass
        except TimeoutError:
            return Exchange(_status(line), hung=True, answer=line)
        return Exchange(_status(line), answer=line)
    finally:
        writer.close()


# aiohttp reads a request line with no space before "HTTP/1.1" as HTTP/0.9 and answers
# (a 404 for the odd path) with an "HTTP/0.9" status line: an answer all the same.
STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/(?:1\.[01]|0\.9) (\d{3}) ")


def _status(answer: bytes) -> int | None:
    """The worst final status in ``answer`` (two with a pipelined pair; 1xx interim ones skipped)."""
    statuses = [int(m[1]) for m in STATUS_LINE.finditer(answer) if int(m[1]) >= 200]
    return max(statuses) if statuses else None


# ------------------------------------------------------------------ the mutator


class Mutator:
    """Builds request ``index`` of the run, from its own seeded generator."""

    def __init__(self, tgt: Target, seed: int) -> None:
        self.tgt = tgt
        self.seed = seed
        # fuzz-bob is a contractor: the managed policy allows him one model only.
        self.tokens = {sub: tgt.token(sub, ["contractors"] if sub == "fuzz-bob" else None) for sub in USERS}
        self.admin_token = tgt.token("fuzz-admin", ["gatehouse-admins"])

    def request(self, index: int) -> tuple[str, bytes]:
        """(a short label for reports, the raw bytes: one request, or now and then two pipelined)."""
        rnd = random.Random(self.seed * 1_000_003 + index)
        label, raw = self.one(rnd, index, last=True)
        if rnd.random() < 0.1:
            # A kept-alive request first: what it leaves behind (a short or long body,
            # a broken head) is where the next one starts parsing.
            first_label, first = self.one(rnd, index, last=False)
            label, raw = f"{first_label} then {label}", first + raw
        return label, raw

    def one(self, rnd: random.Random, index: int, *, last: bool) -> tuple[str, bytes]:
        family = rnd.choice(FAMILIES)
        method, path, headers, body = family(self, rnd)
        if rnd.random() < 0.15:
            method = self.method(rnd, method)
        if rnd.random() < 0.15:
            path = self.path(rnd, path)
        if rnd.random() < 0.3:
            headers = self.headers(rnd, headers)
        raw = self.assemble(rnd, method, path, headers, body, close=last)
        if rnd.random() < 0.05:
            raw = flip_bytes(rnd, raw)
        return f"#{index} {family.__name__} {method[:12]!r} {path[:40]!r}", raw

    # -------------------------------------------------------------- parts

    def assemble(
        self, rnd: random.Random, method: str, path: str, headers: list[tuple[str, str]], body: bytes, *, close: bool
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.tgt.port}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not any(k.lower() == "content-length" for k, _ in headers) and (body or rnd.random() < 0.5):
            lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"
        return head + body

    def bearer(self, rnd: random.Random) -> str:
        choice = rnd.random()
        tok = self.tokens[rnd.choice(USERS)]
        if choice < 0.5:
            return tok
        if choice < 0.7:
            return mutate_jwt(rnd, tok)
        if choice < 0.8:
            return forged_jwt(rnd)
        return rnd.choice(["", " ", "null", "a.b.c", "..", "x" * rnd.randint(1, 5000), self.admin_token, rnd_text(rnd, 40)])

    def auth_headers(self, rnd: random.Random) -> list[tuple[str, str]]:
        r = rnd.random()
        if r < 0.8:
            return [("Authorization", f"Bearer {self.bearer(rnd)}")]
        if r < 0.9:
            return [("Authorization", rnd.choice(["Bearer", "Basic Zm9vOmJhcg==", "bearer  " + self.bearer(rnd), "Token x"]))]
        return []

    def method(self, rnd: random.Random, method: str) -> str:
        return rnd.choice(
            ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "post", "P0ST",
             "PROPFIND", "X" * rnd.randint(1, 100), method + method, ""]
        )

    def path(self, rnd: random.Random, path: str) -> str:
        r = rnd.random()
        if r < 0.3:
            return path + rnd.choice(["/", "//", "/..", "/%2e%2e", "%00", "?", "#x", ";a=b", "/x" * rnd.randint(1, 50)])
        if r < 0.5:
            return path + "?" + "&".join(f"{rnd_word(rnd)}={quote(rnd_text(rnd, 20))}" for _ in range(rnd.randint(1, 5)))
        if r < 0.6:
            return rnd.choice(["*", "http://127.0.0.1/v1/messages", "//v1/messages", "/%ff%fe", "/\u00e9", "/" + "a" * rnd.randint(1, 20000)])
        if r < 0.7:
            return "/" + quote(rnd_text(rnd, 30), safe="/%")
        return rnd.choice(PATHS)

    def headers(self, rnd: random.Random, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        headers = list(headers)
        for _ in range(rnd.randint(1, 4)):
            r = rnd.random()
            if r < 0.25 and headers:
                del headers[rnd.randrange(len(headers))]
            elif r < 0.5:
                headers.append((rnd.choice(HEADER_NAMES), rnd.choice(HEADER_VALUES)))
            elif r < 0.6:
                headers.append(("Content-Length", rnd.choice(["0", "-1", "abc", "99999999999999999999", "1", " 5", "5, 5"])))
            elif r < 0.7:
                headers.append(("X-Fuzz", rnd_text(rnd, rnd.randint(0, 200))))
            elif r < 0.75:
                headers.append(("X-Fuzz-" + rnd_word(rnd), "x" * rnd.randint(0, 10000)))
            elif r < 0.85:
                # Control characters in a header value, a credential among them now and then.
                name = rnd.choice(["X-Fuzz", "Authorization", "Cookie", "anthropic-beta", "Expect", "Content-Type", "Origin"])
                # "\udcb3" goes out as the single byte 0xb3 (not UTF-8), through surrogateescape.
                bad = rnd.choice(["\x7f", "\x00", "\x01", "\x1b", "\n", "\r", "\x0b", "\udcb3", "\udcff"])
                value = f"Bearer {self.tokens[USERS[0]]}" if name == "Authorization" else rnd_text(rnd, 10)
                at = rnd.randint(0, len(value))
                headers.append((name, value[:at] + bad + value[at:]))
            else:
                headers.append((rnd.choice(HEADER_NAMES), rnd_text(rnd, 30)))
        return headers


# ------------------------------------------------------------------ request families


def messages(m: Mutator, rnd: random.Random):
    path = rnd.choice(["/v1/messages", "/v1/messages", "/v1/messages/count_tokens", "/v1/messages?beta=true"])
    doc = {
        "model": rnd.choice(["claude-sonnet-4-6", "claude-opus-4-7", "claude-haiku-4-5-20251001"]),
        "max_tokens": rnd.choice([1, 8, 64]),
        "messages": [{"role": "user", "content": "hello"}],
    }
    if rnd.random() < 0.3:
        doc["stream"] = True
    body = dumps(mutate_json(rnd, doc, depth=0) if rnd.random() < 0.7 else doc)
    if rnd.random() < 0.15:
        body = mutate_bytes(rnd, body)
    headers = m.auth_headers(rnd) + [("Content-Type", "application/json"), ("anthropic-version", "2023-06-01")]
    return "POST", path, headers, body


def signin_form(m: Mutator, rnd: random.Random):
    path = rnd.choice(["/oauth/token", "/oauth/device_authorization", "/oauth/revoke", "/device"])
    fields = {
        "/oauth/token": {
            "grant_type": rnd.choice(["urn:ietf:params:oauth:grant-type:device_code", "refresh_token", "authorization_code", "password", ""]),
            "device_code": rnd.choice([m.tgt.device_code, m.tgt.device_code[:-1] + "x", rnd_text(rnd, 40)]),
            "refresh_token": rnd.choice([m.bearer(rnd), rnd_text(rnd, 60)]),
            "client_id": rnd.choice(["claude-code", "gatehouse", ""]),
            "code": rnd.choice(["", "x", rnd_text(rnd, 40)]),
            "code_verifier": rnd.choice(["a" * 43, "short", rnd_text(rnd, 128)]),
            "redirect_uri": rnd.choice(["http://localhost:1/callback", m.tgt.public_url, rnd_text(rnd, 30)]),
            "scope": rnd.choice(["user:inference", "", rnd_text(rnd, 20)]),
        },
        "/oauth/device_authorization": {"client_id": rnd.choice(["claude-code", "x"]), "scope": rnd_text(rnd, 20)},
        "/oauth/revoke": {"token": m.bearer(rnd), "token_type_hint": rnd.choice(["refresh_token", "access_token", "x"])},
        "/device": {
            "user_code": rnd.choice([m.tgt.user_code, m.tgt.user_code.lower(), "ABCD-EFGH", rnd_text(rnd, 12)]),
            "csrf": rnd_text(rnd, 20),
        },
    }[path]
    pairs = [(k, v) for k, v in fields.items() if rnd.random() < 0.8]
    body = encode_form(rnd, pairs)
    ctype = rnd.choice(["application/x-www-form-urlencoded"] * 6 + ["application/x-www-form-urlencoded; charset=latin-1", "application/json", "multipart/form-data; boundary=x", "text/plain", ""])
    headers = [("Content-Type", ctype)]
    if path == "/device":
        headers.append(rnd.choice([("Origin", m.tgt.public_url), ("Sec-Fetch-Site", "same-origin"), ("Origin", "http://evil.example")]))
    return "POST", path, headers, body


def admin(m: Mutator, rnd: random.Random):
    base = "/v1/organizations/spend_limits"
    key = rnd.choice([("x-api-key", WRITE_KEY), ("x-api-key", READ_KEY), ("x-api-key", rnd_text(rnd, 40)), ("Authorization", f"Bearer {m.admin_token}"), ("Authorization", f"Bearer {m.bearer(rnd)}")])
    r = rnd.random()
    if r < 0.55:
        scope = rnd.choice([{"type": "user", "user_id": rnd.choice(["fuzz-bob", "u" * 300, "", "a\u0000b"])}, {"type": "rbac_group", "group_id": "eng"}, {"type": "organization"}])
        # Caps that would stop everyone (the organization's, the eng group's) stay large,
        # so the rest of the run still reaches the upstream.
        small = ["500", "0"] if scope["type"] == "user" else []
        doc = {
            "scope": scope,
            "amount": rnd.choice([*small, None, 5, "-1", "1e9", "99999999999999999999999", "12.5"]),
            "period": rnd.choice(["daily", "weekly", "monthly", "yearly"]),
        }
        if rnd.random() < 0.3:
            doc["reason"] = rnd_text(rnd, rnd.randint(0, 600))
        if rnd.random() < 0.2:
            doc["pooled_limit_enabled"] = rnd.choice([True, False, "yes"])
            doc["pooled_monthly_credit_limit"] = rnd.choice(["100", 1, None])
        body = dumps(mutate_json(rnd, doc, depth=0) if rnd.random() < 0.5 else doc)
        if rnd.random() < 0.15:
            body = mutate_bytes(rnd, body)
        return "POST", base, [key, ("Content-Type", "application/json")], body
    if r < 0.75:
        query = rnd.choice(["", "?limit=5", "?limit=-1", "?limit=abc", "?after_id=" + quote(rnd_text(rnd, 20)), "?scope_type=user&user_id=" + quote(rnd_text(rnd, 10))])
        return "GET", rnd.choice([base, base + "/effective", base + "/audit"]) + query, [key], b""
    ident = rnd.choice(["sl_" + uuid.UUID(int=rnd.getrandbits(128)).hex, quote(rnd_text(rnd, 20)), "%00", "1"])
    return rnd.choice(["GET", "DELETE"]), f"{base}/{ident}", [key], b""


def sessions_admin(m: Mutator, rnd: random.Random):
    """The sign-in sessions admin API (a Gatehouse extension): list, revoke by email, revoke one."""
    base = "/v1/organizations/sessions"
    key = rnd.choice([("x-api-key", WRITE_KEY), ("x-api-key", READ_KEY), ("x-api-key", rnd_text(rnd, 40)), ("Authorization", f"Bearer {m.admin_token}"), ("Authorization", f"Bearer {m.bearer(rnd)}")])
    # Never the run's own users' addresses: their bearers must keep working.
    email = rnd.choice(["alice@example.com", "ALICE@EXAMPLE.COM", "nobody@example.com", "", "@", "a@", "@b", "a b@c", "a\u0000@b", "x" * 400 + "@b", rnd_text(rnd, 20)])
    r = rnd.random()
    if r < 0.4:
        pairs = [("email", email), ("limit", rnd.choice(["1", "20", "0", "-1", "1000", "x", ""])), ("after_id", rnd.choice(["sf_x", rnd_text(rnd, 30), "%00"]))]
        query = "&".join(f"{k}={quote(v)}" for k, v in pairs if rnd.random() < 0.7)
        return "GET", f"{base}?{query}" if query else base, [key], b""
    if r < 0.75:
        doc: dict = {"email": email}
        if rnd.random() < 0.5:
            doc["reason"] = rnd.choice([rnd_text(rnd, rnd.randint(0, 600)), None, 5, ["x"]])
        body = dumps(mutate_json(rnd, doc, depth=0) if rnd.random() < 0.5 else doc)
        if rnd.random() < 0.15:
            body = mutate_bytes(rnd, body)
        return "POST", f"{base}/revoke", [key, ("Content-Type", "application/json")], body
    family = rnd.choice(["sf_" + uuid.UUID(int=rnd.getrandbits(128)).hex, uuid.UUID(int=rnd.getrandbits(128)).hex, quote(rnd_text(rnd, 20)), "%00", "revoke", "x" * 300])
    query = rnd.choice(["", "?reason=" + quote(rnd_text(rnd, 40)), "?reason=%00", "?reason=" + "r" * 700])
    return rnd.choice(["DELETE", "DELETE", "GET", "POST"]), f"{base}/{family}{query}", [key], b""


def otlp(m: Mutator, rnd: random.Random):
    """An OTLP/HTTP export to the relay, which decodes each one to stamp the caller's identity."""
    signal = rnd.choice(["metrics", "logs", "traces"])
    kind = rnd.choice(["json", "json", "protobuf", "protobuf", "junk"])
    if kind == "json":
        doc = OTLP_JSON[signal] if rnd.random() < 0.3 else mutate_json(rnd, OTLP_JSON[signal], depth=0)
        body, ctype = dumps(doc), rnd.choice(["application/json", "application/json; charset=utf-8"])
    elif kind == "protobuf":
        body = OTLP_PROTOBUF[signal]
        if rnd.random() < 0.6:
            body = mutate_bytes(rnd, body)
        ctype = rnd.choice(["application/x-protobuf", "application/protobuf", ""])
    else:
        body, ctype = rnd.randbytes(rnd.randint(0, 400)), rnd.choice(["text/plain", "application/json", "application/x-protobuf", "x/y; a=b"])
    encoding = rnd.choice([None, None, "gzip", "deflate", "br", "gzip, deflate", "identity"])
    if encoding in ("gzip", "deflate"):
        r = rnd.random()
        if r < 0.02:
            # Small on the wire, past the 4 MiB the relay stamps: dropped, never inflated further.
            body = b"\x00" * (5 * 1024 * 1024)
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        if 0.02 <= r < 0.2:
            body = mutate_bytes(rnd, body)  # cut short, flipped, trailing bytes
    headers = m.auth_headers(rnd) + ([("Content-Type", ctype)] if ctype else [])
    if encoding:
        headers.append(("Content-Encoding", encoding))
    return "POST", f"/v1/{signal}", headers, body


def other(m: Mutator, rnd: random.Random):
    path = rnd.choice(PATHS)
    method = "POST" if path in ("/v1/metrics", "/v1/logs", "/v1/traces") else "GET"
    body = b""
    headers = m.auth_headers(rnd)
    if method == "POST":
        body = rnd.choice([b"{}", rnd.randbytes(rnd.randint(0, 300)), dumps(mutate_json(rnd, {"resourceMetrics": []}, 0))])
        headers.append(("Content-Type", rnd.choice(["application/json", "application/x-protobuf", "text/plain"])))
    if path == "/device":
        path += "?user_code=" + quote(rnd.choice([m.tgt.user_code, rnd_text(rnd, 12)]))
    if path == "/oauth/callback":
        path += "?" + rnd.choice([
            "", "code=x&state=y", "error=access_denied", "state=" + quote(rnd_text(rnd, 30)), "code=%00",
            "code=x&state=" + quote(rnd_text(rnd, 60)) + "&session_state=" + quote(rnd_text(rnd, 10)),
            "error=" + quote(rnd_text(rnd, 20)) + "&error_description=" + quote(rnd_text(rnd, 200)),
            "code=a&code=b&state=c&state=d", "state=" + "s" * 5000,
        ])
    return method, path, headers, body


# Real exports (one resource, one scope, one item each) for the otlp family to start from.
_RESOURCE = {"attributes": [{"key": "service.name", "value": {"stringValue": "claude-code"}},
                            {"key": "user.email", "value": {"stringValue": "someone@example.com"}}]}
_ATTRS = [{"key": "user.id", "value": {"stringValue": "u"}}, {"key": "n", "value": {"intValue": "5"}}]
OTLP_JSON = {
    "traces": {"resourceSpans": [{"resource": _RESOURCE, "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "parentSpanId": "",
        "name": "claude_code.request", "kind": 1, "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000100000000", "attributes": _ATTRS,
        "links": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175"}]}]}]}]},
    "logs": {"resourceLogs": [{"resource": _RESOURCE, "scopeLogs": [{"logRecords": [{
        "timeUnixNano": "1700000000000000000", "severityNumber": 9, "body": {"stringValue": "user_prompt"},
        "attributes": _ATTRS, "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"}]}]}]},
    "metrics": {"resourceMetrics": [{"resource": _RESOURCE, "scopeMetrics": [{"metrics": [{
        "name": "claude_code.cost.usage", "unit": "USD", "sum": {"aggregationTemporality": 1, "isMonotonic": True,
        "dataPoints": [{"asDouble": 0.5, "timeUnixNano": "1700000000000000000", "attributes": _ATTRS,
                        "exemplars": [{"asDouble": 1, "spanId": "eee19b7ec3c1b174"}]}]}}]}]}]},
}


def _protobuf(signal: str) -> bytes:
    from gateway.telemetry.otlp_body import parse

    return parse(signal, json.dumps(OTLP_JSON[signal]).encode(), "application/json", None).SerializeToString()


OTLP_PROTOBUF = {signal: _protobuf(signal) for signal in OTLP_JSON}


FAMILIES = (
    messages, messages, messages, signin_form, signin_form, admin, admin, sessions_admin, otlp, otlp, other, other,
)

PATHS = [
    "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/healthz", "/readyz", "/", "/v1/metrics",
    "/v1/logs", "/v1/traces", "/managed/settings", "/user/bootstrap", "/api/oauth/usage", "/protocol",
    "/protocol.json", "/.well-known/oauth-authorization-server", "/oauth/device_authorization", "/device",
    "/oauth/callback", "/oauth/token", "/oauth/revoke", "/v1/organizations/spend_limits", "/nope",
    "/v1/organizations/sessions", "/v1/organizations/sessions/revoke",
]
HEADER_NAMES = [
    "Content-Type", "Accept", "Accept-Encoding", "Content-Encoding", "Transfer-Encoding", "Expect", "Cookie",
    "Origin", "Sec-Fetch-Site", "X-Forwarded-For", "anthropic-beta", "anthropic-version", "User-Agent",
    "x-api-key", "Authorization", "Range", "If-None-Match", "Upgrade", "Host", "X-Real-IP",
    "x-claude-code-managed-settings-checksum", "x-claude-code-session-id", "Forwarded",
]
HEADER_VALUES = [
    "application/json", "text/event-stream", "gzip", "br, gzip", "chunked", "identity", "100-continue",
    "session=abc; other=\"x\"", "null", "http://evil.example", "same-origin", "1.2.3.4, ::1, 999.1.1.1",
    "not-an-ip", "203.0.113.9", "127.0.0.1, 203.0.113.9", "::ffff:203.0.113.9", '"sha256:abc", W/"x"',
    "sha256:" + "0" * 64, "prompt-caching-2024-07-31," * 20, "2023-06-01", "claude-cli/2.0", "", " ", "websocket",
    "bytes=0-10", "*", "x" * 9000,
]

# ------------------------------------------------------------------ value mutations


def rnd_word(rnd: random.Random) -> str:
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz_-") for _ in range(rnd.randint(1, 12)))


def rnd_text(rnd: random.Random, n: int) -> str:
    """Printable ASCII mostly, with some unicode; no control characters (those are mutations of their own)."""
    alphabet = "abcXYZ0123456789-_.~!$&'()*+,;=:@/?# %\"<>\\^`{|}" + "é√ü🙂中"
    return "".join(rnd.choice(alphabet) for _ in range(n))


# Strings that break careless code: NUL and other controls, lone surrogates (valid JSON,
# not encodable as UTF-8), line separators, a byte-order mark, markup, path tricks.
ODD_STRINGS = [
    "", "\u0000", "a\u0000b", "\ud800", "\udfff", "x\udc80y", "\u2028", "\ufeff", "\u202e", "\x1b[31m", "\r\n",
    "🙂", "<script>", "../../etc/passwd", "%00", "claude-sonnet-4-6\n", " claude-sonnet-4-6", "NaN", "1e999",
]


def odd_value(rnd: random.Random, depth: int):
    if rnd.random() < 0.4:
        return rnd.choice(ODD_STRINGS)
    choices = [
        None, True, False, 0, -1, 2**63, -(2**64), 1e308, 0.5, "x" * rnd.randint(1, 5000), [], {},
        [1, "a", None], {"a": {"b": None}}, "claude-sonnet-4-6-" + "x" * 50, rnd_text(rnd, 30),
    ]
    if depth < 3 and rnd.random() < 0.2:
        if rnd.random() < 0.1:
            return f"deep:{rnd.randint(1000, 5000)}"  # past the interpreter's recursion limit
        value: object = "x"
        for _ in range(rnd.randint(2, 50)):
            value = [value] if rnd.random() < 0.5 else {"k": value}
        return value
    return rnd.choice(choices)


DEEP = re.compile(rb'"deep:(\d+)"')


def dumps(doc) -> bytes:
    """JSON of ``doc``, with each ``"deep:N"`` string replaced by arrays nested N deep."""
    return DEEP.sub(lambda m: b"[" * int(m[1]) + b"]" * int(m[1]), json.dumps(doc).encode())


def mutate_json(rnd: random.Random, doc, depth: int):
    if isinstance(doc, dict):
        out = dict(doc)
        for _ in range(rnd.randint(1, 3)):
            r = rnd.random()
            keys = list(out)
            if r < 0.35 and keys:
                out[rnd.choice(keys)] = odd_value(rnd, depth)
            elif r < 0.5 and keys:
                del out[rnd.choice(keys)]
            elif r < 0.7:
                out[rnd.choice([rnd_word(rnd), "tags", "metadata", "stream", "system", "tools", "thinking"])] = odd_value(rnd, depth)
            elif keys:
                k = rnd.choice(keys)
                out[k] = mutate_json(rnd, out[k], depth + 1)
        return out
    if isinstance(doc, list):
        out_list = [mutate_json(rnd, v, depth + 1) if rnd.random() < 0.5 else v for v in doc]
        if rnd.random() < 0.3:
            out_list.append(odd_value(rnd, depth))
        return out_list
    return odd_value(rnd, depth) if rnd.random() < 0.5 else doc


def mutate_bytes(rnd: random.Random, body: bytes) -> bytes:
    r = rnd.random()
    if r < 0.3:
        return body[: rnd.randint(0, len(body))]
    if r < 0.5:
        at = rnd.randint(0, len(body))
        return body[:at] + rnd.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80", b'"', b"{", b",,", b"\\u00"]) + body[at:]
    if r < 0.6:
        return body.replace(b'"model"', b'"model","model":1', 1)
    return flip_bytes(rnd, body)


def flip_bytes(rnd: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        out[rnd.randrange(len(out))] = rnd.randrange(256)
    return bytes(out)


def encode_form(rnd: random.Random, pairs: list[tuple[str, str]]) -> bytes:
    parts = []
    for k, v in pairs:
        r = rnd.random()
        value = quote(v, safe="").encode()
        if r < 0.1:
            value = rnd.choice([b"%00", b"%ff%fe", b"%zz", b"%", b"%e9", b"a%2", b"\xff\xfe", b"+%2B+"])
        elif r < 0.15:
            value = b"x" * rnd.randint(1, 20_000)
        parts.append(quote(k, safe="").encode() + rnd.choice([b"=", b"=", b"=", b"", b"=="]) + value)
    if rnd.random() < 0.1:
        parts.append(parts[0] if parts else b"a=b")
    return rnd.choice([b"&", b"&", b";", b"&&"]).join(parts)


def mutate_jwt(rnd: random.Random, token: str) -> str:
    parts = token.split(".")
    r = rnd.random()
    if r < 0.3:
        i = rnd.randrange(len(parts))
        p = list(parts[i])
        if p:
            p[rnd.randrange(len(p))] = rnd.choice("AZaz09-_=+/.")
        parts[i] = "".join(p)
    elif r < 0.5:
        parts = parts[: rnd.randint(0, 2)]
    elif r < 0.7:
        parts.append(rnd.choice(["", "x", parts[-1]]))
    else:
        header = rnd.choice([
            {"alg": "none", "typ": "JWT"}, {"alg": "HS256"}, {"alg": "RS256", "kid": "x"}, {"alg": "HS256", "kid": 5},
            {"alg": "HS256", "kid": None}, {"alg": ["HS256"]}, {}, {"alg": "HS256", "kid": "x" * 1000},
            {"alg": "HS256", "kid": ["x"]}, {"alg": "HS256", "kid": {"k": 1}}, [], "x",
        ])
        parts[0] = b64(json.dumps(header).encode())
    return ".".join(parts)


def forged_jwt(rnd: random.Random) -> str:
    payload = {
        "sub": rnd.choice(["", "x", None, 5, "fuzz-alice"]), "exp": rnd.choice([0, 2**40, "soon", -1]),
        "iat": rnd.choice([0, "x", None]), "iss": rnd.choice(["x", None]), "email": rnd.choice([None, 5, "a@b"]),
    }
    return ".".join([b64(b'{"alg":"HS256","typ":"JWT"}'), b64(json.dumps(payload).encode()), b64(rnd.randbytes(32))])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------ the run

def write_results(
    out: str, statuses: Counter, by_family: Counter, duration_s: float, failures: list[str], tracebacks: list[str],
    silent: list[str], relayed: int,
) -> None:
    """summary.json and summary.md of the run in ``out`` (bench/results/<date>-<host>-fuzz/ under make fuzz)."""
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    families = sorted({f for f, _ in by_family})
    codes = sorted({c for _, c in by_family}, key=lambda c: (c is None, c or 0))
    doc = {
        "command": os.environ.get("GATEHOUSE_FUZZ_COMMAND")
        or f"GATEHOUSE_FUZZ_REQUESTS={REQUESTS} GATEHOUSE_FUZZ_SEED={SEED} pytest tests/system/test_http_fuzz.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requests": REQUESTS,
        "seed": SEED,
        "concurrency": CONCURRENCY,
        "duration_s": round(duration_s, 1),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "statuses_by_family": {f: {str(c): by_family[f, c] for c in codes if by_family[f, c]} for f in families},
        "failures": failures[:200],
        "closed_without_answer": silent[:200],
        "otlp_exports_at_the_collector": relayed,
        "tracebacks": len(tracebacks),
        "passed": not failures and not tracebacks,
    }
    (folder / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    head = "| family | " + " | ".join("no answer" if c is None else str(c) for c in codes) + " | total |"
    rows = [head, "|" + "---|" * (len(codes) + 2)]
    for f in [*families, "all"]:
        counts = [sum(by_family[g, c] for g in families) if f == "all" else by_family[f, c] for c in codes]
        rows.append(f"| {f} | " + " | ".join(f"{n:,}" for n in counts) + f" | {sum(counts):,} |")
    (folder / "summary.md").write_text(
        f"# HTTP fuzz run, {doc['date']}\n\n"
        f"`{doc['command']}`: {REQUESTS:,} requests (seed {SEED}, {CONCURRENCY} at a time) in "
        f"{duration_s:.0f} s on {doc['machine']['host']} ({doc['machine']['cpus']} CPUs, "
        f"Python {doc['machine']['python']}); {'passed' if doc['passed'] else 'FAILED'}: "
        f"{len(failures)} failures (5xx, hangs, echoed credentials), {len(tracebacks)} tracebacks in the log; "
        f"{relayed:,} stamped OTLP exports reached the collector.\n\n"
        "Statuses by request family (a pipelined pair counts under its second request):\n\n"
        + "\n".join(rows) + "\n"
    )


FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


EXCEPTION = re.compile(r"\b([A-Z]\w*(?:Error|Exception|Failed))\b")


def traceback_site(line: str) -> str:
    """Where a logged traceback was raised: its innermost frame and its last exception's class."""
    frames = FRAME.findall(line)
    site = f"{frames[-1][0].rsplit('/site-packages/', 1)[-1]}:{frames[-1][1]} in {frames[-1][2]}" if frames else "?"
    names = EXCEPTION.findall(line)
    return f"{site}: {names[-1] if names else '?'}"


@pytest.mark.timeout(RUN_BOUND_S + 90)  # the run, plus starting the IdP and the gateway
async def test_thousands_of_mutated_requests_get_no_5xx_and_log_no_traceback(target, collector):
    mutator = Mutator(target, SEED)
    # Signatures of the valid bearers, and the admin keys: none may be echoed or logged.
    secrets = [t.rsplit(".", 1)[1].encode() for t in (*mutator.tokens.values(), mutator.admin_token)]
    secrets += [WRITE_KEY.encode(), READ_KEY.encode()]
    statuses: Counter[int | None] = Counter()
    by_family: Counter[tuple[str, int | None]] = Counter()
    failures: list[str] = []
    silent: list[str] = []
    queue = iter(ONLY or range(REQUESTS))
    started = time.monotonic()
    deadline = started + RUN_BOUND_S

    async def worker() -> None:
        for index in queue:
            if time.monotonic() > deadline:
                failures.append("the run overran its time bound")
                return
            label, raw = mutator.request(index)
            ex = await send_raw(target.port, raw)
            if ONLY:
                print(f"{label}\n  sent   {raw[:2000]!r}\n  answer {ex.answer[:2000]!r}")
            statuses[ex.status] += 1
            # A pipelined pair counts under the family of its second (last) request.
            by_family[label.rsplit(" then ", 1)[-1].split()[1], ex.status] += 1
            if ex.status is None and not ex.hung:
                silent.append(label)  # closed with no answer: allowed, listed in the summary
            if ex.hung:
                failures.append(f"{label}: no answer and no close within {ANSWER_WITHIN_S:g}s")
            elif ex.status is not None and ex.status >= 500:
                failures.append(f"{label}: {ex.status} — raw {raw[:300]!r}")
            if any(sig in ex.answer for sig in secrets if sig in raw):
                failures.append(f"{label}: the answer echoes a credential")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    duration_s = time.monotonic() - started

    # Still healthy afterwards.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{target.port}/readyz") as r:
            assert r.status == 200
    log = target.proc.stderr.read()  # type: ignore[attr-defined]
    if ONLY:
        print("gateway log:\n" + "\n".join(line for line in log.splitlines() if '"evt":"inference"' not in line))
    tracebacks = [line for line in log.splitlines() if any(m in line for m in TRACEBACK_MARKERS)]
    sites = Counter(traceback_site(line) for line in tracebacks)
    where = "".join(f"\n  {n} × {site}" for site, n in sites.most_common(10))
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    print(f"fuzz: {REQUESTS} requests, seed {SEED}, {duration_s:.0f} s; statuses {summary}")
    if OUT and not ONLY:
        write_results(OUT, statuses, by_family, duration_s, failures, tracebacks, silent, len(collector.received))
    assert not failures, (
        f"{len(failures)} failure(s); statuses {summary}; tracebacks by where they were raised:{where}\n"
        + "\n".join(failures[:40])
    )
    assert not tracebacks, f"{len(tracebacks)} traceback(s) in the gateway's log, by where they were raised:{where}"
    leaked = [line for line in log.splitlines() if any(sig.decode() in line for sig in secrets)]
    assert not leaked, f"{len(leaked)} log line(s) hold a credential:\n" + "\n".join(x[:300] for x in leaked[:10])
    assert ONLY or statuses[200] > REQUESTS // 20, f"too few requests got through to be a test of anything: {summary}"
    # The relay was exercised: stamped exports reached the collector.
    assert ONLY or REQUESTS < 500 or collector.received, "no OTLP export reached the collector"
