"""Admin API requests, parsed and validated without touching the network.

Every function here takes what the client sent (a body, a query mapping, a
cursor string) and returns a plain value or raises a 400 ``GatewayError`` whose
message names the offending field. The first problem found wins, so callers
see one fix at a time. Money arrives as strings of whole US cents and becomes
an ``int``; nothing is ever a float.

``/effective`` pages with an opaque cursor: base64url JSON holding the sort key
of the last row shown plus a fingerprint of the filters it was issued under,
so a cursor replayed with different filters is refused instead of silently
skipping or repeating rows.

Query arguments are duck-typed multi-dicts (``get`` and ``getall``), so this
module needs no web framework.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from gateway.client_text import quoted, unprintable
from gateway.errors import GatewayError, Kind
from gateway.spend import caps as spend

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
LIST_DEFAULT, EFFECTIVE_DEFAULT, AUDIT_DEFAULT, PAGE_MAX = 20, 20, 100, 1000
CURSOR_MISMATCH = "cursor does not match current query parameters"
# How much of a wrong value a refusal quotes back.
ECHO_CHARS = 40
_DIGITS = re.compile(r"[0-9]+")


def invalid(message: str) -> GatewayError:
    return GatewayError(Kind.INVALID_REQUEST, message)


def _text(name: str, value: str, max_chars: int) -> str:
    """``value`` when it is printable text of at most ``max_chars``; else a 400 naming ``name``.

    Every client string bound for the database passes here: PostgreSQL refuses
    NUL bytes and lone surrogates, and a refused statement must be this
    request's 400, not a 500.
    """
    if len(value) > max_chars:
        raise invalid(f"{name}: must be at most {max_chars} characters")
    if unprintable(value):
        raise invalid(f"{name}: must not contain control characters")
    return value


def parse_limit_id(raw: str) -> str | None:
    """The spend-limit id in a path, or None when no limit could have it (a 404, not a query)."""
    return raw if len(raw) <= MAX_ID_CHARS and not unprintable(raw) else None


# ---------------------------------------------------------------- POST body


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


def _a_type(value: Any) -> str:
    """The JSON type of ``value`` as a refusal says it: "null", "a number", "an array"."""
    name = _type_name(value)
    if name == "null":
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _cents_field(doc: Mapping[str, Any], name: str) -> int | None:
    value = doc[name]
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{name}: expected a string of whole cents or null, got {_a_type(value)}")
    if not _DIGITS.fullmatch(value):
        raise invalid(f'{name}: must be a whole number of US cents written as digits, such as "5000"')
    cents = int(value)
    if cents > MAX_AMOUNT_CENTS:
        raise invalid(f"{name}: must be at most {MAX_AMOUNT_CENTS} cents")
    return cents


def _id_field(scope: Mapping[str, Any], name: str) -> str:
    if name not in scope:
        raise invalid(f"scope.{name}: required for this scope type")
    value = scope[name]
    if not isinstance(value, str):
        raise invalid(f"scope.{name}: expected a string, got {_a_type(value)}")
    if not value.strip() or len(value) > MAX_ID_CHARS:
        raise invalid(f"scope.{name}: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return _text(f"scope.{name}", value, MAX_ID_CHARS)


def parse_limit_request(body: bytes) -> LimitRequest:
    """The POST body, validated; the first problem found is a 400 naming its field."""
    doc = _json_object(body)
    scope = doc.get("scope")
    if scope is None:
        raise invalid("scope: required")
    if not isinstance(scope, dict):
        raise invalid(f"scope: expected an object, got {_a_type(scope)}")
    scope_type = scope.get("type")
    if scope_type not in SCOPE_TYPES:
        raise invalid("scope.type: must be one of 'user', 'rbac_group', 'organization'")
    scope_id = _id_field(scope, SCOPE_ID_FIELD[scope_type]) if scope_type in SCOPE_ID_FIELD else ""
    if "amount" not in doc:
        raise invalid("amount: required (a string of whole cents, or null for no limit)")
    amount = _cents_field(doc, "amount")
    period = doc.get("period")
    if period is None:
        raise invalid("period: required")
    if period not in PERIODS:
        shown = period if isinstance(period, str) else _type_name(period)
        raise invalid(f"period: must be one of 'daily', 'weekly', 'monthly', not '{quoted(shown, ECHO_CHARS)}'")
    currency = doc.get("currency", CURRENCY)
    if currency != CURRENCY:
        raise invalid(f'currency: only "{CURRENCY}" is supported')
    pooled = doc.get("pooled_limit_enabled", False)
    if not isinstance(pooled, bool):
        raise invalid(f"pooled_limit_enabled: expected a boolean, got {_a_type(pooled)}")
    pooled_cents = (
        _cents_field(doc, "pooled_monthly_credit_limit") if "pooled_monthly_credit_limit" in doc else None
    )
    if pooled:
        if scope_type != "rbac_group":
            raise invalid("pooled_limit_enabled: only an rbac_group cap can carry a pooled budget")
        if period != "monthly":
            raise invalid("pooled_limit_enabled: pooled budgets are monthly; the period must be 'monthly'")
        if pooled_cents is None:
            raise invalid(
                "pooled_monthly_credit_limit: required (whole cents) when pooled_limit_enabled is true"
            )
    elif pooled_cents is not None:
        raise invalid("pooled_monthly_credit_limit: only allowed together with pooled_limit_enabled: true")
    reason = doc.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise invalid(f"reason: must be a string of at most {MAX_REASON_CHARS} characters")
    if reason is not None:
        _text("reason", reason, MAX_REASON_CHARS)
    return LimitRequest(scope_type, scope_id, period, amount, pooled, pooled_cents, reason)


def parse_page_size(query: Mapping[str, str], default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= PAGE_MAX:
        raise invalid(f"limit: must be a whole number from 1 to {PAGE_MAX}")
    return int(raw)


def _multi(query: Any, name: str) -> list[str]:
    # Accept both the bracketed form clients send (user_ids[]=a) and the plain one.
    return list(query.getall(name + "[]", [])) + list(query.getall(name, []))


# ---------------------------------------------------------------- list, audit and delete queries


class ListQuery(NamedTuple):
    size: int
    scope_type: str | None
    after_id: str | None
    before_id: str | None


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    size = parse_page_size(query, LIST_DEFAULT)
    scope_type = query.get("scope_type")
    if scope_type is not None and scope_type not in SCOPE_TYPES:
        raise invalid("scope_type: must be one of 'user', 'rbac_group', 'organization'")
    after_id, before_id = query.get("after_id"), query.get("before_id")
    for name, value in (("after_id", after_id), ("before_id", before_id)):
        if value is not None:
            _text(name, value, MAX_ID_CHARS)
    if after_id is not None and before_id is not None:
        raise invalid("before_id: cannot be combined with after_id; page in one direction at a time")
    return ListQuery(size, scope_type, after_id, before_id)


def parse_audit_query(query: Mapping[str, str]) -> tuple[int, int | None]:
    """(page size, id of the last event already seen or None)."""
    size = parse_page_size(query, AUDIT_DEFAULT)
    after_id = query.get("after_id")
    if after_id is not None and (not _DIGITS.fullmatch(after_id) or len(after_id) > 18):
        raise invalid("after_id: must be the numeric id of an audit event")
    return size, None if after_id is None else int(after_id)


def parse_delete_reason(query: Mapping[str, str]) -> str | None:
    reason = query.get("reason")
    return None if reason is None else _text("reason", reason, MAX_REASON_CHARS)


# ---------------------------------------------------------------- sessions (a Gatehouse extension)

MAX_EMAIL_CHARS = 320
SESSIONS_DEFAULT = 20


class SessionQuery(NamedTuple):
    email: str
    size: int
    after_id: str | None  # the family id the page starts after


def parse_email(value: Any) -> str:
    """A person's email as the sessions endpoints take it; a 400 naming ``email`` otherwise."""
    if value is None or value == "":
        raise invalid("email: required")
    if not isinstance(value, str):
        raise invalid(f"email: expected a string, got {_a_type(value)}")
    _text("email", value, MAX_EMAIL_CHARS)
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in value):
        raise invalid("email: must be an email address, such as alice@example.com")
    return value


