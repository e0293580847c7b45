"""Admin API: spend limits over HTTP, shaped like Anthropic's (SPEC "Admin API").

Routes, all under ``/v1/organizations/spend_limits`` and registered only when
the config has an ``admin:`` section (without it every path is a plain 404)::

    GET    ""            list caps in creation order (limit, after_id | before_id, scope_type)
    POST   ""            create or replace the cap of one (scope, period)
    GET    /effective    resolved cap and period-to-date spend per principal and period
    GET    /audit        mutation trail, newest first
    GET    /{id}         one cap
    DELETE /{id}         delete one cap

``/effective`` and ``/audit`` are registered before ``/{id}`` so they are not
taken for ids.

Who may call: an ``x-api-key`` equal to a write key (everything) or a read key
(GET only), or a gateway bearer token whose groups meet ``admin.admin_groups``
(everything). When an ``x-api-key`` is sent it alone decides, so a wrong key is
never rescued by a bearer sent alongside. Keys are compared as SHA-256 digests
with ``hmac.compare_digest`` against every configured key, so neither timing
nor length tells a caller how close a guess was. Refusals are 401 and emit the
audit event ``admin.denied`` (client address, method, path, reason; never the
key).

Every mutation changes ``spend_limits``, writes its before/after row to
``admin_audit`` and sends ``NOTIFY gatehouse_spend_limits`` in one transaction,
so the trail and the replicas' limit caches can never disagree with the table.

Money: amounts travel as strings of whole US cents and are stored as integer
cents; spend is read as integer micro-dollars and shown as cents with three
decimals. No floats anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import msgspec
from aiohttp import web

from gateway import audit, spend
from gateway.errors import GatewayError, Kind, render
from gateway.relay import CLIENT_IP, REQUEST_ID, RUNTIME, authenticate, read_body
from gateway.store import StoreUnavailable, queries, unavailable_as
from protocol_spec.wire import (
    UNSET,
    AuditEvent,
    AuditPage,
    EffectiveLimit,
    EffectivePage,
    SpendLimit,
    SpendLimitDeleted,
    SpendLimitPage,
    SpendLimitScope,
    SpendLimitSnapshot,
    UserActor,
    snapshot_decoder,
)

BASE = "/v1/organizations/spend_limits"
PERIODS = spend.PERIODS
SCOPE_TYPES = ("user", "rbac_group", "organization")
# The key under which each scope type carries its id, in the wire shape.
SCOPE_ID_FIELD = {"user": "user_id", "rbac_group": "rbac_group_id"}
CURRENCY = "USD"
# Far above any real budget, and low enough that cents × 10 000 (micro-dollars,
# how the spend path counts) still fits a PostgreSQL bigint.
MAX_AMOUNT_CENTS = 10**14
MAX_ID_CHARS = 256
MAX_REASON_CHARS = 1000
MAX_BODY_BYTES = 64 * 1024
LIST_DEFAULT, EFFECTIVE_DEFAULT, AUDIT_DEFAULT, PAGE_MAX = 20, 20, 100, 1000
# Admin calls are rare and small; this bounds how long one may hold a
# connection when the database is slow, not how long it normally takes.
STORE_TIMEOUT_S = 10.0
PRUNE_EVERY_S = 3600.0
CURSOR_MISMATCH = "cursor does not match current query parameters"
JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
_DIGITS = re.compile(r"[0-9]+")
_encode = msgspec.json.Encoder().encode
_ORGANIZATION = SpendLimitScope("organization")


class AdminContext:
    """What the admin handlers need, computed once from ``cfg.admin``.

    ``store``: the store to use; ``None`` means the runtime's (opened at app
    startup, after this object is built). ``clock`` returns Unix seconds, like
    ``gateway.app.build``'s, so tests move one clock for the whole app.
    """

    def __init__(self, cfg: Any, *, store: Any = None, clock: Callable[[], float] = time.time) -> None:
        admin = cfg.admin
        if admin is None:
            raise ValueError("the admin API needs an admin: section in the config")
        self.write_keys = tuple((k.id, _digest(k.key)) for k in admin.write_keys)
        self.read_keys = tuple((k.id, _digest(k.key)) for k in admin.read_keys)
        self.admin_groups = frozenset(admin.admin_groups)
        self.group_limit_mode: str = admin.group_limit_mode
        self._store = store
        self.clock = clock

    def store(self, app: web.Application) -> Any:
        return self._store if self._store is not None else app[RUNTIME].store

    def now(self) -> datetime:
        # Kept to the microsecond (the wire shows milliseconds) so caps created
        # within one millisecond still list in the order they were created.
        return datetime.fromtimestamp(self.clock(), UTC)


ADMIN: web.AppKey[AdminContext] = web.AppKey("admin", AdminContext)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get(BASE, _wrap(list_limits, write=False), allow_head=False)
    r.add_post(BASE, _wrap(upsert_limit, write=True))
    # Literal paths first: aiohttp matches in registration order.
    r.add_get(BASE + "/effective", _wrap(effective, write=False), allow_head=False)
    r.add_get(BASE + "/audit", _wrap(audit_trail, write=False), allow_head=False)
    r.add_get(BASE + "/{id}", _wrap(get_limit, write=False), allow_head=False)
    r.add_delete(BASE + "/{id}", _wrap(delete_limit, write=True))


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


def _wrap(handler: Handler, *, write: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authorize, then run ``handler(request, ctx, actor)``; every outcome in the admin envelope."""

    async def run(request: web.Request) -> web.Response:
        ctx = request.app[ADMIN]
        try:
            actor = authorize(request, ctx, write=write)
            try:
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
    return hashlib.sha256(secret.encode()).digest()


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
                    Kind.FORBIDDEN, "this admin key may only read; changing spend limits requires a write key"
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


