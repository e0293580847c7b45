"""A small, scriptable OpenID Connect provider for tests: a real aiohttp server
on a loopback port.

It does the ordinary thing by default — discovery, a JWKS with an RSA (RS256)
and an EC (ES256) key, an authorize endpoint that redirects straight back with
a code (or shows a one-field form), a token endpoint for the code and refresh
grants with PKCE and client authentication checks, and userinfo — and lets a
test bend any of it:

* ``id_token(...)`` mints crafted id_tokens: any claims, any of our keys,
  ``alg: none``, HS256 keyed with the RSA public key (the algorithm-confusion
  attack), a kid the JWKS does not publish;
* ``script_jwks(...)`` queues JWKS answers (key rotation);
* ``script_token(...)`` queues token-endpoint answers (crafted tokens, 400
  ``invalid_grant``, 500, slow answers);
* ``discovery_overrides`` / ``discovery_status`` / ``delays`` shape the rest;
* ``requests`` records every call (headers, query and form), so a test can check
  client authentication, the PKCE verifier or the scope sent on refresh.

Client authentication by ``private_key_jwt`` (RFC 7523): put it in
``accept_auth`` and register the client's certificates (PEM) in
``client_certificates`` — found by the assertion's ``x5t`` thumbprint, as
Microsoft Entra does — or its public keys in ``client_keys`` by ``kid``, as
Okta does. An assertion passes when its signature verifies with that key,
``iss`` and ``sub`` are the client_id, ``aud`` is this token endpoint, it has
not expired and its ``jti`` was never seen before; otherwise the answer is 401
``invalid_client`` and ``assertion_rejections`` says why.

Users live in ``users`` (sub → claims); changing them, or ``revoke(sub)``, takes
effect on the next refresh / userinfo call, which is how deprovisioning is
simulated.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import html
import json
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS256", "ES256", "ES384", "ES512")

DROP: Any = object()  # a claim override that removes the claim


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]

    @property
    def auth_method(self) -> str | None:
        if self.headers.get("Authorization", "").startswith("Basic "):
            return "client_secret_basic"
        if "client_secret" in self.form:
            return "client_secret_post"
        if "client_assertion" in self.form:
            return "private_key_jwt"
        return None


@dataclass
class TokenReply:
    """One scripted token-endpoint answer. ``json`` wins over ``raw``; with
    neither, the endpoint answers as usual (after ``delay``)."""

    status: int = 200
    json: Any = None
    raw: bytes | None = None
    delay: float = 0.0


@dataclass
class _Grant:
    sub: str
    nonce: str | None
    redirect_uri: str
    scope: str
    challenge: str | None
    method: str | None


@dataclass
class _Refresh:
    sub: str
    scope: str
    revoked: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class ScriptedIdp:
    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = "gatehouse-test"
    client_secret: str = "idp-client-secret"
    ssl_context: ssl.SSLContext | None = None
    clock: Any = time.time
    # Which client authentication the token endpoint accepts.
    accept_auth: set[str] = field(default_factory=lambda: {"client_secret_basic", "client_secret_post"})
    # "redirect": authorize answers 302 at once; "form": a page whose form posts back.
    authorize_mode: str = "redirect"
    default_sub: str = "alice"
    # On refresh: "if_openid" (Okta: only when scope re-requests openid), "always", "never".
    id_token_on_refresh: str = "if_openid"
    issue_refresh_tokens: bool = True
    rotate_refresh_tokens: bool = False
    token_lifetime_s: int = 300
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    discovery_status: int = 200
    userinfo_status: int | None = None
    delays: dict[str, float] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # private_key_jwt: registered certificates (PEM) and public keys by kid.
    client_certificates: list[bytes] = field(default_factory=list)
    client_keys: dict[str, Any] = field(default_factory=dict)
    assertion_rejections: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rsa_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"}, private=True)
        self.ec_key = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"}, private=True)
        self.published: list[Any] = [self.rsa_key, self.ec_key]
        self.users.setdefault(
            "alice",
            {
                "email": "alice@example.com",
                "email_verified": True,
                "name": "Alice Example",
                "groups": ["eng"],
            },
        )
        self._jwks_queue: collections.deque[list[Any]] = collections.deque()
        self._token_queue: collections.deque[TokenReply] = collections.deque()
        self._codes: dict[str, _Grant] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._access: dict[str, str] = {}
        self._seen_jtis: set[str] = set()
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> ScriptedIdp:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_route("*", "/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_route("*", "/userinfo", self._userinfo)
        app.middlewares.append(self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedIdp:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def issuer(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------ scripting

    def script_jwks(self, *key_lists: list[Any]) -> None:
        """Queue JWKS answers, one per fetch; afterwards ``published`` is served."""
        self._jwks_queue.extend(key_lists)

    def script_token(self, *replies: TokenReply) -> None:
        self._token_queue.extend(replies)

    def revoke(self, sub: str) -> None:
        """Deprovision: every refresh token of ``sub`` stops working."""
        for grant in self._refresh.values():
            if grant.sub == sub:
                grant.revoked = True
        self._access = {t: s for t, s in self._access.items() if s != sub}

    def new_key(self, kind: str = "RSA", kid: str = "rsa-2") -> Any:
        """A fresh private key, not published until a test says so."""
        if kind == "EC":
            return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"}, private=True)
        return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"}, private=True)

    def claims_for(self, sub: str, *, nonce: str | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.client_id,
            "iat": now,
            "exp": now + self.token_lifetime_s,
            **self.users.get(sub, {}),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        for name, value in overrides.items():
            if value is DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def id_token(
        self,
        sub: str | None = None,
        *,
        nonce: str | None = None,
        alg: str = "RS256",
        key: Any = None,
        kid: str | None | Any = None,
        hmac_secret: bytes | None = None,
        **overrides: Any,
    ) -> str:
        """A crafted id_token. ``alg="none"`` is unsigned; ``alg="HS256"`` is keyed
        with ``hmac_secret``, by default the RSA *public* key in PEM (the
        confusion attack). ``kid=DROP`` leaves the kid out of the header."""
        claims = self.claims_for(sub or self.default_sub, nonce=nonce, **overrides)
        return self.sign(claims, alg=alg, key=key, kid=kid, hmac_secret=hmac_secret)

    def sign(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        key: Any = None,
        kid: Any = None,
        hmac_secret: bytes | None = None,
    ) -> str:
        payload = json.dumps(claims).encode()
        if alg == "none" or alg.startswith("HS"):
            header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
            if kid not in (None, DROP):
                header["kid"] = kid
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(payload)}"
            if alg == "none":
                return signing_input + "."
            secret = hmac_secret if hmac_secret is not None else self.rsa_key.as_pem(private=False)
            digest = getattr(hashlib, "sha" + alg[2:])
            return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), digest).digest())}"
        key = key or (self.ec_key if alg.startswith("ES") else self.rsa_key)
        header = {"alg": alg, "typ": "JWT"}
        if kid is DROP:
            pass
        elif kid is not None:
            header["kid"] = kid
        elif key.kid:
            header["kid"] = key.kid
        return jws.serialize_compact(header, payload, key, algorithms=[alg])

    # ------------------------------------------------------------ endpoints

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), form)
        )
        delay = self.delays.get(request.path)
        if delay:
            await asyncio.sleep(delay)
        return await handler(request)

    def discovery_document(self) -> dict[str, Any]:
        base = self.issuer
        doc: dict[str, Any] = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": sorted(self.accept_auth),
            "code_challenge_methods_supported": ["S256"],
        }
        for name, value in self.discovery_overrides.items():
            if value is DROP:
                doc.pop(name, None)
            else:
                doc[name] = value
        return doc

    async def _discovery(self, request: web.Request) -> web.Response:
        if self.discovery_status != 200:
            return web.Response(status=self.discovery_status, text="discovery is down")
        return web.json_response(self.discovery_document())

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = self._jwks_queue.popleft() if self._jwks_queue else self.published
        return web.json_response({"keys": [k.as_dict(private=False) for k in keys]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != self.client_id or not q.get("redirect_uri"):
            return web.Response(status=400, text="unknown client or missing redirect_uri")
        if self.authorize_mode == "form" and request.method == "GET":
            return web.Response(
                content_type="text/html",
                text=f'<!doctype html><title>Scripted IdP</title><form method="post" action="{html.escape(str(request.rel_url))}">'
                f'<input name="sub" value="{html.escape(self.default_sub)}"><button>Sign in</button></form>',
            )
        sub = self.default_sub
        if request.method == "POST":
            sub = str((await request.post()).get("sub") or sub)
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Grant(
            sub=sub,
            nonce=q.get("nonce"),
            redirect_uri=q["redirect_uri"],
            scope=q.get("scope", ""),
            challenge=q.get("code_challenge"),
            method=q.get("code_challenge_method"),
        )
        back = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        parts = urlsplit(q["redirect_uri"])
        query = f"{parts.query}&{urlencode(back)}" if parts.query else urlencode(back)
        raise web.HTTPFound(urlunsplit(parts._replace(query=query)))

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        header = request.headers.get("Authorization", "")
        if "client_assertion" in form or "client_assertion_type" in form:
            problem = self._assertion_problem(form, has_basic=header.startswith("Basic "))
            if problem is not None:
                self.assertion_rejections.append(problem)
            return problem is None
        if header.startswith("Basic "):
            if "client_secret_basic" not in self.accept_auth:
                return False
            cid, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            return unquote(cid) == self.client_id and unquote(secret) == self.client_secret
        if "client_secret" in form:
            return (
                "client_secret_post" in self.accept_auth
                and form.get("client_id") == self.client_id
                and form["client_secret"] == self.client_secret
            )
        return False

    def _assertion_problem(self, form: dict[str, str], *, has_basic: bool) -> str | None:
        """Why a private_key_jwt client assertion fails, or None when it passes."""
        if "private_key_jwt" not in self.accept_auth:
            return "private_key_jwt is not accepted"
        if has_basic or "client_secret" in form:
            return "more than one client authentication method"
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return "wrong client_assertion_type"
        token = form.get("client_assertion", "")
        try:
            header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        except ValueError:
            return "malformed assertion"
        key = self._assertion_key(header) if isinstance(header, dict) else None
        if key is None:
            return "unknown key"
        if header.get("alg") not in ASSERTION_ALGS:
            return "algorithm not allowed"
        try:
            claims = jwt.decode(token, key, algorithms=[header["alg"]]).claims
        except (JoseError, ValueError):
            return "bad signature"
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return "iss/sub is not the client_id"
        if form.get("client_id", self.client_id) != self.client_id:
            return "client_id differs from the assertion"
        audience = claims.get("aud")
        if f"{self.issuer}/token" not in (audience if isinstance(audience, list) else [audience]):
            return "aud is not the token endpoint"
        now = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, (int, float)) or exp <= now:
            return "expired"
        if not isinstance(nbf, (int, float)) or nbf > now + 60:
            return "not yet valid"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "no jti"
        if jti in self._seen_jtis:
            return "replayed jti"
        self._seen_jtis.add(jti)
        return None

    def _assertion_key(self, header: dict[str, Any]) -> Any:
        """The registered key the header points at: a certificate by thumbprint, else a key by kid."""
        for pem in self.client_certificates:
            cert = x509.load_pem_x509_certificate(pem)
            der = cert.public_bytes(serialization.Encoding.DER)
            if header.get("x5t") != _b64(hashlib.sha1(der).digest()):
                continue
            if header.get("x5t#S256", _b64(hashlib.sha256(der).digest())) != _b64(hashlib.sha256(der).digest()):
                return None
            public = cert.public_key()
            return (RSAKey if isinstance(public, rsa.RSAPublicKey) else ECKey).import_key(public)  # type: ignore[arg-type]
        return self.client_keys.get(header.get("kid"))  # type: ignore[arg-type]

    async def _token(self, request: web.Request) -> web.Response:
        if self._token_queue:
            reply = self._token_queue.popleft()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.json is not None:
                return web.json_response(reply.json, status=reply.status)
            if reply.raw is not None:
                return web.Response(body=reply.raw, status=reply.status, content_type="application/json")
            if reply.status != 200:
                return web.Response(status=reply.status, text="scripted failure")
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._code_grant(form)
        if grant_type == "refresh_token":
            return self._refresh_grant(form)
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    def _code_grant(self, form: dict[str, str]) -> web.Response:
        grant = self._codes.pop(form.get("code", ""), None)  # single use
        if grant is None or grant.redirect_uri != form.get("redirect_uri"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            expected = _b64(hashlib.sha256(verifier.encode()).digest())
            if grant.method != "S256" or not hmac.compare_digest(expected, grant.challenge):
                return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        body = self._issue(grant.sub, grant.scope)
        body["id_token"] = self.id_token(grant.sub, nonce=grant.nonce)
        return web.json_response(body)

    def _refresh_grant(self, form: dict[str, str]) -> web.Response:
        token = form.get("refresh_token", "")
        grant = self._refresh.get(token)
        if grant is None or grant.revoked or grant.sub not in self.users:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if self.rotate_refresh_tokens:
            del self._refresh[token]
            body = self._issue(grant.sub, grant.scope)
        else:
            body = self._issue(grant.sub, grant.scope, refresh=False)
        wants = self.id_token_on_refresh
        if wants == "always" or (wants == "if_openid" and "openid" in form.get("scope", "").split()):
            body["id_token"] = self.id_token(grant.sub)
        return web.json_response(body)

    def _issue(self, sub: str, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        access = secrets.token_urlsafe(24)
        self._access[access] = sub
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_s,
        }
        if refresh and self.issue_refresh_tokens:
            token = secrets.token_urlsafe(24)
            self._refresh[token] = _Refresh(sub=sub, scope=scope)
            body["refresh_token"] = token
        return body

    async def _userinfo(self, request: web.Request) -> web.Response:
        if self.userinfo_status is not None:
            return web.json_response({"error": "scripted"}, status=self.userinfo_status)
        header = request.headers.get("Authorization", "")
        sub = self._access.get(header[7:]) if header.startswith("Bearer ") else None
        if sub is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"sub": sub, **self.users.get(sub, {})})
