"""Every message that crosses the network, as msgspec Structs.

Rules (so that old and new peers keep talking):

* Types we *receive* from clients or upstreams ignore unknown fields: the
  protocol treats bodies and headers as open lists, and a new field must never
  make the gateway fail a request.
* New fields always get defaults.
* Fields that are retired are listed in the RETIRED block at the end and their
  names are never reused.

The gateway decodes only *views*: the handful of fields it needs from a body,
never the whole thing. Decoders are built once here so the hot path does not
pay for building them per request.

Every body the gateway *writes* is one of these Structs too (never a dict
literal in ``gateway/``), so ``schema.json`` describes what is really sent.
Field order is wire order: several shapes are compared byte for byte with
recorded answers of Anthropic's gateway. A field that is absent (rather than
``null``) when it does not apply is typed ``... | UnsetType = UNSET``; msgspec
never writes an UNSET field, and the schema shows it as not required.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from protocol_spec.requirements import Requirement, Section

# --------------------------------------------------------------------------
# Error envelope (Anthropic's shape): {"type":"error","error":{...},"request_id":...}


class ErrorDetail(msgspec.Struct, frozen=True):
    type: str
    message: str


class ErrorEnvelope(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    error: ErrorDetail
    request_id: str | None = None


class ErrorEvent(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    """The envelope without ``request_id``: the data of an SSE ``error`` event once a
    stream has started, and the spend 429 ``billing_error`` body, both written this
    way by Anthropic's gateway."""

    error: ErrorDetail


# --------------------------------------------------------------------------
# OAuth sign-in (RFC 8414 discovery, RFC 8628 device grant, RFC 6749 tokens and errors).


class AuthorizationServerMetadata(msgspec.Struct, frozen=True):
    """``GET /.well-known/oauth-authorization-server``; every URL is built from
    ``listen.public_url``, never from request headers."""

    issuer: str
    device_authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    response_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    scopes_supported: list[str]
    gateway_protocol_version: int


class DeviceAuthorization(msgspec.Struct, frozen=True, omit_defaults=True):
    """``POST /oauth/device_authorization``: what the CLI polls with and shows the person."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int
    # gatehouse.signin.login_notice, when the operator set one.
    login_notice: str | UnsetType = UNSET


class TokenResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """``POST /oauth/token`` success, for both the device grant and refresh."""

    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str | UnsetType = UNSET
    # Only on the device grant, and only when the IdP gave a non-blank email.
    email: str | UnsetType = UNSET


class OAuthErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """An OAuth endpoint's refusal (RFC 6749 §5.2): not the Anthropic envelope."""

    error: str
    error_description: str | UnsetType = UNSET


# --------------------------------------------------------------------------
# POST /v1/messages and /v1/messages/count_tokens — the request view.
#
# ``model`` is typed ``Any`` on purpose: the protocol gives distinct errors for a
# missing model and for a model that is not a string, so the view must accept
# both shapes and let the handler decide.


class MessagesRequestView(msgspec.Struct, frozen=True):
    # UNSET (absent) and null are different answers: "model is required" and
    # "model must be a string", as Anthropic's gateway gives them.
    model: Any = msgspec.UNSET
    stream: Any = None
    max_tokens: Any = None
    # Request tags (``{"<billing_group_tag>": "<group>"}``); read only to record the group.
    tags: Any = None


class ThinkingRequestView(msgspec.Struct, frozen=True):
    """``thinking`` of a count_tokens request, read for Bedrock's CountTokens only."""

    thinking: Any = None


# --------------------------------------------------------------------------
# Usage, as it appears in replies (JSON ``usage`` and the SSE usage events).


class CacheCreation(msgspec.Struct, frozen=True):
    ephemeral_5m_input_tokens: int | None = None
    ephemeral_1h_input_tokens: int | None = None


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None


class MessageStartInner(msgspec.Struct, frozen=True):
    usage: Usage | None = None
    id: str | None = None


class MessageStartEvent(msgspec.Struct, frozen=True):
    message: MessageStartInner | None = None


class MessageDeltaEvent(msgspec.Struct, frozen=True):
    usage: Usage | None = None


