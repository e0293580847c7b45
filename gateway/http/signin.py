"""Sign-in: the OAuth surface the real ``claude`` CLI drives with ``/login``.

Flow (SPEC §3–§8):

1. ``GET /.well-known/oauth-authorization-server`` — where the endpoints are,
   built from ``listen.public_url`` only (never Host or X-Forwarded-*).
2. ``POST /oauth/device_authorization`` — a device code for the CLI and a
   short user code for the person; the CLI opens ``/device?user_code=…``.
3. ``GET/POST /device`` — the person confirms the code (Approve or Deny); the
   page is bound to their browser with an encrypted cookie and sends them to
   the IdP (authorization code + PKCE).
4. ``GET /oauth/callback`` — the IdP sends them back; the code is exchanged,
   the id_token verified, the company's rules applied, the grant approved.
5. ``POST /oauth/token`` — the CLI's polls get a session token (and a refresh
   token); later refreshes rotate it and re-check the person with the IdP.
6. ``POST /oauth/revoke`` — ends a sign-in family on every replica.

All grant state lives in PostgreSQL, so any replica can answer any step.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp_session
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet, MultiFernet

from gateway import audit
from gateway.auth import pages
from gateway.auth.device_store import Approved, DeviceStore
from gateway.auth.devicecodes import (
    DEVICE_CODE_TTL_S,
    POLL_INTERVAL_S,
    code_hash,
    format_user_code,
    new_device_code,
    new_user_code,
    normalize_user_code,
    pkce_pair,
)
from gateway.auth.sealing import Sealer, derive_key
from gateway.db.store import StoreUnavailable
from gateway.errors import GatewayError, Kind, OAuthError, Party
from gateway.http.forms import FormInvalid, parse_form
from gateway.http.keys import CLIENT_IP, REQUEST_ID, RUNTIME
from gateway.telemetry.own_metrics import SIGNIN_TOKENS
from protocol_spec.wire import UNSET, AuthorizationServerMetadata, DeviceAuthorization, TokenResponse, encoder

if TYPE_CHECKING:
    from gateway.auth.oidc import OidcClient
    from gateway.auth.session_store import SessionService, TokenPair
    from gateway.config.schema import Config, RateLimits

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
COOKIE = "gatehouse_signin"
FORM_LIMIT_BYTES = 64 * 1024
MAX_SURFACE_CHARS = 64
PRUNE_EVERY_S = 300.0  # the sign-in pruning job (gateway.app.jobs)
JSON_NO_STORE = {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}
GROUPS_UNAVAILABLE = (
    "Your groups could not be looked up in Google Workspace right now, so you were not signed in. "
    "Try again in a few minutes: open the sign-in link again, or start again from Claude Code."
)


@dataclass(frozen=True, kw_only=True)
class SignInBoot:
    """What sign-in computes from the config at build time, before any event loop runs.

    Every value a sign-in handler would otherwise look up in the config is here,
    so no handler reads the config per request.
    """

    public_url: str
    origin: str
    redirect_uri: str
    clock: Callable[[], float]
    idp_tokens: Sealer
    cookies: _BindingCookies
    notice: str | None
    limits: RateLimits
    use_pkce: bool
    form_action_origins: tuple[str, ...]  # beyond the IdP's own (oidc.form_action_origins)
    metadata_body: bytes  # the discovery document depends on the config alone: encoded once

    @classmethod
    def from_config(cls, cfg: Config, *, clock: Callable[[], float]) -> SignInBoot:
        if cfg.oidc is None:
            raise ValueError("sign-in needs an oidc: section in the config")
        public_url = (cfg.listen.public_url or f"http://{cfg.listen.host}:{cfg.listen.port}").rstrip("/")
        parts = urlsplit(public_url)
        return cls(
            public_url=public_url,
            origin=f"{parts.scheme}://{parts.netloc}",
            redirect_uri=f"{public_url}/oauth/callback",
            clock=clock,
            idp_tokens=Sealer(tuple(cfg.session.secrets), "idp-refresh-token"),
            cookies=_BindingCookies(tuple(cfg.session.secrets), secure=parts.scheme == "https"),
            notice=cfg.gatehouse.signin.login_notice,
            limits=cfg.rate_limits,
            use_pkce=cfg.oidc.use_pkce,
            form_action_origins=tuple(cfg.oidc.form_action_origins or ()),
            metadata_body=encoder.encode(discovery_document(public_url)),
        )


@dataclass(frozen=True, kw_only=True)
class SignIn(SignInBoot):
    """A :class:`SignInBoot` with its edges open; handlers reach it through ``request.app[SIGNIN]``.

    Made once, complete, by the startup hook (``gateway.app.build._start_signin``)
    and only then set on the app, so no handler sees a sign-in with an edge missing.
    """

    devices: DeviceStore
    oidc: OidcClient
    sessions: SessionService

    @classmethod
    def complete(
        cls, boot: SignInBoot, *, devices: DeviceStore, oidc: OidcClient, sessions: SessionService
    ) -> SignIn:
        """``boot`` with its edges; called once, at startup."""
        return cls(
            **{f.name: getattr(boot, f.name) for f in fields(SignInBoot)},
            devices=devices,
            oidc=oidc,
            sessions=sessions,
        )

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def form_action(self) -> tuple[str, ...]:
        # The IdP's origin is known once discovery has run, which may be after startup.
        idp = (self.oidc.authorization_endpoint_origin,) if self.oidc.authorization_endpoint_origin else ()
        return idp + self.form_action_origins

    async def ensure_discovered(self) -> None:
        if not self.oidc.discovered:
            await self.oidc.discover()


# Built with the app when the config has oidc: (its boot values, checked early);
# SIGNIN is set on startup, complete.
SIGNIN_BOOT: web.AppKey[SignInBoot] = web.AppKey("signin_boot", SignInBoot)
SIGNIN: web.AppKey[SignIn] = web.AppKey("signin", SignIn)


class _BindingCookies(EncryptedCookieStorage):
    """aiohttp-session's encrypted cookie, keyed from every listed jwt secret (first encrypts)."""

    def __init__(self, secrets_: tuple[str, ...], *, secure: bool) -> None:
        keys = [Fernet(_fernet_key(s)) for s in secrets_]
        super().__init__(
            keys[0],
            cookie_name=COOKIE,
            max_age=DEVICE_CODE_TTL_S,
            path="/",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
        self._fernet = MultiFernet(keys)  # type: ignore[assignment]


def _fernet_key(secret: str) -> bytes:
    import base64

    return base64.urlsafe_b64encode(derive_key(secret, "device-browser-binding"))


# ------------------------------------------------------------------ discovery


def discovery_document(base: str) -> AuthorizationServerMetadata:
    """RFC 8414 metadata for a gateway whose public URL is ``base``."""
    return AuthorizationServerMetadata(
        issuer=base,
        device_authorization_endpoint=f"{base}/oauth/device_authorization",
        token_endpoint=f"{base}/oauth/token",
        revocation_endpoint=f"{base}/oauth/revoke",
        grant_types_supported=[DEVICE_GRANT, "refresh_token"],
        response_types_supported=[],
        token_endpoint_auth_methods_supported=["none"],
        revocation_endpoint_auth_methods_supported=["none"],
        scopes_supported=["openid", "profile", "email"],
        gateway_protocol_version=1,
    )


async def metadata(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SIGNIN].metadata_body, content_type="application/json")