def _invalid(message: str) -> GatewayError:
    return GatewayError(Kind.INVALID_REQUEST, message)


# ---------------------------------------------------------------- wire shapes (pure)


def iso(ts: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, as Anthropic's APIs write times."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def scope_doc(scope_type: str, scope_id: str) -> SpendLimitScope:
    if scope_type == "user":
        return SpendLimitScope(scope_type, user_id=scope_id)
    if scope_type == "rbac_group":
        return SpendLimitScope(scope_type, rbac_group_id=scope_id)
    return _ORGANIZATION


def _scope_of(source: Mapping[str, str]) -> SpendLimitScope:
    # spend.Cap.source is already in the wire shape, as plain data.
    return SpendLimitScope(
        source["type"], user_id=source.get("user_id", UNSET), rbac_group_id=source.get("rbac_group_id", UNSET)
    )


def _cents(value: int | None) -> str | None:
    return None if value is None else str(value)


def limit_doc(row: Mapping[str, Any]) -> SpendLimit:
    """A ``spend_limit`` object. The pooled fields appear only on pooled caps
    (a Gatehouse extension), so every other cap has exactly Anthropic's shape."""
    pooled = bool(row["pooled_limit_enabled"])
    return SpendLimit(
        id=row["id"],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
        scope=scope_doc(row["scope_type"], row["scope_id"]),
        amount=_cents(row["amount_cents"]),
        currency=row["currency"],
        period=row["period"],
        pooled_limit_enabled=True if pooled else UNSET,
        pooled_monthly_credit_limit=_cents(row["pooled_monthly_credit_limit_cents"]) if pooled else UNSET,
    )


def snapshot(row: Mapping[str, Any]) -> SpendLimitSnapshot:
    """A cap as the audit trail keeps it (before/after)."""
    pooled = bool(row["pooled_limit_enabled"])
    return SpendLimitSnapshot(
        id=row["id"],
        scope=scope_doc(row["scope_type"], row["scope_id"]),
        amount=_cents(row["amount_cents"]),
        period=row["period"],
        currency=row["currency"],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
        pooled_limit_enabled=True if pooled else UNSET,
        pooled_monthly_credit_limit=_cents(row["pooled_monthly_credit_limit_cents"]) if pooled else UNSET,
    )


def _stored_snapshot(raw: str | None) -> SpendLimitSnapshot | None:
    # jsonb keeps keys in its own order; decoding into the Struct restores the wire order.
    return None if raw is None else snapshot_decoder.decode(raw)


def audit_doc(row: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(
        id=str(row["id"]),
        created_at=iso(row["at"]),
        actor=row["actor"],
        action=row["action"],
        target_id=row["target"],
        before=_stored_snapshot(row["before"]),
        after=_stored_snapshot(row["after"]),
        reason=row["reason"],
    )


def spend_string(micro: int) -> str:
    """Micro-dollars as cents with three decimals (``"105.077"``), rounded half up."""
    thousandths = (micro + 5) // 10  # 1/1000 cent = 10 micro-dollars
    return f"{thousandths // 1000}.{thousandths % 1000:03d}"


# ---------------------------------------------------------------- request parsing (pure)


class LimitRequest(NamedTuple):
    scope_type: str
    scope_id: str
    period: str
    amount_cents: int | None
    pooled: bool
    pooled_cents: int | None
    reason: str | None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _cents_field(doc: Mapping[str, Any], name: str) -> int | None:
    value = doc[name]
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name}: expected a string of whole cents or null, got a {_type_name(value)}")
    if not _DIGITS.fullmatch(value):
        raise _invalid(f'{name}: must be a whole number of US cents written as digits, such as "5000"')
    cents = int(value)
    if cents > MAX_AMOUNT_CENTS:
        raise _invalid(f"{name}: must be at most {MAX_AMOUNT_CENTS} cents")
    return cents


def _id_field(scope: Mapping[str, Any], name: str) -> str:
    if name not in scope:
        raise _invalid(f"scope.{name}: required for this scope type")
    value = scope[name]
    if not isinstance(value, str):
        raise _invalid(f"scope.{name}: expected a string, got a {_type_name(value)}")
    if not value.strip() or len(value) > MAX_ID_CHARS:
        raise _invalid(f"scope.{name}: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return value


def parse_limit_request(body: bytes) -> LimitRequest:
    """The POST body, validated; the first problem found is a 400 naming its field."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise _invalid("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _invalid(f"body: expected a JSON object, got a {_type_name(doc)}")
    scope = doc.get("scope")
    if scope is None:
        raise _invalid("scope: required")
    if not isinstance(scope, dict):
        raise _invalid(f"scope: expected an object, got a {_type_name(scope)}")
    scope_type = scope.get("type")
    if scope_type not in SCOPE_TYPES:
        raise _invalid("scope.type: must be one of 'user', 'rbac_group', 'organization'")
    scope_id = _id_field(scope, SCOPE_ID_FIELD[scope_type]) if scope_type in SCOPE_ID_FIELD else ""
    if "amount" not in doc:
        raise _invalid("amount: required (a string of whole cents, or null for no limit)")
    amount = _cents_field(doc, "amount")
    period = doc.get("period")
    if period is None:
        raise _invalid("period: required")
    if period not in PERIODS:
        shown = period if isinstance(period, str) else _type_name(period)
        raise _invalid(f"period: must be one of 'daily', 'weekly', 'monthly', not '{shown}'")
    currency = doc.get("currency", CURRENCY)
    if currency != CURRENCY:
        raise _invalid(f'currency: only "{CURRENCY}" is supported')
    pooled = doc.get("pooled_limit_enabled", False)
    if not isinstance(pooled, bool):
        raise _invalid(f"pooled_limit_enabled: expected a boolean, got a {_type_name(pooled)}")
    pooled_cents = (
        _cents_field(doc, "pooled_monthly_credit_limit") if "pooled_monthly_credit_limit" in doc else None
    )
    if pooled:
        if scope_type != "rbac_group":
            raise _invalid("pooled_limit_enabled: only an rbac_group cap can carry a pooled budget")
        if period != "monthly":
            raise _invalid("pooled_limit_enabled: pooled budgets are monthly; the period must be 'monthly'")
        if pooled_cents is None:
            raise _invalid(
                "pooled_monthly_credit_limit: required (whole cents) when pooled_limit_enabled is true"
            )
    elif pooled_cents is not None:
        raise _invalid("pooled_monthly_credit_limit: only allowed together with pooled_limit_enabled: true")
    reason = doc.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise _invalid(f"reason: must be a string of at most {MAX_REASON_CHARS} characters")
    return LimitRequest(scope_type, scope_id, period, amount, pooled, pooled_cents, reason)


def parse_page_size(query: Mapping[str, str], default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= PAGE_MAX:
        raise _invalid(f"limit: must be a whole number from 1 to {PAGE_MAX}")
    return int(raw)


def _multi(query: Any, name: str) -> list[str]:
    # Accept both the bracketed form clients send (user_ids[]=a) and the plain one.
    return list(query.getall(name + "[]", [])) + list(query.getall(name, []))


# ---------------------------------------------------------------- transactions


async def _notify_and_record(
    conn: asyncpg.Connection,
    *,
    now: datetime,
    actor: str,
    action: str,
    target: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    reason: str | None,
) -> None:
    q = queries()
    await conn.fetchval(
        q["admin_audit_insert"],
        now,
        actor,
        action,
        target,
        None if before is None else _encode(snapshot(before)).decode(),
        None if after is None else _encode(snapshot(after)).decode(),
        reason,
    )
    await conn.fetchval(q["admin_notify_limits"], target)


async def store_upsert(store: Any, req: LimitRequest, *, actor: str, now: datetime) -> tuple[Any, Any]:
    """Create or replace the cap of ``req``'s (scope, period); returns (before, after) rows."""
    q = queries()
    with unavailable_as("saving a spend limit"):
        async with store.pool.acquire() as conn, conn.transaction():
            key = (req.scope_type, req.scope_id, req.period)
            before = None
            after = await conn.fetchrow(
                q["admin_limit_insert"], "spl_" + uuid.uuid4().hex, *key,
                req.amount_cents, req.pooled, req.pooled_cents, now, actor,
            )  # fmt: skip
            if after is None:
                # It exists (committed; ON CONFLICT waited for any concurrent
                # creator), so lock it and replace its terms.
                before = await conn.fetchrow(q["admin_limit_lock_scope"], *key)
                if before is None:  # deleted in between: a new transaction retries
                    raise _Retry
                after = await conn.fetchrow(
                    q["admin_limit_update"], before["id"], req.amount_cents, req.pooled, req.pooled_cents, now
                )
            await _notify_and_record(
                conn, now=now, actor=actor, action="spend_limit.upsert", target=after["id"],
                before=before, after=after, reason=req.reason,
            )  # fmt: skip
    return before, after


class _Retry(Exception):
    """The row an upsert meant to update vanished under it; run the upsert again."""


async def store_delete(store: Any, limit_id: str, *, actor: str, now: datetime, reason: str | None) -> Any:
    with unavailable_as("deleting a spend limit"):
        async with store.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(queries()["admin_limit_delete"], limit_id)
            if before is not None:
                await _notify_and_record(
                    conn, now=now, actor=actor, action="spend_limit.delete", target=limit_id,
                    before=before, after=None, reason=reason,
                )  # fmt: skip
    return before


# ---------------------------------------------------------------- handlers


async def upsert_limit(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    req = parse_limit_request(await read_body(request, MAX_BODY_BYTES))
    store = ctx.store(request.app)
    for attempt in range(3):
        try:
            _, after = await store_upsert(store, req, actor=actor, now=ctx.now())
            break
        except _Retry:
            if attempt == 2:
                raise GatewayError(Kind.INTERNAL, "the spend limit changed concurrently; try again") from None
    audit.emit(
        "admin.limit.upsert",
        actor=actor,
        scope_type=req.scope_type,
        scope_id=req.scope_id,
        period=req.period,
        amount=_cents(req.amount_cents),
        target=after["id"],
    )
    return _ok(limit_doc(after))


async def delete_limit(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    limit_id = request.match_info["id"]
    reason = request.query.get("reason")
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise _invalid(f"reason: must be at most {MAX_REASON_CHARS} characters")
    before = await store_delete(ctx.store(request.app), limit_id, actor=actor, now=ctx.now(), reason=reason)
    if before is None:
        raise GatewayError(Kind.NOT_FOUND, "no spend limit has this id")
    audit.emit(
        "admin.limit.delete",
        actor=actor,
        scope_type=before["scope_type"],
        scope_id=before["scope_id"],
        period=before["period"],
        amount=_cents(before["amount_cents"]),
        target=limit_id,
    )
    return _ok(SpendLimitDeleted(limit_id))


async def get_limit(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    with unavailable_as("reading a spend limit"):
        row = await ctx.store(request.app).pool.fetchrow(
            queries()["admin_limit_get"], request.match_info["id"]
        )
    if row is None:
        raise GatewayError(Kind.NOT_FOUND, "no spend limit has this id")
    return _ok(limit_doc(row))


async def list_limits(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    query = request.query
    size = parse_page_size(query, LIST_DEFAULT)
    scope_type = query.get("scope_type")
    if scope_type is not None and scope_type not in SCOPE_TYPES:
        raise _invalid("scope_type: must be one of 'user', 'rbac_group', 'organization'")
    after_id, before_id = query.get("after_id"), query.get("before_id")
    if after_id is not None and before_id is not None:
        raise _invalid("before_id: cannot be combined with after_id; page in one direction at a time")
    q = queries()
    pool = ctx.store(request.app).pool
    with unavailable_as("listing spend limits"):
        cursor_id = after_id if after_id is not None else before_id
        anchor = None
        if cursor_id is not None:
            anchor = await pool.fetchrow(q["admin_limit_get"], cursor_id)
            if anchor is None:
                field = "after_id" if after_id is not None else "before_id"
                raise _invalid(f"{field}: no spend limit has this id")
        if before_id is not None:
            assert anchor is not None
            rows = await pool.fetch(
                q["admin_limit_page_backward"], scope_type, anchor["created_at"], anchor["id"], size + 1
            )
            has_more = len(rows) > size
            rows = list(reversed(rows[:size]))
        else:
            rows = await pool.fetch(
                q["admin_limit_page_forward"],
                scope_type,
                None if anchor is None else anchor["created_at"],
                None if anchor is None else anchor["id"],
                size + 1,
            )
            has_more = len(rows) > size
            rows = rows[:size]
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
    size = parse_page_size(request.query, AUDIT_DEFAULT)
    after_id = request.query.get("after_id")
    if after_id is not None and (not _DIGITS.fullmatch(after_id) or len(after_id) > 18):
        raise _invalid("after_id: must be the numeric id of an audit event")
    with unavailable_as("reading the admin audit trail"):
        rows = await ctx.store(request.app).pool.fetch(
            queries()["admin_audit_page"], None if after_id is None else int(after_id), size + 1
        )
    return _ok(AuditPage(data=[audit_doc(r) for r in rows[:size]], has_more=len(rows) > size))


# ---------------------------------------------------------------- /effective


class EffectiveQuery(NamedTuple):
    user_ids: tuple[str, ...] | None
    periods: tuple[str, ...]
    by_spend: bool
    q: str | None
    size: int
    cursor: tuple[Any, ...] | None


def _fingerprint(
    user_ids: tuple[str, ...] | None, periods: tuple[str, ...], by_spend: bool, q: str | None
) -> str:
    filters = [sorted(set(user_ids)) if user_ids is not None else None, list(periods), by_spend, q]
    return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:16]


def encode_cursor(fingerprint: str, key: Sequence[Any]) -> str:
    raw = json.dumps({"f": fingerprint, "k": list(key)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, fingerprint: str) -> tuple[Any, ...]:
    """The position a ``next_page`` cursor names; 400 when it is not ours or the filters changed."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key, fp = doc["k"], doc["f"]
        if not isinstance(key, list) or not isinstance(fp, str):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _invalid("page: not a cursor this API returned") from None
    if fp != fingerprint:
        raise _invalid(CURSOR_MISMATCH)
    return tuple(key)


def parse_effective_query(query: Any) -> EffectiveQuery:
    user_ids = tuple(_multi(query, "user_ids")) or None
    if user_ids is not None and any(not u or len(u) > MAX_ID_CHARS for u in user_ids):
        raise _invalid(f"user_ids[]: each must be a non-empty id of at most {MAX_ID_CHARS} characters")
    asked = _multi(query, "period")
    for p in asked:
        if p not in PERIODS:
            raise _invalid(f"period[]: must be one of 'daily', 'weekly', 'monthly', not '{p}'")
    periods = tuple(p for p in PERIODS if p in asked) or PERIODS
    sort = query.get("sort")
    if sort is not None and sort != "spend_desc":
        raise _invalid("sort: the only supported order is 'spend_desc'")
    by_spend = sort == "spend_desc"
    if by_spend and len(set(asked)) != 1:
        raise _invalid("sort: spend_desc needs exactly one period[] to rank by")
    q = query.get("q") or None
    size = parse_page_size(query, EFFECTIVE_DEFAULT)
    page = query.get("page")
    cursor = None
    if page:
        cursor = decode_cursor(page, _fingerprint(user_ids, periods, by_spend, q))
        shape_ok = (
            len(cursor) == 2
            and isinstance(cursor[1], str)
            and (
                type(cursor[0]) is int and 0 <= cursor[0] < 2**63 if by_spend else isinstance(cursor[0], str)
            )
        )
        if not shape_ok:
            raise _invalid("page: not a cursor this API returned")
    return EffectiveQuery(user_ids, periods, by_spend, q, size, cursor)


def _groups_of(raw: str | None) -> list[str]:
    if raw is None:
        return []
    groups = json.loads(raw)
    return [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []


def effective_row(person: Mapping[str, Any], period: str, cap: spend.Cap, spent_micro: int) -> EffectiveLimit:
    sub = person["sub"]
    return EffectiveLimit(
        scope=SpendLimitScope("user", user_id=sub),
        groups=_groups_of(person["groups"]),
        actor=UserActor(user_id=sub, name=person["name"], email_address=person["email"], deleted=False),
        # Caps come from whole cents, so this division is exact.
        amount=None if cap.amount_micro is None else str(cap.amount_micro // spend.MICRO_PER_CENT),
        currency=CURRENCY,
        period=period,
        source=None if cap.source is None else _scope_of(cap.source),
        spend_limit_id=cap.limit_id,
        period_to_date_spend=spend_string(spent_micro),
    )


async def effective(request: web.Request, ctx: AdminContext, actor: str) -> web.Response:
    eq = parse_effective_query(request.query)
    now = ctx.now()
    starts = {p: spend.period_bounds(p, now)[0] for p in eq.periods}
    fingerprint = _fingerprint(eq.user_ids, eq.periods, eq.by_spend, eq.q)
    q = queries()
    pool = ctx.store(request.app).pool
    rows: list[EffectiveLimit] = []
    next_key: tuple[Any, ...] | None = None
    with unavailable_as("reading effective spend limits"):
        # The same resolution the spend gate uses, so /effective shows what is enforced.
        limits = spend.LimitIndex(spend.LimitRow(**dict(r)) for r in await pool.fetch(q["admin_limit_all"]))
        if eq.by_spend:
            (period,) = eq.periods
            spent_after, sub_after = eq.cursor if eq.cursor else (None, None)
            people = await pool.fetch(
                q["admin_effective_by_spend"], eq.user_ids, eq.q, spent_after, sub_after,
                period, starts[period], eq.size + 1,
            )  # fmt: skip
            for person in people[: eq.size]:
                caps = limits.caps(person["sub"], _groups_of(person["groups"]), ctx.group_limit_mode)
                rows.append(effective_row(person, period, caps[period], person["spent_micro"]))
            if len(people) > eq.size:
                last = people[eq.size - 1]
                next_key = (last["spent_micro"], last["sub"])
        else:
            # Rows are (sub, period) in order; the cursor names the last row
            # shown, so a page may end part-way through one person's periods.
            sub_from, period_after = eq.cursor if eq.cursor else (None, None)
            people = await pool.fetch(
                q["admin_effective_principals"], eq.user_ids, eq.q, sub_from, eq.size + 2
            )
            spent = await _spend_of(pool, [p["sub"] for p in people], starts)
            candidates = [
                (person, period)
                for person in people
                for period in eq.periods
                if not (
                    person["sub"] == sub_from
                    and period_after in eq.periods
                    and eq.periods.index(period) <= eq.periods.index(period_after)
                )
            ]
            for person, period in candidates[: eq.size]:
                caps = limits.caps(person["sub"], _groups_of(person["groups"]), ctx.group_limit_mode)
                rows.append(
                    effective_row(person, period, caps[period], spent.get((person["sub"], period), 0))
                )
            if len(candidates) > eq.size:
                last_person, last_period = candidates[eq.size - 1]
                next_key = (last_person["sub"], last_period)
    next_page = None if next_key is None else encode_cursor(fingerprint, next_key)
    return _ok(EffectivePage(data=rows, next_page=next_page))


async def _spend_of(pool: Any, subs: list[str], starts: Mapping[str, datetime]) -> dict[tuple[str, str], int]:
    if not subs:
        return {}
    found = await pool.fetch(queries()["admin_effective_spend"], subs, list(starts), list(starts.values()))
    return {(r["sub"], r["period"]): r["spent_micro"] for r in found}


# ---------------------------------------------------------------- retention


async def prune(store: Any, cfg: Any, now: datetime) -> dict[str, int]:
    """Delete what the ``admin`` retention settings say is too old; counts per table.

    Plain deletes by age, safe to run on every replica at once.
    """
    admin = cfg.admin
    q = queries()
    removed: dict[str, int] = {}
    with unavailable_as("retention prune"):
        async with asyncio.timeout(STORE_TIMEOUT_S * 6):
            pool = store.pool
            removed["admin_audit"] = _count(
                await pool.execute(q["admin_prune_audit"], now - timedelta(days=admin.audit_retention_days))
            )
            removed["principals"] = _count(
                await pool.execute(
                    q["admin_prune_principals"], now - timedelta(days=admin.identity_retention_days)
                )
            )
            removed["spend_counters"] = _count(
                await pool.execute(q["admin_prune_spend"], months_before(now, admin.spend_retention_months))
            )
    return removed


def months_before(now: datetime, months: int) -> datetime:
    """Midnight UTC on the first of the month ``months`` calendar months before ``now``'s month."""
    index = now.year * 12 + (now.month - 1) - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def prune_forever(ctx: AdminContext, app: web.Application, every_s: float = PRUNE_EVERY_S) -> None:
    """The periodic retention sweep; the app runs it as a background task."""
    cfg = app[RUNTIME].config
    while True:
        await asyncio.sleep(every_s)
        try:
            removed = await prune(ctx.store(app), cfg, ctx.now())
        except (StoreUnavailable, TimeoutError) as exc:
            audit.log("warn", f"retention prune skipped: {exc}")
            continue
        if any(removed.values()):
            audit.log(
                "info",
                "retention prune removed " + ", ".join(f"{n} from {t}" for t, n in removed.items() if n),
            )
