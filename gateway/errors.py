"""The gateway's error taxonomy and the one table that maps it to the wire.

Every error the gateway itself originates is a :class:`GatewayError` carrying a
:class:`Kind`. What a kind means on the wire — HTTP status, Anthropic
``error.type``, retry headers, and whether it lets a request fail over to the
next upstream — lives in ``TABLE`` and nowhere else, so the protocol's error
rules (SPEC "Errors") can be checked against a single screen of code.

Faults, grouped::

    client   AUTH_INVALID FORBIDDEN INVALID_REQUEST NOT_FOUND NOT_CONFIGURED
             LENGTH_REQUIRED TOO_LARGE URL_TOO_LONG HEADERS_TOO_LARGE REQUEST_TIMEOUT
             EXPECTATION_FAILED
    upstream UPSTREAM_CONNECT UPSTREAM_TIMEOUT UPSTREAM_STATUS ALL_UPSTREAMS_FAILED
             STREAM_INTERRUPTED UNSAFE_UPSTREAM_ADDRESS
    store    STORE_UNAVAILABLE
    gateway  NOT_SUPPORTED INTERNAL SHUTTING_DOWN
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from protocol_spec.wire import UNSET, ErrorDetail, ErrorEnvelope, ErrorEvent, OAuthErrorBody, encoder


class Kind(enum.Enum):
    AUTH_INVALID = "auth_invalid"
    FORBIDDEN = "forbidden"
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    NOT_CONFIGURED = "not_configured"
    LENGTH_REQUIRED = "length_required"
    TOO_LARGE = "too_large"
    URL_TOO_LONG = "url_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    EXPECTATION_FAILED = "expectation_failed"
    UPSTREAM_CONNECT = "upstream_connect"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_STATUS = "upstream_status"
    UNSAFE_UPSTREAM_ADDRESS = "unsafe_upstream_address"
    ALL_UPSTREAMS_FAILED = "all_upstreams_failed"
    STREAM_INTERRUPTED = "stream_interrupted"
    STORE_UNAVAILABLE = "store_unavailable"
    NOT_SUPPORTED = "not_supported"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class Rule(NamedTuple):
    status: int
    error_type: str
    # ``x-should-retry`` value we send, or None to send nothing. ``false`` goes on
    # every answer no retry can turn into a success: without it the client
    # retries for about three minutes before telling the person anything.
    should_retry: str | None
    # May the relay try the next upstream after this outcome?
    failover: bool


# fmt: off
TABLE: dict[Kind, Rule] = {
    Kind.AUTH_INVALID:            Rule(401, "authentication_error",  "false", False),
    Kind.FORBIDDEN:               Rule(403, "permission_error",      "false", False),
    Kind.INVALID_REQUEST:         Rule(400, "invalid_request_error", None,    False),
    Kind.NOT_FOUND:               Rule(404, "not_found_error",       None,    False),
    Kind.NOT_CONFIGURED:          Rule(404, "not_found_error",       None,    False),
    Kind.LENGTH_REQUIRED:         Rule(411, "invalid_request_error", "false", False),
    Kind.TOO_LARGE:               Rule(413, "request_too_large",     "false", False),
    Kind.URL_TOO_LONG:            Rule(414, "invalid_request_error", "false", False),
    Kind.HEADERS_TOO_LARGE:       Rule(431, "invalid_request_error", "false", False),
    # A body that arrived too slowly (gateway/app/connections.py); sending it again may succeed.
    Kind.REQUEST_TIMEOUT:         Rule(408, "invalid_request_error", None,    False),
    # An Expect header other than 100-continue (RFC 9110 §10.1.1); never quoted back.
    Kind.EXPECTATION_FAILED:      Rule(417, "invalid_request_error", "false", False),
    Kind.UPSTREAM_CONNECT:        Rule(502, "api_error",             None,    True),
    Kind.UPSTREAM_TIMEOUT:        Rule(504, "api_error",             None,    True),
    Kind.UPSTREAM_STATUS:         Rule(502, "api_error",             None,    True),
    Kind.UNSAFE_UPSTREAM_ADDRESS: Rule(502, "api_error",             None,    True),
    Kind.ALL_UPSTREAMS_FAILED:    Rule(502, "api_error",             None,    False),
    Kind.STREAM_INTERRUPTED:      Rule(200, "api_error",             None,    False),
    Kind.STORE_UNAVAILABLE:       Rule(503, "api_error",             None,    False),
    Kind.NOT_SUPPORTED:           Rule(501, "not_supported",         "false", False),
    Kind.SHUTTING_DOWN:           Rule(503, "overloaded_error",      None,    False),
    Kind.INTERNAL:                Rule(500, "api_error",             None,    False),
}
# fmt: on

# Upstream HTTP statuses after which the next upstream is tried (SPEC "Failover"):
# capacity (429, 5xx), the gateway's own credential failing there (401, 403),
# the model not being served there (404), and a missing endpoint (501). Every
# other 4xx is caused by the request itself and is returned as it is.
FAILOVER_STATUSES = frozenset({401, 403, 404, 429, 501})


def upstream_status_fails_over(status: int) -> bool:
    return status >= 500 or status in FAILOVER_STATUSES


# When every attempted upstream failed, the answer is the last response of the
# first status class in this order; failing all of them, our own 502.
FINAL_PREFERENCE: tuple[frozenset[int], ...] = (
    frozenset({429}),
    frozenset({401, 403}),
    frozenset({404}),
    frozenset({501}),
)


class GatewayError(Exception):
    """An error the gateway answers itself, in the Anthropic envelope."""

    def __init__(
        self,
        kind: Kind,
        message: str,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.headers = headers

    @property
    def rule(self) -> Rule:
        return TABLE[self.kind]


def _detail(error_type: str, message: str) -> ErrorDetail:
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        # A message quoting a client's lone surrogate cannot be UTF-8: callers
        # quote with client_text.quoted, and this keeps a miss from becoming a 500
        # (or, in a stream, from losing the error event).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return ErrorDetail(error_type, message)


def error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    return encoder.encode(ErrorEnvelope(_detail(error_type, message), request_id))


def render(err: GatewayError, request_id: str | None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body for ``err``."""
    rule = err.rule
    headers = {"Content-Type": "application/json"}
    if rule.should_retry is not None:
        headers["x-should-retry"] = rule.should_retry
    if err.retry_after is not None:
        headers["retry-after"] = str(err.retry_after)
    if err.headers:
        headers.update(err.headers)
    return rule.status, headers, error_body(rule.error_type, err.message, request_id)


def sse_error_event(kind: Kind, message: str) -> bytes:
    """An SSE ``error`` event, for failures after the response has started."""
    return sse_error(TABLE[kind].error_type, message)


def sse_error(error_type: str, message: str) -> bytes:
    """An SSE ``error`` event of any ``error.type``: the envelope without ``request_id``."""
    data = encoder.encode(ErrorEvent(_detail(error_type, message)))
    return b"event: error\ndata: " + data + b"\n\n"


class OAuthError(Exception):
    """An OAuth endpoint's refusal, in RFC 6749's shape ``{"error", "error_description"}``.

    Sign-in endpoints speak OAuth, not the Messages API, so they do not use the
    Anthropic envelope. ``status`` follows what the client expects per error
    (SPEC "Token endpoint"): 400 for the device-flow states, 401 for
    ``invalid_grant`` (the client then asks the person to sign in again), 429
    for rate limits and ``slow_down``, 503 for ``temporarily_unavailable`` (the
    client keeps its refresh token and tries later).
    """

    def __init__(
        self, error: str, status: int = 400, description: str | None = None, *, retry_after: int | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def body(self) -> bytes:
        return encoder.encode(OAuthErrorBody(self.error, self.description or UNSET))