# ------------------------------------------------------------------ device authorization


async def device_authorization(request: web.Request) -> web.Response:
    si = request.app[SIGNIN]
    ip = request.get(CLIENT_IP)
    form = await _form(request)
    # Stored with the grant: real clients name a short surface ("claude_code").
    surface = (form or {}).get("surface", "")[:MAX_SURFACE_CHARS] or None
    now = si.now()
    try:
        limit = si.limits.device_authorization
        wait = await si.devices.hit(f"devauth:{ip}", now, limit.window_seconds, limit.max)
        if wait is not None:
            audit.emit("device.authorize", request_id=request[REQUEST_ID], result="rate_limited", client_ip=ip)
            audit.log("warn", f"sign-in refused for {ip}: over rate_limits.device_authorization ({limit.max} per {limit.window_seconds}s); raise it if this is expected")
            raise OAuthError("slow_down", "too many sign-in attempts from this address", retry_after=wait)
        device_code = new_device_code()
        for _ in range(5):
            user_code = new_user_code()
            created = await si.devices.create(
                device_code_hash=code_hash(device_code),
                user_code=normalize_user_code(user_code) or "",
                surface=surface,
                client_ip=ip,
                now=now,
                ttl_s=DEVICE_CODE_TTL_S,
            )
            if created:
                break
        else:
            raise OAuthError("temporarily_unavailable", "could not allocate a user code", fault=Party.GATEWAY)
    except StoreUnavailable as exc:
        audit.log("error", f"device authorization failed: {exc}")
        raise OAuthError("temporarily_unavailable", "sign-in storage is unavailable") from None
    audit.emit("device.authorize", request_id=request[REQUEST_ID], result="success", client_ip=ip, surface=surface)
    doc = DeviceAuthorization(
        device_code=device_code,
        user_code=user_code,
        verification_uri=f"{si.public_url}/device",
        verification_uri_complete=f"{si.public_url}/device?user_code={user_code}",
        expires_in=DEVICE_CODE_TTL_S,
        interval=POLL_INTERVAL_S,
        login_notice=si.notice or UNSET,
    )
    return web.Response(body=encoder.encode(doc), headers=JSON_NO_STORE)