def parse_session_query(query: Mapping[str, str]) -> SessionQuery:
    email = parse_email(query.get("email"))
    size = parse_page_size(query, SESSIONS_DEFAULT)
    after_id = query.get("after_id")
    if after_id is not None:
        _text("after_id", after_id, MAX_ID_CHARS)
    return SessionQuery(email, size, after_id)


def parse_revoke_sessions(body: bytes) -> tuple[str, str | None]:
    """(email, reason) from ``POST …/sessions/revoke``; the first problem is a 400 naming its field."""
    doc = _json_object(body)
    email = parse_email(doc.get("email"))
    reason = doc.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise invalid(f"reason: must be a string of at most {MAX_REASON_CHARS} characters")
    return email, None if reason is None else _text("reason", reason, MAX_REASON_CHARS)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise invalid("the request body is not valid JSON") from None
    except RecursionError:
        raise invalid("the request body is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid(f"body: expected a JSON object, got {_a_type(doc)}")
    return doc


# ---------------------------------------------------------------- /effective query and cursors


class EffectiveQuery(NamedTuple):
    user_ids: tuple[str, ...] | None
    periods: tuple[str, ...]
    by_spend: bool
    q: str | None
    size: int
    cursor: tuple[Any, ...] | None


def filters_fingerprint(
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
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise invalid("page: not a cursor this API returned") from None
    if fp != fingerprint:
        raise invalid(CURSOR_MISMATCH)
    return tuple(key)


def parse_effective_query(query: Any) -> EffectiveQuery:
    user_ids = tuple(_multi(query, "user_ids")) or None
    if user_ids is not None and any(not u or len(u) > MAX_ID_CHARS for u in user_ids):
        raise invalid(f"user_ids[]: each must be a non-empty id of at most {MAX_ID_CHARS} characters")
    for u in user_ids or ():
        _text("user_ids[]", u, MAX_ID_CHARS)
    asked = _multi(query, "period")
    for p in asked:
        if p not in PERIODS:
            raise invalid(f"period[]: must be one of 'daily', 'weekly', 'monthly', not '{quoted(p, ECHO_CHARS)}'")
    periods = tuple(p for p in PERIODS if p in asked) or PERIODS
    sort = query.get("sort")
    if sort is not None and sort != "spend_desc":
        raise invalid("sort: the only supported order is 'spend_desc'")
    by_spend = sort == "spend_desc"
    if by_spend and len(set(asked)) != 1:
        raise invalid("sort: spend_desc needs exactly one period[] to rank by")
    q = query.get("q") or None
    if q is not None:
        _text("q", q, MAX_ID_CHARS)
    size = parse_page_size(query, EFFECTIVE_DEFAULT)
    page = query.get("page")
    cursor = None
    if page:
        cursor = decode_cursor(page, filters_fingerprint(user_ids, periods, by_spend, q))
        shape_ok = (
            len(cursor) == 2
            and isinstance(cursor[1], str)
            and len(cursor[1]) <= MAX_ID_CHARS
            and not unprintable(cursor[1])
            and (
                type(cursor[0]) is int and 0 <= cursor[0] < 2**63
                if by_spend
                else isinstance(cursor[0], str) and len(cursor[0]) <= MAX_ID_CHARS and not unprintable(cursor[0])
            )
        )
        if not shape_ok:
            raise invalid("page: not a cursor this API returned")
    return EffectiveQuery(user_ids, periods, by_spend, q, size, cursor)
