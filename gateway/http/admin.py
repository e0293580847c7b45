"""Admin API: spend limits over HTTP, shaped like Anthropic's (SPEC "Admin API"), and sign-in sessions.

Routes, all under ``/v1/organizations/spend_limits`` and registered (from the
table in :mod:`gateway.http.routes`, each handler wrapped by :func:`guarded`)
only when the config has an ``admin:`` section (without it every path is a
plain 404)::

    GET    ""            list caps in creation order (limit, after_id | before_id, scope_type)
    POST   ""            create or replace the cap of one (scope, period)
    GET    /effective    resolved cap and period-to-date spend per principal and period
    GET    /audit        mutation trail, newest first
    GET    /{id}         one cap
    DELETE /{id}         delete one cap

``/effective`` and ``/audit`` are registered before ``/{id}`` so they are not
taken for ids.

A Gatehouse extension beside them, under ``/v1/organizations/sessions``: a
person's sign-ins (the same families ``gatehouse sessions`` shows)::

    GET    ?email=E      one person's sign-ins, newest first (limit, after_id)
    POST   /revoke       revoke every live sign-in of ``{"email"}``
    DELETE /{family_id}  revoke one sign-in

A revocation marks the family and sends ``NOTIFY gatehouse_revocations`` in the
statement that revokes it, as ``/oauth/revoke`` does, so every replica refuses
its tokens within seconds; its ``admin_audit`` row (action ``session.revoke``,
no before/after) is written in the same transaction.

Who may call: an ``x-api-key`` equal to a write key (everything) or a read key
(GET only), or a gateway bearer token whose groups meet ``admin.admin_groups``
(everything). When an ``x-api-key`` is sent it alone decides, so a wrong key is
never rescued by a bearer sent alongside. Keys are compared as SHA-256 digests
with ``hmac.compare_digest`` against every configured key, so neither timing
nor length tells a caller how close a guess was. Refusals are 401 and emit the
audit event ``admin.denied`` (client address, method, path, reason; never the
key).

Every mutation changes ``spend_limits``, writes its before/after row to
``admin_audit`` and sends ``NOTIFY gatehouse_spend_limits`` in one transaction
(run by :mod:`gateway.admin.store`), so the trail and the replicas' limit
caches can never disagree with the table.

Money: amounts travel as strings of whole US cents and are stored as integer
cents; spend is read as integer micro-dollars and shown as cents with three
decimals. No floats anywhere.

This module holds the HTTP edge: the handlers and authorization. A handler
parses what the client sent with the pure :mod:`gateway.admin.requests`
(bodies, queries, cursors), calls one method of
:class:`gateway.admin.store.AdminStore`, which runs the statements of
``sql/queries/admin_*.sql`` and owns the transactions, and shapes the rows into
wire documents with the pure :mod:`gateway.admin.docs`. The retention sweep is
:mod:`gateway.admin.retention`, which takes the store and the config and knows
nothing of these handlers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from gateway import audit
from gateway.admin.docs import audit_doc, cents_string, effective_row, limit_doc, session_doc
from gateway.admin.requests import (
    encode_cursor,
    filters_fingerprint,
    invalid,
    parse_audit_query,
    parse_delete_reason,
    parse_effective_query,
    parse_limit_id,
    parse_limit_request,
    parse_list_query,
    parse_revoke_sessions,
    parse_session_query,
)
from gateway.admin.store import (
    ADMIN_REVOKE_REASON,
    STORE_TIMEOUT_S,
    AdminStore,
    RevokedSession,
    UnknownCursor,
)
from gateway.db.store import Store, StoreUnavailable
from gateway.errors import GatewayError, Kind, render
from gateway.http.keys import CLIENT_IP, REQUEST_ID, RUNTIME, authenticate, read_body
from gateway.spend import caps as spend
from protocol_spec.wire import (
    AuditPage,
    EffectivePage,
    SessionRevoked,
    SessionsRevoked,
    SignInSessionPage,
    SpendLimitDeleted,
    SpendLimitPage,
)

if TYPE_CHECKING:
    from gateway.config.schema import Config

BASE = "/v1/organizations/spend_limits"
SESSIONS = "/v1/organizations/sessions"
MAX_BODY_BYTES = 64 * 1024
JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
_encode = msgspec.json.Encoder().encode


class AdminContext:
    """What the admin handlers need, computed once from ``cfg.admin``.

    ``store``: the store to use; ``None`` means the runtime's (opened at app
    startup, after this object is built). ``clock`` returns Unix seconds, like
    ``gateway.app.build.build``'s, so tests move one clock for the whole app.
    """

    def __init__(self, cfg: Config, *, store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        admin = cfg.admin
        if admin is None:
            raise ValueError("the admin API needs an admin: section in the config")
        self.write_keys = tuple((k.id, _digest(k.key)) for k in admin.write_keys)
        self.read_keys = tuple((k.id, _digest(k.key)) for k in admin.read_keys)
        self.admin_groups = frozenset(admin.admin_groups)
        self.group_limit_mode: str = admin.group_limit_mode
        self.secrets = tuple(cfg.session.secrets)
        self._store = store
        self.clock = clock

    def store(self, app: web.Application) -> Store:
        return self._store if self._store is not None else app[RUNTIME].store

    def limits(self, app: web.Application) -> AdminStore:
        """The admin data access over :meth:`store`'s pool."""
        return AdminStore(self.store(app).pool, timeout_s=STORE_TIMEOUT_S)

    def now(self) -> datetime:
        # Kept to the microsecond (the wire shows milliseconds) so caps created
        # within one millisecond still list in the order they were created.
        return datetime.fromtimestamp(self.clock(), UTC)