# ------------------------------------------------------------------ verification page


async def device_page(request: web.Request) -> web.Response:
    si = request.app[SIGNIN]
    session = await _session(request, si)
    csrf = session.get("csrf") or secrets.token_urlsafe(24)
    session["csrf"] = csrf
    prefill = normalize_user_code(request.query.get("user_code"))
    html = pages.confirm(user_code=format_user_code(prefill) if prefill else "", csrf=csrf, notice=si.notice)
    return await _html(request, si, html, session=session)


async def device_submit(request: web.Request) -> web.Response:
    si = request.app[SIGNIN]
    ip = request.get(CLIENT_IP)
    session = await _session(request, si)
    try:
        form = await _form_fields(request) or {}
    except FormInvalid:
        audit.emit("device.verify", result="malformed_form", client_ip=ip)
        html = pages.message("Request not understood", "The form could not be read. Go back and try again.")
        return await _html(request, si, html, status=400)
    if not _same_origin(request, si) or not form.get("csrf") or form.get("csrf") != session.get("csrf"):
        audit.emit("device.verify", result="csrf_rejected", client_ip=ip)
        html = pages.message("Request blocked", "This request came from another site and was blocked.")
        return await _html(request, si, html, status=403)
    now = si.now()
    try:
        limit = si.limits.device_verify
        wait = await si.devices.hit(f"verify:{ip}", now, limit.window_seconds, limit.max)
        if wait is not None:
            audit.emit("device.verify", result="rate_limited", client_ip=ip)
            audit.log("warn", f"sign-in refused for {ip}: over rate_limits.device_verify ({limit.max} per {limit.window_seconds}s); raise it if this is expected")
            html = pages.message("Too many attempts", "Too many attempts came from your network address. Wait a few minutes and try again.")
            return await _html(request, si, html, status=429, headers={"Retry-After": str(wait)})
        user_code = normalize_user_code(form.get("user_code"))
        grant = await si.devices.find_pending(user_code, now) if user_code else None
        if grant is None:
            audit.emit("device.verify", result="unknown_code", client_ip=ip)
            html = pages.confirm(
                user_code=form.get("user_code", "")[:16], csrf=session["csrf"], error="That code is not valid or has expired. Check it and try again."
            )
            return await _html(request, si, html, status=400, session=session)
        if form.get("action") == "deny":
            await si.devices.deny(grant.device_code_hash, now)
            audit.emit("device.deny", result="denied", client_ip=ip, requested_at=grant.expires_at.isoformat())
            html = pages.message("Sign-in denied", "The sign-in was denied. Claude Code will not be signed in.")
            return await _html(request, si, html, session=session)
        await si.ensure_discovered()
    except StoreUnavailable as exc:
        audit.log("error", f"device verification failed: {exc}")
        return await _html(request, si, pages.message("Try again later", "Sign-in is unavailable right now."), status=503)
    except Exception as exc:  # the IdP could not be reached for discovery
        audit.log("error", f"identity provider discovery failed: {exc!r}")
        return await _html(request, si, pages.message("Try again later", "The identity provider cannot be reached right now."), status=503)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair() if si.use_pkce else (None, None)
    session.update(grant=grant.device_code_hash.hex(), state=state, nonce=nonce, verifier=verifier)
    location = si.oidc.authorization_url(redirect_uri=si.redirect_uri, state=state, nonce=nonce, code_challenge=challenge)
    audit.emit("device.verify", result="redirect", client_ip=ip)
    response = web.Response(status=302, headers={"Location": location, **pages.security_headers(si.form_action())})
    await si.cookies.save_session(request, response, session)
    return response


