"""The gateway's error taxonomy and the one table that maps it to the wire.

Every exception the gateway defines derives from :class:`Fault`, which says
whose fault it is (:class:`Party`: the client, an upstream, the store, or the
gateway itself) and, through :meth:`Fault.answer`, what the client is told.
Errors answered in the Anthropic envelope are :class:`GatewayError` carrying a
:class:`Kind`. What a kind means on the wire — HTTP status, Anthropic
``error.type``, retry headers, whether it lets a request fail over to the next
upstream, and whose fault it is — lives in ``TABLE`` and nowhere else, so the
protocol's error rules (SPEC "Errors") can be checked against a single screen
of code. Sign-in endpoints answer in OAuth's shape instead: an
:class:`OAuthError` names its RFC 6749 error code and ``OAUTH_TABLE`` decides
its status. The remaining faults (the store unreachable, an upstream attempt
failing, the IdP refusing, a bad configuration file) are no answer of their
own: the code that catches them turns them into one of the two, and one that
escapes is an internal error.

Kinds, grouped by whose fault they are::

    client   AUTH_INVALID FORBIDDEN INVALID_REQUEST NOT_FOUND NOT_CONFIGURED
             LENGTH_REQUIRED TOO_LARGE URL_TOO_LONG HEADERS_TOO_LARGE REQUEST_TIMEOUT
             EXPECTATION_FAILED OVER_SPEND_LIMIT
    upstream UPSTREAM_CONNECT UPSTREAM_TIMEOUT UPSTREAM_STATUS ALL_UPSTREAMS_FAILED
             STREAM_INTERRUPTED UNSAFE_UPSTREAM_ADDRESS
    store    STORE_UNAVAILABLE SPEND_UNCHECKED
    gateway  NOT_SUPPORTED INTERNAL SHUTTING_DOWN
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from protocol_spec.wire import UNSET, ErrorDetail, ErrorEnvelope, ErrorEvent, OAuthErrorBody, encoder


class Party(enum.Enum):
    """Whose fault an error is: who has to act for the next attempt to succeed."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    STORE = "store"
    GATEWAY = "gateway"


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
    OVER_SPEND_LIMIT = "over_spend_limit"
    UPSTREAM_CONNECT = "upstream_connect"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_STATUS = "upstream_status"
    UNSAFE_UPSTREAM_ADDRESS = "unsafe_upstream_address"
    ALL_UPSTREAMS_FAILED = "all_upstreams_failed"
    STREAM_INTERRUPTED = "stream_interrupted"
    STORE_UNAVAILABLE = "store_unavailable"
    SPEND_UNCHECKED = "spend_unchecked"
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
    fault: Party


