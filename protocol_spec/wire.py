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
"""

from __future__ import annotations

from typing import Any

import msgspec

# --------------------------------------------------------------------------
# Error envelope (Anthropic's shape): {"type":"error","error":{...},"request_id":...}


class ErrorDetail(msgspec.Struct, frozen=True):
    type: str
    message: str


class ErrorEnvelope(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    error: ErrorDetail
    request_id: str | None = None


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
message_start_decoder = msgspec.json.Decoder(MessageStartEvent)
message_delta_decoder = msgspec.json.Decoder(MessageDeltaEvent)
reply_view_decoder = msgspec.json.Decoder(MessageReplyView)
claims_decoder = msgspec.json.Decoder(SessionClaims)
encoder = msgspec.json.Encoder()

# --------------------------------------------------------------------------
# RETIRED field names (never reuse): none yet.