# ------------------------------------------------------------------ IdP callback


async def callback(request: web.Request) -> web.Response:
    from gateway.auth.google_groups import GroupsUnavailable
    from gateway.auth.identity import IdentityRejected
    from gateway.auth.oidc import IdpRejected, IdpUnavailable, IdTokenInvalid

    si = request.app[SIGNIN]
    ip = request.get(CLIENT_IP)
    session = await _session(request, si)
    grant_hex, state = session.get("grant"), session.get("state")
    nonce, verifier = session.get("nonce"), session.get("verifier")
    # One use only: whatever happens next, this browser binding is spent.
    session.invalidate()
    if not grant_hex or not state:
        audit.emit("device.callback", result="browser_mismatch", client_ip=ip)
        return await _done(request, si, pages.message(
            "Sign-in could not be completed",
            "This sign-in was started in another browser, or it has already been used. Start again from Claude Code.",
        ), 400, session)
    # Compared as bytes: compare_digest refuses (TypeError) str holding non-ASCII.
    if not secrets.compare_digest(request.query.get("state", "").encode(errors="surrogatepass"), state.encode()):
        audit.emit("device.callback", result="state_mismatch", client_ip=ip)
        return await _done(request, si, pages.message("Sign-in could not be completed", "The sign-in response did not match this browser. Start again from Claude Code."), 400, session)
    if "error" in request.query or not request.query.get("code"):
        audit.emit("device.callback", result="idp_error", client_ip=ip, error=request.query.get("error", "no code")[:100])
        return await _done(request, si, pages.message("Sign-in could not be completed", "Your identity provider did not complete the sign-in."), 400, session)
    grant_hash = bytes.fromhex(grant_hex)
    now = si.now()
    try:
        grant = await si.devices.get_pending(grant_hash, now)
        if grant is None:
            audit.emit("device.callback", result="expired", client_ip=ip)
            return await _done(request, si, pages.message("Sign-in expired", "This sign-in has expired. Start again from Claude Code."), 400, session)
        tokens = await si.oidc.exchange_code(request.query["code"], redirect_uri=si.redirect_uri, code_verifier=verifier)
        identity = await si.oidc.identity_from_tokens(tokens, nonce=nonce)
    except (IdentityRejected, IdTokenInvalid, IdpRejected) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        audit.emit("session.mint", result="fail", err=reason, client_ip=ip)
        try:
            await si.devices.deny(grant_hash, now)
        except StoreUnavailable:
            pass
        text = getattr(exc, "user_message", None) or "Your account could not be signed in to this gateway."
        return await _done(request, si, pages.message("Sign-in could not be completed", text), 403, session)
    except GroupsUnavailable as exc:
        # The IdP said yes, but without the person's groups no policy or cap
        # could be chosen for them: no session rather than one missing groups.
        audit.log("error", f"sign-in callback: Google groups could not be looked up: {exc}")
        audit.emit("session.mint", result="fail", err="google_groups_unavailable", client_ip=ip)
        return await _done(request, si, pages.message("Try again later", GROUPS_UNAVAILABLE), 503, session)
    except (IdpUnavailable, StoreUnavailable) as exc:
        audit.log("error", f"sign-in callback failed: {exc}")
        # The detail names the cause (an IdP refusing the gateway's client
        # credentials, for one); it never holds a code or token.
        err = "idp_unavailable" if isinstance(exc, IdpUnavailable) else "store_unavailable"
        audit.emit("session.mint", result="fail", err=err, detail=str(exc), client_ip=ip)
        return await _done(request, si, pages.message("Try again later", "Sign-in is unavailable right now. Start again from Claude Code in a few minutes."), 503, session)
    sealed = si.idp_tokens.seal(tokens.refresh_token.encode()) if tokens.refresh_token else None
    try:
        approved = await si.devices.approve(
            grant_hash, now, Approved(identity.sub, identity.email, identity.name, tuple(identity.groups), sealed)
        )
    except StoreUnavailable as exc:
        audit.log("error", f"sign-in approval failed: {exc}")
        return await _done(request, si, pages.message("Try again later", "Sign-in is unavailable right now."), 503, session)
    if not approved:
        return await _done(request, si, pages.message("Sign-in expired", "This sign-in has expired. Start again from Claude Code."), 400, session)
    audit.emit("device.callback", result="success", sub=identity.sub, email=identity.email, client_ip=ip)
    return await _done(request, si, pages.signed_in(identity.email), 200, session)


