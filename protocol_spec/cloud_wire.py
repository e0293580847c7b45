"""The cloud upstreams' own JSON shapes, as far as the gateway reads or writes them.

Bedrock Runtime's messages, and the error bodies of every cloud upstream.
These are the upstreams' messages, not Gatehouse's (those are in
:mod:`protocol_spec.wire` and its ``schema.json``). The names and members come
from botocore's service model for ``bedrock-runtime``
(``botocore/data/bedrock-runtime/*/service-2.json``): ``PayloadPart``,
``CountTokensRequest``/``CountTokensInput``/``InvokeModelTokensRequest`` and
``CountTokensResponse``. Decoded types skip unknown members (Bedrock pads
stream chunks with a ``"p"`` member, for one) and read only what is used.
"""

from __future__ import annotations

import msgspec

# ---------------------------------------------------------------- InvokeModelWithResponseStream


class PayloadPart(msgspec.Struct, frozen=True):
    """The payload of a ``chunk`` frame: ``{"bytes": "<base64 of one Anthropic stream event>"}``.
    msgspec decodes the base64 itself."""

    data: bytes = msgspec.field(name="bytes")


class EventTypeView(msgspec.Struct, frozen=True):
    """The one member of an Anthropic stream event the SSE line ``event: <type>`` needs."""

    type: str


class ExceptionBody(msgspec.Struct, frozen=True):
    """The payload of an ``exception`` frame; AWS services spell the member either way."""

    message: str | None = None
    Message: str | None = None


# ---------------------------------------------------------------- CountTokens


class InvokeModelTokens(msgspec.Struct, frozen=True):
    body: str  # base64 of the InvokeModel body to count


class CountTokensInput(msgspec.Struct, frozen=True):
    invoke_model: InvokeModelTokens = msgspec.field(name="invokeModel")


class CountTokensRequest(msgspec.Struct, frozen=True):
    """``POST /model/{foundation model id}/count-tokens``."""

    input: CountTokensInput


class CountTokensResponse(msgspec.Struct, frozen=True):
    input_tokens: int = msgspec.field(name="inputTokens")


class TokenCount(msgspec.Struct, frozen=True):
    """What the client gets back from ``/v1/messages/count_tokens`` (the Messages API's shape)."""

    input_tokens: int


payload_part_decoder = msgspec.json.Decoder(PayloadPart)
event_type_decoder = msgspec.json.Decoder(EventTypeView)
exception_body_decoder = msgspec.json.Decoder(ExceptionBody)
count_tokens_response_decoder = msgspec.json.Decoder(CountTokensResponse)


# ---------------------------------------------------------------- error replies of cloud upstreams


class ErrorDetailView(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class EnvelopeView(msgspec.Struct):
    """Anthropic's error envelope, as Vertex, Foundry and Claude Platform on AWS answer
    rejections by the model API."""

    type: str | None = None
    error: ErrorDetailView | None = None


class ProviderErrorView(msgspec.Struct):
    """An AWS service's own error body (``{"message": …}``; some capitalise it)."""

    message: str | None = None
    Message: str | None = None


envelope_view_decoder = msgspec.json.Decoder(EnvelopeView)
provider_error_decoder = msgspec.json.Decoder(ProviderErrorView)