class MessageReplyView(msgspec.Struct, frozen=True):
    """A non-streaming Messages reply: only ``usage`` and ``id`` are read."""

    usage: Usage | None = None
    id: str | None = None


# --------------------------------------------------------------------------
# GET /v1/models


class ModelInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    id: str
    display_name: str
    created_at: str | None = None
    max_input_tokens: int | None = None
    description: str | None = None


class ModelList(msgspec.Struct, frozen=True):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


# --------------------------------------------------------------------------
# GET / (landing)


class ServerInfo(msgspec.Struct, frozen=True):
    name: str
    version: str
    protocol: str = "/protocol"


# --------------------------------------------------------------------------
# GET /protocol.json (SPEC §1.6): the requirements index plus this schema.


class ProtocolDocument(msgspec.Struct, frozen=True):
    document: str
    sections: list[Section]
    requirements: list[Requirement]
    # The JSON Schema generated from this module (protocol_spec/schema.json).
    schema: dict[str, Any]


# --------------------------------------------------------------------------
# GET /managed/settings (SPEC §17).
#
# ``settings`` is carried as the exact canonical JSON bytes (gateway/policy/canonical_json.py)
# the checksum was computed over, so re-encoding can never change them; the body is
# encoded once per policy at boot.


class ManagedSettings(msgspec.Struct, frozen=True):
    # The checksum names the served document, so uuid carries it too (SPEC MANAGED-4).
    uuid: str
    checksum: str
    settings: Annotated[
        msgspec.Raw,
        msgspec.Meta(
            description="The merged settings document, keys sorted as JSON.stringify writes them (SPEC MANAGED-17).",
            extra_json_schema={"type": "object"},
        ),
    ]


# --------------------------------------------------------------------------
# GET /api/oauth/usage (SPEC §20). Key order is Anthropic's gateway's; amounts are
# whole cents, utilization and percent whole percents.


class PeriodCredits(msgspec.Struct, frozen=True):
    limit: int | None
    used_credits: int
    utilization: int | None


class ExtraUsage(msgspec.Struct, frozen=True, omit_defaults=True):
    is_enabled: bool
    monthly_limit: int | None
    used_credits: int
    utilization: int | None
    currency: str
    # Present only when no cap applies: per-period spend so /usage still shows dollars.
    daily: PeriodCredits | UnsetType = UNSET
    weekly: PeriodCredits | UnsetType = UNSET


class UsageLimit(msgspec.Struct, frozen=True):
    kind: str
    group: str  # the period ("daily", "weekly", "monthly")
    percent: int
    resets_at: str
    severity: str  # "normal" or "critical"
    is_active: bool


class UsageReport(msgspec.Struct, frozen=True):
    extra_usage: ExtraUsage
    limits: list[UsageLimit]


# --------------------------------------------------------------------------
# Admin API: /v1/organizations/spend_limits (SPEC §26). Amounts are strings of whole
# US cents; times are RFC 3339 UTC with milliseconds.


class SpendLimitScope(msgspec.Struct, frozen=True, omit_defaults=True):
    """``{"type": "organization"}``, ``{"type": "user", "user_id"}`` or
    ``{"type": "rbac_group", "rbac_group_id"}``; also a cap's ``source``."""

    type: str
    user_id: str | UnsetType = UNSET
    rbac_group_id: str | UnsetType = UNSET


class SpendLimit(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="spend_limit"):
    id: str
    created_at: str
    updated_at: str
    scope: SpendLimitScope
    amount: str | None  # null: no limit
    currency: str
    period: str
    # Gatehouse extension, present only on pooled group caps, so every other cap
    # has exactly Anthropic's shape.
    pooled_limit_enabled: bool | UnsetType = UNSET
    pooled_monthly_credit_limit: str | None | UnsetType = UNSET


class SpendLimitPage(msgspec.Struct, frozen=True):
    data: list[SpendLimit]
    has_more: bool
    first_id: str | None
    last_id: str | None


class SpendLimitDeleted(msgspec.Struct, frozen=True, tag_field="type", tag="spend_limit_deleted"):
    id: str


