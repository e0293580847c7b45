"""A cloud upstream's error reply, as the developer may see it (SPEC BEDROCK-6, VERTEX-6).

Bedrock, Vertex, Foundry and Claude Platform on AWS word their errors with
account ids, role ARNs and project ids. The client gets:

* the **status** the upstream answered (failover and the client's own retry
  rules key on it);
* for a 400 or 413 in **Anthropic's envelope** (Vertex, Foundry and Claude
  Platform on AWS use it for rejections by the model API): that message as it
  came, since it is about the request (``prompt is too long: …``);
* for a 400 or 413 in the **provider's own shape** (Bedrock's
  ``{"message": …}``): a ``capability_rejected:`` token the client recognises
  when the text says which (a too-long prompt), else ``upstream rejected the
  request`` / ``request too large for this upstream``;
* for any other status: a fixed text per status.

The upstream's own text goes to the operational log only (``ClientError.log``).
"""

from __future__ import annotations

import msgspec

from gateway.client_text import capped
from gateway.upstreams.outbound import ClientError
from protocol_spec.cloud_wire import (
    EnvelopeView,
    ProviderErrorView,
    envelope_view_decoder,
    provider_error_decoder,
)

PROMPT_TOO_LONG = "capability_rejected: prompt_too_long"
REJECTED = "upstream rejected the request"
TOO_LARGE = "request too large for this upstream"

# error.type per status, as the Anthropic API uses them (SPEC "Status and type").
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_TEXTS = {
    401: "upstream refused the gateway's credentials",
    403: "upstream denied the gateway access",
    404: "model not available on this upstream",
    408: "upstream timed out",
    429: "upstream rate limit exceeded",
    500: "upstream error",
    502: "upstream error",
    503: "upstream unavailable",
    504: "upstream timed out",
    529: "upstream overloaded",
}
# How Bedrock (and Anthropic's API, in its own words) say a prompt is over the window.
_TOO_LONG_MARKERS = ("too long", "too many tokens", "exceeds the maximum", "context length")
MAX_LOG_CHARS = 2000


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def generic_text(status: int) -> str:
    if status in _TEXTS:
        return _TEXTS[status]
    return "upstream error" if status >= 500 else REJECTED


def client_error(status: int, body: bytes, *, envelope_relayed: bool, upstream: str) -> ClientError:
    """``body``: the upstream's error reply. ``envelope_relayed``: a 400/413 in Anthropic's
    envelope is about the request and its message reaches the client."""
    log = f"upstream {upstream} answered {status}: {capped(body.decode('utf-8', 'replace'), MAX_LOG_CHARS)}"
    headers = {"Content-Type": "application/json"}
    if status in (400, 413):
        envelope = _decode(envelope_view_decoder, body)
        if (
            envelope_relayed
            and isinstance(envelope, EnvelopeView)
            and envelope.type == "error"
            and envelope.error is not None
            and envelope.error.message
        ):
            kind = envelope.error.type or error_type(status)
            return ClientError(status, headers, error_type=kind, message=envelope.error.message, log=log)
        shape = _decode(provider_error_decoder, body)
        text = (shape.message or shape.Message or "") if isinstance(shape, ProviderErrorView) else ""
        if any(marker in text.lower() for marker in _TOO_LONG_MARKERS):
            return ClientError(status, headers, error_type="invalid_request_error", message=PROMPT_TOO_LONG, log=log)
        message = TOO_LARGE if status == 413 else REJECTED
        return ClientError(status, headers, error_type=error_type(status), message=message, log=log)
    return ClientError(status, headers, error_type=error_type(status), message=generic_text(status), log=log)


def _decode(decoder: msgspec.json.Decoder, body: bytes) -> object:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