# ------------------------------------------------------------------ token endpoint


async def token(request: web.Request) -> web.Response:
    si = request.app[SIGNIN]
    ip = request.get(CLIENT_IP)
    form = await _form(request)
    if form is None:
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    grant_type = form.get("grant_type")
    label = {DEVICE_GRANT: "device_code", "refresh_token": "refresh_token"}.get(grant_type or "", "other")
    try:
        pair, email = await _grant(si, grant_type, form, ip)
    except OAuthError as err:
        # authorization_pending is most device-code polls: a sign-in still in the browser.
        request.app[RUNTIME].metrics.add(SIGNIN_TOKENS, (label, err.error))
        raise
    request.app[RUNTIME].metrics.add(SIGNIN_TOKENS, (label, "issued"))
    doc = TokenResponse(
        access_token=pair.access_token,
        token_type="Bearer",
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token or UNSET,
        email=email if email and email.strip() else UNSET,
    )
    return web.Response(body=encoder.encode(doc), headers=JSON_NO_STORE)


async def _grant(
    si: SignIn, grant_type: str | None, form: dict[str, str], ip: str | None
) -> tuple[TokenPair, str | None]:
    try:
        if grant_type == DEVICE_GRANT:
            pair, email = await _device_grant(si, form.get("device_code"), ip)
        elif grant_type == "refresh_token":
            refresh_token = form.get("refresh_token")
            if not refresh_token:
                raise OAuthError("invalid_request", "refresh_token is required")
            pair = await si.sessions.refresh(refresh_token, si.oidc.recheck, client_ip=ip)
            email = None
        else:
            raise OAuthError("unsupported_grant_type")
    except StoreUnavailable as exc:
        audit.log("error", f"token endpoint: {exc}")
        raise OAuthError("temporarily_unavailable", "sign-in storage is unavailable") from None
    return pair, email