class SpendLimitSnapshot(msgspec.Struct, frozen=True, omit_defaults=True):
    """A cap as the audit trail keeps it (``before``/``after``); stored as jsonb, read
    back through this type, so it is listed in this order whatever jsonb did to it."""

    id: str
    scope: SpendLimitScope
    amount: str | None
    period: str
    currency: str
    created_at: str
    updated_at: str
    pooled_limit_enabled: bool | UnsetType = UNSET
    pooled_monthly_credit_limit: str | None | UnsetType = UNSET


class AuditEvent(msgspec.Struct, frozen=True, tag_field="type", tag="audit_event"):
    id: str
    created_at: str
    actor: str  # "admin-key:<id>" or "oidc:<sub>"
    action: str  # "spend_limit.upsert" | "spend_limit.delete" | "session.revoke" (before/after null)
    target_id: str
    before: SpendLimitSnapshot | None
    after: SpendLimitSnapshot | None
    reason: str | None


class AuditPage(msgspec.Struct, frozen=True):
    data: list[AuditEvent]
    has_more: bool


# --------------------------------------------------------------------------
# Admin API: /v1/organizations/sessions, a Gatehouse extension (SPEC §26): a person's
# sign-ins ("families", whose id is the ``sid`` of every access token minted for them).


class SignInSession(msgspec.Struct, frozen=True, tag_field="type", tag="session"):
    id: str  # the family id
    user_id: str  # the IdP's sub
    email_address: str | None
    groups: list[str]
    created_at: str
    last_refreshed_at: str | None
    refresh_count: int
    expires_at: str  # when it stops working by itself, unless revoked first
    client_ip: str | None  # where the sign-in was completed
    state: str  # "active" | "revoked" | "ended"
    revoked_at: str | None
    revoke_reason: str | None


class SignInSessionPage(msgspec.Struct, frozen=True):
    data: list[SignInSession]
    has_more: bool
    first_id: str | None
    last_id: str | None


class SessionRevoked(msgspec.Struct, frozen=True, tag_field="type", tag="session_revoked"):
    id: str
    revoked_now: bool  # false: it had been revoked already


class SessionsRevoked(msgspec.Struct, frozen=True, tag_field="type", tag="sessions_revoked"):
    email_address: str
    revoked: int
    ids: list[str]


class UserActor(msgspec.Struct, frozen=True, tag_field="type", tag="user_actor"):
    user_id: str
    name: str | None
    email_address: str | None
    deleted: bool


class EffectiveLimit(msgspec.Struct, frozen=True):
    """One (person, period) row of ``GET …/effective``: the cap that applies and the spend."""

    scope: SpendLimitScope
    groups: list[str]
    actor: UserActor
    amount: str | None
    currency: str
    period: str
    source: SpendLimitScope | None  # which row the cap came from; null when none applies
    spend_limit_id: str | None
    period_to_date_spend: str  # cents with three decimals, e.g. "105.077"


class EffectivePage(msgspec.Struct, frozen=True):
    data: list[EffectiveLimit]
    next_page: str | None


# --------------------------------------------------------------------------
# Gateway session token claims (HS256 JWT, compatible with Anthropic's gateway).


class SessionClaims(msgspec.Struct, frozen=True, omit_defaults=True):
    sub: str
    iss: str
    aud: str | list[str]
    iat: int
    exp: int
    email: str | None = None
    name: str | None = None
    groups: list[str] = []
    sid: str | None = None
    # Set when the gateway strips request tags: tells the client which tag key
    # carries the developer's billing group (SPEC "Request tags").
    billing_group_tag: str | None = None


# --------------------------------------------------------------------------
# Prebuilt codecs (built once; the hot path reuses them).

messages_view_decoder = msgspec.json.Decoder(MessagesRequestView)
thinking_view_decoder = msgspec.json.Decoder(ThinkingRequestView)
message_start_decoder = msgspec.json.Decoder(MessageStartEvent)
message_delta_decoder = msgspec.json.Decoder(MessageDeltaEvent)
reply_view_decoder = msgspec.json.Decoder(MessageReplyView)
claims_decoder = msgspec.json.Decoder(SessionClaims)
snapshot_decoder = msgspec.json.Decoder(SpendLimitSnapshot)
encoder = msgspec.json.Encoder()

# --------------------------------------------------------------------------
# RETIRED field names (never reuse): none yet.