# fmt: off
TABLE: dict[Kind, Rule] = {
    Kind.AUTH_INVALID:            Rule(401, "authentication_error",  "false", False, Party.CLIENT),
    Kind.FORBIDDEN:               Rule(403, "permission_error",      "false", False, Party.CLIENT),
    Kind.INVALID_REQUEST:         Rule(400, "invalid_request_error", None,    False, Party.CLIENT),
    Kind.NOT_FOUND:               Rule(404, "not_found_error",       None,    False, Party.CLIENT),
    Kind.NOT_CONFIGURED:          Rule(404, "not_found_error",       None,    False, Party.CLIENT),
    Kind.LENGTH_REQUIRED:         Rule(411, "invalid_request_error", "false", False, Party.CLIENT),
    Kind.TOO_LARGE:               Rule(413, "request_too_large",     "false", False, Party.CLIENT),
    Kind.URL_TOO_LONG:            Rule(414, "invalid_request_error", "false", False, Party.CLIENT),
    Kind.HEADERS_TOO_LARGE:       Rule(431, "invalid_request_error", "false", False, Party.CLIENT),
    # A body that arrived too slowly (gateway/app/connections.py); sending it again may succeed.
    Kind.REQUEST_TIMEOUT:         Rule(408, "invalid_request_error", None,    False, Party.CLIENT),
    # An Expect header other than 100-continue (RFC 9110 §10.1.1); never quoted back.
    Kind.EXPECTATION_FAILED:      Rule(417, "invalid_request_error", "false", False, Party.CLIENT),
    # A spend limit reached (SPEC §19); answered in Anthropic's own shape, without request_id.
    Kind.OVER_SPEND_LIMIT:        Rule(429, "billing_error",         None,    False, Party.CLIENT),
    Kind.UPSTREAM_CONNECT:        Rule(502, "api_error",             None,    True,  Party.UPSTREAM),
    Kind.UPSTREAM_TIMEOUT:        Rule(504, "api_error",             None,    True,  Party.UPSTREAM),
    Kind.UPSTREAM_STATUS:         Rule(502, "api_error",             None,    True,  Party.UPSTREAM),
    Kind.UNSAFE_UPSTREAM_ADDRESS: Rule(502, "api_error",             None,    True,  Party.UPSTREAM),
    Kind.ALL_UPSTREAMS_FAILED:    Rule(502, "api_error",             None,    False, Party.UPSTREAM),
    Kind.STREAM_INTERRUPTED:      Rule(200, "api_error",             None,    False, Party.UPSTREAM),
    Kind.STORE_UNAVAILABLE:       Rule(503, "api_error",             None,    False, Party.STORE),
    # The spend store could not judge a capped request (enforcement fails closed, or too many
    # settlements are owed): the answer of a reached limit, but the store is to blame.
    Kind.SPEND_UNCHECKED:         Rule(429, "billing_error",         None,    False, Party.STORE),
    Kind.NOT_SUPPORTED:           Rule(501, "not_supported",         "false", False, Party.GATEWAY),
    Kind.SHUTTING_DOWN:           Rule(503, "overloaded_error",      None,    False, Party.GATEWAY),
    Kind.INTERNAL:                Rule(500, "api_error",             None,    False, Party.GATEWAY),
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


class Answer(NamedTuple):
    """Status, headers and body of the response an error is answered with."""

    status: int
    headers: dict[str, str]
    body: bytes


class Fault(Exception):
    """The root of every exception the gateway defines.

    ``fault`` says whose fault it is. :meth:`answer` is the response the client
    gets for it, or None for faults that are no answer of their own: the code
    that catches one turns it into an answer, and one that escapes a handler
    is an internal error. Subclasses whose fault does not depend on the
    instance set ``fault`` as a class attribute.
    """

    fault: Party = Party.GATEWAY

    def answer(self, request_id: str | None) -> Answer | None:
        return None


class GatewayError(Fault):
    """An error the gateway answers itself, in the Anthropic envelope; ``TABLE`` decides how."""

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
        self.fault = TABLE[kind].fault

    @property
    def rule(self) -> Rule:
        return TABLE[self.kind]

    def answer(self, request_id: str | None) -> Answer:
        return Answer(*render(self, request_id))


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


def event_body(error_type: str, message: str) -> bytes:
    """The envelope without ``request_id``: an SSE error event's data, or a body in Anthropic's own shape."""
    return encoder.encode(ErrorEvent(_detail(error_type, message)))


def sse_error(error_type: str, message: str) -> bytes:
    """An SSE ``error`` event of any ``error.type``: the envelope without ``request_id``."""
    return b"event: error\ndata: " + event_body(error_type, message) + b"\n\n"


class OAuthRule(NamedTuple):
    status: int
    fault: Party


# RFC 6749 §5.2 and RFC 8628 §3.5 error codes, with the status the client expects
# for each (SPEC "Token endpoint"). 400 for the device-flow states; 401 for
# ``invalid_grant``, after which the client asks the person to sign in again;
# 429 for ``slow_down``, as Anthropic's gateway answers it (the client adds 5 s to
# its polling interval either way); 503 for ``temporarily_unavailable``, after
# which the client keeps its refresh token and tries later.
# fmt: off
OAUTH_TABLE: dict[str, OAuthRule] = {
    "invalid_request":         OAuthRule(400, Party.CLIENT),
    "unsupported_grant_type":  OAuthRule(400, Party.CLIENT),
    "authorization_pending":   OAuthRule(400, Party.CLIENT),
    "access_denied":           OAuthRule(400, Party.CLIENT),
    "expired_token":           OAuthRule(400, Party.CLIENT),
    "invalid_grant":           OAuthRule(401, Party.CLIENT),
    "slow_down":               OAuthRule(429, Party.CLIENT),
    # Whatever kept sign-in from answering: the store by default; a raise site that
    # knows better (the IdP, say) names the party.
    "temporarily_unavailable": OAuthRule(503, Party.STORE),
}
# fmt: on


class OAuthError(Fault):
    """An OAuth endpoint's refusal, in RFC 6749's shape ``{"error", "error_description"}``.

    Sign-in endpoints speak OAuth, not the Messages API, so they do not use the
    Anthropic envelope. The status comes from ``OAUTH_TABLE``; an error code
    missing there is a bug, refused here rather than answered with a guess.
    """

    def __init__(
        self,
        error: str,
        description: str | None = None,
        *,
        retry_after: int | None = None,
        fault: Party | None = None,
    ) -> None:
        super().__init__(error)
        rule = OAUTH_TABLE[error]
        self.error = error
        self.status = rule.status
        self.description = description
        self.retry_after = retry_after
        self.fault = fault or rule.fault

    def body(self) -> bytes:
        return encoder.encode(OAuthErrorBody(self.error, self.description or UNSET))

    def answer(self, request_id: str | None) -> Answer:
        # OAuth responses carry tokens or refusals of them: never cached (RFC 6749 §5.1).
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}
        if request_id is not None:
            headers["request-id"] = request_id
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return Answer(self.status, headers, self.body())
