"""The OpenID Connect relying party: the gateway's only conversation with the IdP
(SPEC "Sign-in", reference §3.6 and §3.9).

Theory of operation:

* ``discover`` reads the provider's metadata once (``<issuer>/.well-known/
  openid-configuration`` or ``oidc.discovery_url``) and insists that the
  document names our configured issuer. Every endpoint it lists passes the same
  address check as config-time URLs before we ever call it.
* ``authorization_url`` builds the browser redirect; the parameters the gateway
  manages come first and cannot be overridden by ``extra_auth_params``.
* ``exchange_code`` and ``recheck`` talk to the token endpoint. 400/401 answers
  are definitive (:class:`IdpRejected`); anything that may heal by itself —
  network errors, timeouts, 5xx, 429, garbage — is :class:`IdpUnavailable`, so
  a refreshing client keeps its token and tries again later.
* The gateway authenticates to the token endpoint with its client secret, or
  with ``private_key_jwt`` by a fresh signed assertion per call
  (:mod:`gateway.auth.client_assertion`); discovery refuses an IdP that lists
  its accepted methods without that one.
* id_tokens are verified against the IdP's JWKS with exactly one algorithm, the
  configured one; ``none`` and HMAC algorithms are refused outright, which is
  what defeats the "HS256 keyed with the RSA public key" confusion. An unknown
  ``kid`` refetches the JWKS once (key rotation), at most once per cooldown, so
  a stream of bad tokens cannot turn us into a JWKS hammer. The checks
  themselves (header, signature, claims, key choice) are the pure
  :mod:`gateway.auth.id_tokens`; this module fetches and caches the keys they need.

Everything the IdP sends is untrusted input: every answer is size-bounded,
every call has a connect (5 s) and total (15 s) deadline, redirects are never
followed (a redirect could lead past the address check), and resolved addresses
go through the same guard as upstream calls. Tokens, codes and secrets never
appear in exception messages or logs.

With ``oidc.use_proxy: true`` every call goes through the proxy the
:class:`~gateway.upstreams.egress.Egress` picks for its URL (NO_PROXY honoured),
its target checked as the transport checks upstream targets; unset or false,
the IdP is called direct.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp
import msgspec

from gateway import NAME, __version__, audit
from gateway.auth import client_assertion
from gateway.auth import id_tokens as idt
from gateway.auth.client_assertion import AssertionKey, load_key
from gateway.auth.id_tokens import MAX_ID_TOKEN_CHARS as MAX_ID_TOKEN_CHARS
from gateway.auth.id_tokens import IdTokenInvalid as IdTokenInvalid  # re-exported: callers catch it as oidc's
from gateway.auth.identity import Identity, identity_from_claims, needs_userinfo
from gateway.config.load import is_forbidden_address, url_problem
from gateway.errors import Fault, Party
from gateway.upstreams.egress import Egress
from gateway.upstreams.transport import (
    RefusedAddress,
    TargetGuard,
    UnresolvedTarget,
    guarded_session,
    proxy_failure,
    read_bounded,
)

CALL_TIMEOUT_S = 15.0
# Discovery and JWKS documents of the big IdPs are a few KiB; tokens with a
# few hundred groups reach tens of KiB. These caps leave ample room for both.
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_TOKEN_RESPONSE_BYTES = 256 * 1024
# Drop cached signing keys after this long, so a key the IdP withdrew (for
# example after a compromise) stops being trusted without a restart.
JWKS_MAX_AGE_S = 3600.0
# An unknown kid refetches the JWKS at most this often.
JWKS_REFETCH_COOLDOWN_S = 30.0

# Authorize-query parameters the gateway sets itself (config refuses them in
# extra_auth_params; this is the belt to that brace).
MANAGED_AUTH_PARAMS = frozenset(
    {
        "client_id",
        "scope",
        "response_type",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "response_mode",
    }
)
# Token-endpoint errors that describe a passing condition on the IdP's side,
# whatever status they come with.
_TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
# Errors about the gateway's own registration, not about the person or their
# grant. Treating them as definitive would sign everyone out on their next
# refresh because of one mistyped client secret; as "unavailable" the sessions
# wait, and work again once the operator fixes the configuration.
_CONFIG_OAUTH_ERRORS = frozenset({"invalid_client", "unauthorized_client", "invalid_scope"})


class IdpUnavailable(Fault):
    """The IdP could not be asked, or gave no usable answer. Retryable (→ 503)."""

    fault = Party.UPSTREAM


class IdpRejected(Fault):
    """The IdP said no for good: the code or refresh grant is invalid (→ re-login)."""

    fault = Party.CLIENT

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class TokenSet(NamedTuple):
    access_token: str | None
    refresh_token: str | None
    id_token: str | None


class _Endpoints(NamedTuple):
    issuer: str
    authorization: str
    token: str
    jwks: str
    userinfo: str | None
    auth_methods: tuple[str, ...]


def _same_issuer(a: str, b: str) -> bool:
    # Operators write issuers with and without the trailing slash; the IdP's
    # own spelling is what id_tokens carry, and that is compared exactly later.
    return a.rstrip("/") == b.rstrip("/")


def _safe_text(value: Any, limit: int = 64) -> str:
    """An IdP-supplied error code, trimmed to something safe to log."""
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text[:limit] if c.isprintable()) or "unknown"


class OidcClient:
    def __init__(
        self,
        oidc_cfg: Any,
        *,
        allow_loopback: bool,
        clock: Callable[[], float] = time.time,
        log: Callable[[str, str], None] | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        egress: Egress | None = None,
        groups: Any = None,
    ) -> None:
        self._cfg = oidc_cfg
        # private_key_jwt: the key is parsed once here (the config rules have
        # already refused any that would not parse).
        self._assertion_key: AssertionKey | None = None
        if oidc_cfg.token_endpoint_auth_method == "private_key_jwt":
            assertion = oidc_cfg.client_assertion
            self._assertion_key = load_key(
                assertion.private_key_pem, assertion.certificate_pem, assertion.gatehouse.key_id
            )
        self._allow_loopback = allow_loopback
        self._clock = clock
        self._log = log or audit.log
        self._call_timeout_s = call_timeout_s
        # The proxy rules apply only when the operator asked for them.
        self._egress = egress if egress is not None and oidc_cfg.use_proxy else Egress()
        self._guard: TargetGuard | None = None
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: _Endpoints | None = None
        self._discover_lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()
        self._keys: list[Any] = []
        self._keys_fetched_at: float | None = None
        self._last_refetch_at: float | None = None
        # "auto" starts with basic; a definitive invalid_client flips it to post once.
        self._auth_method: str | None = oidc_cfg.token_endpoint_auth_method
        # A gateway.auth.google_groups.GoogleGroups (oidc.google_groups): it replaces
        # the groups after the rules on the claims passed, and this client closes it.
        self._groups = groups
        if self._assertion_key is not None:
            expires = self._assertion_key.certificate_expires.timestamp()
            if expires <= clock():
                self._log(
                    "warn",
                    "oidc: the client_assertion certificate has expired; IdPs that check it "
                    "(Microsoft Entra does) will refuse every sign-in",
                )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self._cfg.ca_cert_pem:
            # cadata given → the system store is NOT loaded: the PEM replaces it.
            ssl_ctx = ssl.create_default_context(cadata=self._cfg.ca_cert_pem)
        self._session, self._guard = guarded_session(
            self._egress,
            lambda ip: is_forbidden_address(ip, self._allow_loopback),
            total_s=self._call_timeout_s,
            limit=32,
            ssl_ctx=ssl_ctx,
            user_agent=f"{NAME}/{__version__}",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._groups is not None:
            await self._groups.close()

    # ------------------------------------------------------------ discovery

    @property
    def discovered(self) -> bool:
        return self._endpoints is not None

    @property
    def authorization_endpoint_origin(self) -> str | None:
        if self._endpoints is None:
            return None
        parts = urlsplit(self._endpoints.authorization)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    async def discover(self) -> None:
        """Fetch and check the provider metadata. Raises :class:`IdpUnavailable`."""
        async with self._discover_lock:
            if self._endpoints is None:
                self._endpoints = await self._fetch_endpoints()
                self._log("info", f"oidc: discovered {self._endpoints.issuer}")

    async def _ensure_discovered(self) -> _Endpoints:
        if self._endpoints is None:
            await self.discover()
        assert self._endpoints is not None
        return self._endpoints

    def _discovery_url(self) -> str:
        if self._cfg.discovery_url:
            return str(self._cfg.discovery_url)
        return self._cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def _fetch_endpoints(self) -> _Endpoints:
        doc = await self._get_json(self._discovery_url(), "discovery", MAX_DOCUMENT_BYTES)
        if not isinstance(doc, dict):
            raise IdpUnavailable("oidc discovery: the document is not a JSON object")
        issuer = doc.get("issuer")
        if not isinstance(issuer, str) or not _same_issuer(issuer, self._cfg.issuer):
            raise IdpUnavailable(
                "oidc discovery: the document's issuer does not match oidc.issuer "
                f"(document says {_safe_text(issuer, 200)!r})"
            )
        urls = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
            value = doc.get(key)
            if value is None and key == "userinfo_endpoint":
                continue
            if not isinstance(value, str):
                raise IdpUnavailable(f"oidc discovery: {key} is missing")
            problem = url_problem(value, self._allow_loopback)
            if problem:
                raise IdpUnavailable(f"oidc discovery: {key} {problem}")
            urls[key] = value
        algs = doc.get("id_token_signing_alg_values_supported")
        alg = self._cfg.id_token_signed_response_alg
        if isinstance(algs, list) and alg not in algs:
            self._log(
                "warn",
                f"oidc: the IdP does not list {alg} among its id_token algorithms; "
                "check oidc.id_token_signed_response_alg",
            )
        methods = doc.get("token_endpoint_auth_methods_supported")
        if (
            self._assertion_key is not None
            and isinstance(methods, list)
            and methods
            and "private_key_jwt" not in methods
        ):
            # An IdP that says which methods it takes and leaves this one out
            # would answer every token call with invalid_client; say why now.
            listed = ", ".join(_safe_text(m) for m in methods[:8])
            raise IdpUnavailable(
                "oidc discovery: the IdP does not accept private_key_jwt client authentication "
                f"(token_endpoint_auth_methods_supported lists {listed}); "
                "check oidc.token_endpoint_auth_method and the app registration"
            )
        return _Endpoints(
            issuer=issuer,
            authorization=urls["authorization_endpoint"],
            token=urls["token_endpoint"],
            jwks=urls["jwks_uri"],
            userinfo=urls.get("userinfo_endpoint"),
            auth_methods=tuple(m for m in methods if isinstance(m, str)) if isinstance(methods, list) else (),
        )

    # ------------------------------------------------------------ authorize

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str | None
    ) -> str:
        """Where to send the browser. Requires :meth:`discover` to have succeeded."""
        if self._endpoints is None:
            raise IdpUnavailable("oidc: the IdP has not been discovered yet")
        params: list[tuple[str, str]] = [
            ("client_id", self._cfg.client_id),
            ("scope", " ".join(self._cfg.scopes)),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("nonce", nonce),
        ]
        if code_challenge is not None:
            params += [("code_challenge", code_challenge), ("code_challenge_method", "S256")]
        # The callback reads the query only; form_post would break it.
        params.append(("response_mode", "query"))
        params += [
            (k, str(v)) for k, v in self._cfg.extra_auth_params.items() if k not in MANAGED_AUTH_PARAMS
        ]
        parts = urlsplit(self._endpoints.authorization)
        query = urlencode(params, quote_via=quote)
        # Keep a query the IdP itself put there (Azure B2C policies, for example).
        return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))

    # ------------------------------------------------------------ token endpoint

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str | None) -> TokenSet:
        """Trade the authorization code for tokens. Raises IdpRejected / IdpUnavailable."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier is not None:
            form["code_verifier"] = code_verifier
        return await self._token_request(form, "code exchange")

    async def _token_request(self, form: dict[str, str], what: str) -> TokenSet:
        endpoints = await self._ensure_discovered()
        method = self._auth_method or _auto_method(endpoints.auth_methods)
        status, body = await self._post_token(endpoints.token, form, method)
        if (
            self._auth_method is None
            and method == "client_secret_basic"
            and _oauth_error(body) == "invalid_client"
        ):
            # Auto-negotiation: some IdPs accept only client_secret_post. A wrong
            # secret fails both ways, so retrying once is all it costs.
            status, body = await self._post_token(endpoints.token, form, "client_secret_post")
            if status == 200:
                self._auth_method = "client_secret_post"
                self._log("info", "oidc: the IdP wants client_secret_post; using it from now on")
        credential = "client_assertion" if self._assertion_key is not None else "client_secret"
        return _token_set(status, body, what, credential)

    async def _post_token(self, url: str, form: dict[str, str], method: str) -> tuple[int, Any]:
        form = dict(form)
        headers = {"Accept": "application/json"}
        secret = self._cfg.client_secret or ""
        if self._assertion_key is not None:
            # RFC 7523 §2.2: a fresh assertion per call, its audience the
            # endpoint it is sent to, its jti never reused.
            form.update(
                client_assertion.form_fields(
                    self._assertion_key,
                    client_id=self._cfg.client_id,
                    audience=url,
                    now=self._clock(),
                    jti=secrets.token_urlsafe(24),
                )
            )
        elif method == "client_secret_post":
            form["client_id"] = self._cfg.client_id
            form["client_secret"] = secret
        else:
            # RFC 6749 §2.3.1: both halves are form-encoded before base64.
            pair = f"{quote(self._cfg.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return await self._request(
            "POST", url, "token endpoint", MAX_TOKEN_RESPONSE_BYTES, headers=headers, data=form
        )

    # ------------------------------------------------------------ identity

    async def identity_from_tokens(self, tokens: TokenSet, *, nonce: str | None) -> Identity:
        """Verify the id_token, consult userinfo if configured and needed, apply
        the rules; with google_groups, the groups are the Directory's.
        Raises IdTokenInvalid / IdentityRejected / IdpUnavailable (GroupsUnavailable)."""
        identity = await self._identity_from_tokens(tokens, nonce=nonce)
        return identity if self._groups is None else await self._groups.at_sign_in(identity)

    async def _identity_from_tokens(self, tokens: TokenSet, *, nonce: str | None) -> Identity:
        if not tokens.id_token:
            raise IdTokenInvalid("missing id_token")
        claims = await self.verify_id_token(tokens.id_token, nonce=nonce)
        userinfo = None
        if self._cfg.userinfo_fallback and needs_userinfo(claims, self._cfg) and tokens.access_token:
            userinfo = await self._userinfo(tokens.access_token)
        identity, warnings = identity_from_claims(claims, self._cfg, userinfo=userinfo)
        for warning in warnings:
            self._log("warn", f"oidc: {warning}")
        return identity

    async def recheck(
        self, idp_refresh_token: str, previous_groups: tuple[str, ...] | None = None
    ) -> tuple[Identity, str | None]:
        """Ask the IdP whether this person may still sign in (SPEC "Refresh").

        Returns the identity and the IdP's new refresh token, or None when it
        did not rotate. IdpRejected / IdentityRejected are definitive (end the
        session); IdpUnavailable means "try again later, keep the token".
        ``previous_groups``: the session's groups, which google_groups keeps
        when the Directory cannot be asked.
        """
        form = {"grant_type": "refresh_token", "refresh_token": idp_refresh_token}
        if self._cfg.scope_on_refresh:
            # Okta only returns an id_token on refresh when openid is asked again.
            form["scope"] = " ".join(self._cfg.scopes)
        tokens = await self._token_request(form, "refresh")
        if tokens.id_token:
            try:
                identity = await self._identity_from_tokens(tokens, nonce=None)
            except IdTokenInvalid as exc:
                if exc.reason == "unknown key":
                    raise IdpUnavailable(
                        "oidc refresh: the id_token is signed with a key the JWKS lacks"
                    ) from None
                raise IdpRejected(f"oidc refresh: the id_token failed verification ({exc.reason})") from None
        else:
            identity = await self._identity_from_userinfo(tokens.access_token)
        if self._groups is not None:
            identity = await self._groups.at_refresh(identity, previous_groups)
        rotated = (
            tokens.refresh_token
            if tokens.refresh_token and tokens.refresh_token != idp_refresh_token
            else None
        )
        return identity, rotated

    async def _identity_from_userinfo(self, access_token: str | None) -> Identity:
        if not access_token:
            raise IdpUnavailable("oidc refresh: the IdP returned neither an id_token nor an access token")
        claims = await self._userinfo(access_token)
        identity, warnings = identity_from_claims(claims, self._cfg)
        for warning in warnings:
            self._log("warn", f"oidc: {warning}")
        return identity

    async def _userinfo(self, access_token: str) -> dict[str, Any]:
        endpoints = await self._ensure_discovered()
        if endpoints.userinfo is None:
            raise IdpUnavailable("oidc: the IdP advertises no userinfo_endpoint")
        status, body = await self._request(
            "GET",
            endpoints.userinfo,
            "userinfo",
            MAX_DOCUMENT_BYTES,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        if status in (401, 403):
            # The official gateway's known trap: an IdP that refreshes without
            # openid scope hands out access tokens userinfo refuses.
            raise IdpUnavailable(
                f"oidc userinfo answered {status}; if this happens on refresh, set oidc.scope_on_refresh: true"
            )
        if status != 200 or not isinstance(body, dict):
            raise IdpUnavailable(f"oidc userinfo answered {status} without a JSON object")
        return body

    # ------------------------------------------------------------ id_token

    async def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        """The verified claims of ``id_token``. Raises IdTokenInvalid / IdpUnavailable."""
        endpoints = await self._ensure_discovered()
        alg = self._cfg.id_token_signed_response_alg
        kid = idt.signing_kid(id_token, alg)
        key = await self._signing_key(kid, alg)
        claims = idt.signed_claims(id_token, key, alg)
        idt.check_claims(claims, self._cfg, issuer=endpoints.issuer, nonce=nonce, now=self._clock())
        return claims

    async def _signing_key(self, kid: str | None, alg: str) -> Any:
        url = (await self._ensure_discovered()).jwks
        # One fetch at a time: concurrent sign-ins wait for it instead of
        # each asking the IdP.
        async with self._jwks_lock:
            if self._keys_fetched_at is None or self._clock() - self._keys_fetched_at > JWKS_MAX_AGE_S:
                await self._load_keys(url)
            key = idt.pick_key(self._keys, kid, alg)
            now = self._clock()
            if key is None and (
                self._last_refetch_at is None or now - self._last_refetch_at >= JWKS_REFETCH_COOLDOWN_S
            ):
                # Unknown kid: the IdP may have rotated. Refetch once, unless we
                # did so a moment ago (then the key really is not there).
                self._last_refetch_at = now
                await self._load_keys(url)
                key = idt.pick_key(self._keys, kid, alg)
        if key is None:
            raise IdTokenInvalid("unknown key")
        return key

    async def _load_keys(self, url: str) -> None:
        doc = await self._get_json(url, "jwks", MAX_DOCUMENT_BYTES)
        keys = idt.import_signing_keys(doc)
        if keys is None:
            raise IdpUnavailable("oidc jwks: the document has no 'keys' list")
        if not keys:
            raise IdpUnavailable("oidc jwks: the document holds no usable signing keys")
        self._keys = keys
        self._keys_fetched_at = self._clock()

    # ------------------------------------------------------------ HTTP

    async def _get_json(self, url: str, what: str, limit: int) -> Any:
        status, body = await self._request("GET", url, what, limit, headers={"Accept": "application/json"})
        if status != 200:
            raise IdpUnavailable(f"oidc {what} answered HTTP {status}")
        return body

    async def _request(
        self, method: str, url: str, what: str, limit: int, *, headers: dict[str, str], data: Any = None
    ) -> tuple[int, Any]:
        """One bounded call: (status, parsed JSON or None). Raises IdpUnavailable."""
        if self._session is None:
            raise RuntimeError("OidcClient.start() was not called")
        problem = url_problem(url, self._allow_loopback)
        if problem:
            raise IdpUnavailable(f"oidc {what}: the URL {problem}")
        proxy = self._egress.proxy_for(url)
        try:
            if proxy is not None:
                assert self._guard is not None
                async with asyncio.timeout(self._call_timeout_s):
                    await self._guard.check(url)
            async with self._session.request(
                method, url, headers=headers, data=data, allow_redirects=False, proxy=proxy
            ) as resp:
                raw = await read_bounded(resp, limit, lambda: IdpUnavailable(f"oidc {what}: answer larger than {limit} bytes"))
                status = resp.status
        except TimeoutError:
            raise IdpUnavailable(f"oidc {what}: no answer within {self._call_timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise IdpUnavailable(f"oidc {what}: {self._failure(exc, proxy)}") from None
        if proxy is not None and status == 407:
            # Only a proxy says 407 (an http:// IdP is asked over the proxy's connection).
            raise IdpUnavailable(
                f"oidc {what}: proxy {self._egress.shown(proxy)} answered 407 (proxy authentication required)"
            )
        if 300 <= status < 400:
            raise IdpUnavailable(f"oidc {what} answered a redirect ({status}); redirects are not followed")
        if status >= 500 or status == 429:
            raise IdpUnavailable(f"oidc {what} answered HTTP {status}")
        try:
            return status, msgspec.json.decode(raw) if raw else None
        except (msgspec.DecodeError, RecursionError):
            if status == 200:
                raise IdpUnavailable(f"oidc {what}: the answer is not JSON") from None
            return status, None

    def _failure(self, exc: BaseException, proxy: str | None) -> str:
        """Why a call failed, fit for the log: never the URL, which may carry a token."""
        if isinstance(exc, (RefusedAddress, UnresolvedTarget)):
            return str(exc)  # raised by our own target check, naming only the host
        failure = proxy_failure(exc, proxy, self._egress.shown(proxy)) if proxy is not None else None
        if failure is not None:
            return failure
        if isinstance(exc, aiohttp.ClientConnectorError):
            if isinstance(exc.os_error, RefusedAddress):
                return "the host resolves only to refused addresses"
            return f"cannot connect ({exc.os_error.strerror or 'error'})"
        return type(exc).__name__


def _auto_method(supported: tuple[str, ...]) -> str:
    if supported and "client_secret_basic" not in supported and "client_secret_post" in supported:
        return "client_secret_post"
    return "client_secret_basic"


def _oauth_error(body: Any) -> str | None:
    return body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None


def _token_set(status: int, body: Any, what: str, credential: str = "client_secret") -> TokenSet:
    error = _oauth_error(body)
    if status == 200 and isinstance(body, dict) and error is None:
        values = [body.get(k) for k in ("access_token", "refresh_token", "id_token")]
        if any(v is not None and not isinstance(v, str) for v in values):
            raise IdpUnavailable(f"oidc {what}: malformed token response")
        if values[2] is not None and len(values[2]) > MAX_ID_TOKEN_CHARS:
            raise IdpUnavailable(f"oidc {what}: id_token too large")
        return TokenSet(*(v or None for v in values))
    if error in _TRANSIENT_OAUTH_ERRORS:
        raise IdpUnavailable(f"oidc {what}: the IdP answered {error}")
    if error in _CONFIG_OAUTH_ERRORS:
        hint = (
            "oidc.scopes / scope_on_refresh" if error == "invalid_scope" else f"oidc.client_id / {credential}"
        )
        raise IdpUnavailable(f"oidc {what}: the IdP answered {error}; check {hint} and the app registration")
    if status in (400, 401):
        raise IdpRejected(f"oidc {what}: the IdP answered {_safe_text(error)} ({status})", error)
    raise IdpUnavailable(f"oidc {what}: unexpected HTTP {status}")