ADMIN: web.AppKey[AdminContext] = web.AppKey("admin", AdminContext)


# ---------------------------------------------------------------- responses


def _ok(doc: msgspec.Struct) -> web.Response:
    return web.Response(body=_encode(doc), headers=JSON_HEADERS)


def _error_response(request: web.Request, err: GatewayError) -> web.Response:
    request_id = request[REQUEST_ID]
    status, headers, body = render(err, request_id)
    headers.update(JSON_HEADERS)
    headers["request-id"] = request_id
    return web.Response(status=status, body=body, headers=headers)


Handler = Callable[[web.Request, AdminContext, str], Awaitable[web.Response]]


def guarded(handler: Handler, *, write: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authorize, then run ``handler(request, ctx, actor)``; every outcome in the admin envelope."""

    async def run(request: web.Request) -> web.Response:
        ctx = request.app[ADMIN]
        try:
            actor = authorize(request, ctx, write=write)
            try:
                # The store's own bound, for the whole call: a slow database
                # answers 503 rather than holding the caller.
                async with asyncio.timeout(STORE_TIMEOUT_S):
                    return await handler(request, ctx, actor)
            except (StoreUnavailable, TimeoutError) as exc:
                audit.log("warn", f"admin {request.method} {request.path}: database unavailable: {exc}")
                raise GatewayError(
                    Kind.STORE_UNAVAILABLE, "the database is unavailable; try again shortly"
                ) from None
            except GatewayError:
                raise
            except Exception as exc:
                # A bug or a database refusal (the transaction rolled back, so
                # nothing half-done remains); still answered in the envelope,
                # with the request id an operator can find in the log.
                audit.log(
                    "error",
                    f"admin {request.method} {request.path} failed ({request[REQUEST_ID]}): {type(exc).__name__}: {exc}",
                )
                raise GatewayError(Kind.INTERNAL, "internal error") from None
        except GatewayError as err:
            return _error_response(request, err)

    run.__name__ = handler.__name__
    return run


# ---------------------------------------------------------------- authorization


def _digest(secret: str) -> bytes:
    # surrogatepass: a header of undecodable bytes arrives with surrogates in it,
    # and must be a wrong key (401), not an encoding error.
    return hashlib.sha256(secret.encode(errors="surrogatepass")).digest()


def _match_key(presented: str, keys: Sequence[tuple[str, bytes]]) -> str | None:
    # Compare with every key, no early exit: the time taken does not depend on
    # which key (if any) matched.
    given = _digest(presented)
    found = None
    for key_id, digest in keys:
        if hmac.compare_digest(given, digest):
            found = key_id
    return found


def authorize(request: web.Request, ctx: AdminContext, *, write: bool) -> str:
    """The audit actor for this request, or a GatewayError (401/403)."""
    api_key = request.headers.get("x-api-key")
    if api_key is not None:
        write_id = _match_key(api_key, ctx.write_keys)
        read_id = _match_key(api_key, ctx.read_keys)
        if write_id is not None:
            return f"admin-key:{write_id}"
        if read_id is not None:
            if write:
                _deny(request, "read_only_key")
                raise GatewayError(
                    Kind.FORBIDDEN, "this admin key may only read; changing spend limits or sessions requires a write key"
                )
            return f"admin-key:{read_id}"
        _deny(request, "invalid_key")
        raise _unauthenticated()
    authorization = request.headers.get("Authorization")
    if authorization is None:
        _deny(request, "no_credentials")
        raise _unauthenticated()
    try:
        principal = authenticate(request.app[RUNTIME], authorization)
    except GatewayError:
        principal = None
    if principal is None or ctx.admin_groups.isdisjoint(principal.groups):
        _deny(request, "bearer_rejected")
        raise _unauthenticated()
    return f"oidc:{principal.sub}"


def _unauthenticated() -> GatewayError:
    # One message for every cause, so a caller cannot tell a wrong key from a
    # token outside the admin groups; the audit event records which it was.
    return GatewayError(Kind.AUTH_INVALID, "missing or invalid admin credentials")


def _deny(request: web.Request, reason: str) -> None:
    audit.emit(
        "admin.denied",
        reason=reason,
        method=request.method,
        path=request.path,
        client_ip=request.get(CLIENT_IP, request.remote),
    )


# ---------------------------------------------------------------- handlers


async def upsert_limit(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    req = parse_limit_request(await read_body(request, MAX_BODY_BYTES))
    _, after = await ctx.limits(request.app).upsert_limit(req, actor=actor, now=ctx.now())
    audit.emit(
        "admin.limit.upsert",
        actor=actor,
        scope_type=req.scope_type,
        scope_id=req.scope_id,
        period=req.period,
        amount=cents_string(req.amount_cents),
        target=after["id"],
    )
    return _ok(limit_doc(after))


async def delete_limit(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    target = parse_limit_id(request.match_info["id"])
    reason = parse_delete_reason(request.query)
    if target is None:
        raise GatewayError(Kind.NOT_FOUND, "no spend limit has this id")
    before = await ctx.limits(request.app).delete_limit(target, actor=actor, now=ctx.now(), reason=reason)
    if before is None:
        raise GatewayError(Kind.NOT_FOUND, "no spend limit has this id")
    audit.emit(
        "admin.limit.delete",
        actor=actor,
        scope_type=before["scope_type"],
        scope_id=before["scope_id"],
        period=before["period"],
        amount=cents_string(before["amount_cents"]),
        target=target,
    )
    return _ok(SpendLimitDeleted(target))


async def get_limit(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    target = parse_limit_id(request.match_info["id"])
    row = None if target is None else await ctx.limits(request.app).get_limit(target)
    if row is None:
        raise GatewayError(Kind.NOT_FOUND, "no spend limit has this id")
    return _ok(limit_doc(row))


async def list_limits(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    size, scope_type, after_id, before_id = parse_list_query(request.query)
    try:
        rows, has_more = await ctx.limits(request.app).list_limits(
            size, scope_type, after_id=after_id, before_id=before_id
        )
    except UnknownCursor:
        field = "after_id" if after_id is not None else "before_id"
        raise invalid(f"{field}: no spend limit has this id") from None
    data = [limit_doc(r) for r in rows]
    return _ok(
        SpendLimitPage(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )
    )


async def audit_trail(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    size, after_id = parse_audit_query(request.query)
    rows, has_more = await ctx.limits(request.app).audit_trail(size, after_id)
    return _ok(AuditPage(data=[audit_doc(r) for r in rows], has_more=has_more))


async def effective(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    eq = parse_effective_query(request.query)
    now = ctx.now()
    starts = {p: spend.period_bounds(p, now)[0] for p in eq.periods}
    page = await ctx.limits(request.app).effective(eq, starts, ctx.group_limit_mode)
    fingerprint = filters_fingerprint(eq.user_ids, eq.periods, eq.by_spend, eq.q)
    return _ok(
        EffectivePage(
            data=[effective_row(*entry) for entry in page.entries],
            next_page=None if page.next_key is None else encode_cursor(fingerprint, page.next_key),
        )
    )


# ---------------------------------------------------------------- sign-in sessions (a Gatehouse extension)


async def list_sessions(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    from gateway.auth.session_store import SessionService

    sq = parse_session_query(request.query)
    runtime = request.app[RUNTIME]
    sessions = SessionService(ctx.store(request.app), runtime.tokens, secrets=ctx.secrets, clock=ctx.clock)
    families = await sessions.list_families(sq.email)
    start = 0
    if sq.after_id is not None:
        ids = [f.family_id for f in families]
        if sq.after_id not in ids:
            raise invalid("after_id: no sign-in session of this person has this id")
        start = ids.index(sq.after_id) + 1
    data = [session_doc(f) for f in families[start : start + sq.size]]
    return _ok(
        SignInSessionPage(
            data=data,
            has_more=len(families) > start + sq.size,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )
    )


async def revoke_session(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    family_id = parse_limit_id(request.match_info["family_id"])
    reason = parse_delete_reason(request.query)
    if family_id is None:
        raise GatewayError(Kind.NOT_FOUND, "no sign-in session has this id")
    exists, revoked = await ctx.limits(request.app).revoke_session(family_id, actor=actor, now=ctx.now(), reason=reason)
    if not exists:
        raise GatewayError(Kind.NOT_FOUND, "no sign-in session has this id")
    if revoked is not None:
        _emit_revoked(revoked, actor)
    return _ok(SessionRevoked(family_id, revoked_now=revoked is not None))


async def revoke_sessions(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    email, reason = parse_revoke_sessions(await read_body(request, MAX_BODY_BYTES))
    revoked = await ctx.limits(request.app).revoke_sessions_of(email, actor=actor, now=ctx.now(), reason=reason)
    for one in revoked:
        _emit_revoked(one, actor)
    return _ok(SessionsRevoked(email, len(revoked), [r.family_id for r in revoked]))


def _emit_revoked(revoked: RevokedSession, actor: str) -> None:
    # The event every other revocation emits, with who asked for it.
    audit.emit(
        "session.revoke",
        family=revoked.family_id,
        sub=revoked.sub,
        email=revoked.email,
        reason=ADMIN_REVOKE_REASON,
        actor=actor,
    )