async def _device_grant(si: SignIn, device_code: str | None, ip: str | None) -> tuple[TokenPair, str | None]:
    from gateway.auth.identity import Identity

    if not device_code:
        raise OAuthError("invalid_request", "device_code is required")
    grant_hash = code_hash(device_code)
    result = await si.devices.poll(grant_hash, si.now(), POLL_INTERVAL_S)
    if result.outcome == "slow_down":
        # 429, as Anthropic's gateway answers; the client adds 5 s either way.
        raise OAuthError("slow_down")
    if result.outcome != "issue" or result.approved is None:
        raise OAuthError(result.outcome)
    a = result.approved
    idp_refresh = si.idp_tokens.open(a.idp_refresh_token) if a.idp_refresh_token else None
    identity = Identity(a.sub, a.email, a.name, a.groups)
    try:
        pair = await si.sessions.start_family(identity, idp_refresh.decode() if idp_refresh else None, client_ip=ip)
    except (StoreUnavailable, OAuthError):
        await si.devices.restore(grant_hash, a)
        raise
    return pair, a.email


# ------------------------------------------------------------------ revocation


async def revoke(request: web.Request) -> web.Response:
    si = request.app[SIGNIN]
    form = await _form(request)
    if form is None or not form.get("token"):
        raise OAuthError("invalid_request", "token is required")
    try:
        await si.sessions.revoke_token(form["token"], form.get("token_type_hint"))
    except StoreUnavailable as exc:
        audit.log("error", f"revocation failed: {exc}")
        raise OAuthError("temporarily_unavailable") from None
    # RFC 7009: unknown and already-revoked tokens get the same 200.
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------ helpers


async def _form(request: web.Request) -> dict[str, str] | None:
    """The form fields, or None when the body is not form-encoded.

    A malformed form is an OAuth ``invalid_request`` (400); the verification
    page, which answers in HTML, catches :class:`FormInvalid` itself.
    """
    try:
        return await _form_fields(request)
    except FormInvalid as exc:
        raise OAuthError("invalid_request", str(exc)) from None


async def _form_fields(request: web.Request) -> dict[str, str] | None:
    ctype = request.content_type
    if request.content_length and request.content_length > FORM_LIMIT_BYTES:
        raise GatewayError(Kind.TOO_LARGE, f"request body is larger than the limit of {FORM_LIMIT_BYTES} bytes")
    if request.body_exists and ctype != "application/x-www-form-urlencoded":
        return None
    if not request.body_exists:
        return {}
    body = bytearray()
    while chunk := await request.content.read(FORM_LIMIT_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > FORM_LIMIT_BYTES:
            raise GatewayError(Kind.TOO_LARGE, f"request body is larger than the limit of {FORM_LIMIT_BYTES} bytes")
    return parse_form(bytes(body))


def _same_origin(request: web.Request, si: SignIn) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == si.origin
    return request.headers.get("Sec-Fetch-Site") == "same-origin"


async def _session(request: web.Request, si: SignIn) -> aiohttp_session.Session:
    request[aiohttp_session.STORAGE_KEY] = si.cookies
    return await aiohttp_session.get_session(request)


async def _html(
    request: web.Request,
    si: SignIn,
    html: str,
    *,
    status: int = 200,
    session: aiohttp_session.Session | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    response = web.Response(status=status, text=html, headers={**pages.security_headers(si.form_action()), **(headers or {})})
    if session is not None:
        await si.cookies.save_session(request, response, session)
    return response


async def _done(request: web.Request, si: SignIn, html: str, status: int, session: aiohttp_session.Session) -> web.Response:
    return await _html(request, si, html, status=status, session=session)


async def prune_expired(si: SignIn) -> None:
    """Drop spent device grants, old rate counters and long-ended sign-in families.

    One round of a periodic job (every ``PRUNE_EVERY_S``, from gateway.app.jobs).
    Plain deletes of expired rows: safe to run on every replica at once.
    """
    # Rate-limit entries must outlive the longest window they count in.
    keep_s = max(3600, si.limits.device_authorization.window_seconds, si.limits.device_verify.window_seconds)
    try:
        await si.devices.prune(si.now(), keep_s)
        await si.sessions.prune()
    except StoreUnavailable as exc:
        audit.log("warn", f"sign-in pruning skipped: {exc}")

