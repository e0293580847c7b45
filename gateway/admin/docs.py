"""Admin API responses: database rows shaped into the wire Structs.

Pure functions from row mappings (asyncpg records or plain dicts) to the
``protocol_spec.wire`` types the admin endpoints return. Times are written the
way Anthropic's APIs write them (UTC, milliseconds, ``Z``); amounts as strings
of whole cents; period-to-date spend as cents with three decimals. Gatehouse's
pooled-budget fields appear only on pooled caps, so every other cap has exactly
Anthropic's shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.admin.requests import CURRENCY
from gateway.spend import caps as spend
from protocol_spec.wire import (
    UNSET,
    AuditEvent,
    EffectiveLimit,
    SignInSession,
    SpendLimit,
    SpendLimitScope,
    SpendLimitSnapshot,
    UserActor,
    snapshot_decoder,
)

if TYPE_CHECKING:
    from gateway.auth.session_store import FamilyInfo

_ORGANIZATION = SpendLimitScope("organization")


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


def cents_string(value: int | None) -> str | None:
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
        amount=cents_string(row["amount_cents"]),
        currency=row["currency"],
        period=row["period"],
        pooled_limit_enabled=True if pooled else UNSET,
        pooled_monthly_credit_limit=cents_string(row["pooled_monthly_credit_limit_cents"]) if pooled else UNSET,
    )


def snapshot(row: Mapping[str, Any]) -> SpendLimitSnapshot:
    """A cap as the audit trail keeps it (before/after)."""
    pooled = bool(row["pooled_limit_enabled"])
    return SpendLimitSnapshot(
        id=row["id"],
        scope=scope_doc(row["scope_type"], row["scope_id"]),
        amount=cents_string(row["amount_cents"]),
        period=row["period"],
        currency=row["currency"],
        created_at=iso(row["created_at"]),
        updated_at=iso(row["updated_at"]),
        pooled_limit_enabled=True if pooled else UNSET,
        pooled_monthly_credit_limit=cents_string(row["pooled_monthly_credit_limit_cents"]) if pooled else UNSET,
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


def groups_of(raw: str | None) -> list[str]:
    # A principal's groups are kept as JSON text; anything but a list of
    # strings reads as no groups rather than failing the whole page.
    if raw is None:
        return []
    groups = json.loads(raw)
    return [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []


def effective_row(person: Mapping[str, Any], period: str, cap: spend.Cap, spent_micro: int) -> EffectiveLimit:
    sub = person["sub"]
    return EffectiveLimit(
        scope=SpendLimitScope("user", user_id=sub),
        groups=groups_of(person["groups"]),
        actor=UserActor(user_id=sub, name=person["name"], email_address=person["email"], deleted=False),
        # Caps come from whole cents, so this division is exact.
        amount=None if cap.amount_micro is None else str(cap.amount_micro // spend.MICRO_PER_CENT),
        currency=CURRENCY,
        period=period,
        source=None if cap.source is None else _scope_of(cap.source),
        spend_limit_id=cap.limit_id,
        period_to_date_spend=spend_string(spent_micro),
    )


def session_doc(fam: FamilyInfo) -> SignInSession:
    """One sign-in family as ``GET /v1/organizations/sessions`` lists it."""
    # Without an IdP refresh token a family cannot be refreshed, so it lasts as
    # long as its newest access token.
    ends = fam.expires_at if fam.refreshable else min(fam.expires_at, fam.last_access_exp)
    return SignInSession(
        id=fam.family_id,
        user_id=fam.sub,
        email_address=fam.email,
        groups=list(fam.groups),
        created_at=iso(fam.created_at),
        last_refreshed_at=None if fam.last_refresh_at is None else iso(fam.last_refresh_at),
        refresh_count=fam.refresh_count,
        expires_at=iso(ends),
        client_ip=fam.client_ip,
        state=fam.state,
        revoked_at=None if fam.revoked_at is None else iso(fam.revoked_at),
        revoke_reason=fam.revoke_reason,
    )
