"""gateway.errors: the one table (SPEC §14, §15.1, §10.6) and the shapes it renders."""

from __future__ import annotations

import json

import pytest

from gateway.errors import (
    FAILOVER_STATUSES,
    FINAL_PREFERENCE,
    TABLE,
    GatewayError,
    Kind,
    OAuthError,
    error_body,
    render,
    sse_error,
    sse_error_event,
    upstream_status_fails_over,
)

# The status and error.type pairs of SPEC §14.2, row by row.
SPEC_PAIRS = {
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (411, "invalid_request_error"),
    (414, "invalid_request_error"),
    (431, "invalid_request_error"),
    (408, "invalid_request_error"),
    (417, "invalid_request_error"),
    (413, "request_too_large"),
    (429, "billing_error"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (501, "not_supported"),
    (502, "api_error"),
    (503, "api_error"),
    (503, "overloaded_error"),
}
# What an upstream attempt can end in: these fail over and never reach the client
# themselves (all failing is ALL_UPSTREAMS_FAILED).
UPSTREAM_ATTEMPT_KINDS = {
    Kind.UPSTREAM_CONNECT,
    Kind.UPSTREAM_TIMEOUT,
    Kind.UPSTREAM_STATUS,
    Kind.UNSAFE_UPSTREAM_ADDRESS,
}


def decoded(body: bytes) -> dict:
    return json.loads(body.decode("utf-8"))


# ---------------------------------------------------------------- the table


def test_every_kind_has_exactly_one_rule():
    assert set(TABLE) == set(Kind)


@pytest.mark.parametrize(
    "kind", [k for k in Kind if k not in UPSTREAM_ATTEMPT_KINDS and k is not Kind.STREAM_INTERRUPTED]
)
def test_every_answered_kind_uses_a_pair_of_the_spec_table(kind):
    rule = TABLE[kind]
    assert (rule.status, rule.error_type) in SPEC_PAIRS


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        (Kind.AUTH_INVALID, 401, "authentication_error"),
        (Kind.FORBIDDEN, 403, "permission_error"),
        (Kind.INVALID_REQUEST, 400, "invalid_request_error"),
        (Kind.NOT_FOUND, 404, "not_found_error"),
        (Kind.NOT_CONFIGURED, 404, "not_found_error"),
        (Kind.LENGTH_REQUIRED, 411, "invalid_request_error"),
        (Kind.TOO_LARGE, 413, "request_too_large"),
        (Kind.URL_TOO_LONG, 414, "invalid_request_error"),
        (Kind.HEADERS_TOO_LARGE, 431, "invalid_request_error"),
        (Kind.REQUEST_TIMEOUT, 408, "invalid_request_error"),
        (Kind.EXPECTATION_FAILED, 417, "invalid_request_error"),
        (Kind.ALL_UPSTREAMS_FAILED, 502, "api_error"),
        (Kind.STORE_UNAVAILABLE, 503, "api_error"),
        (Kind.SHUTTING_DOWN, 503, "overloaded_error"),
        (Kind.NOT_SUPPORTED, 501, "not_supported"),
        (Kind.INTERNAL, 500, "api_error"),
    ],
)
def test_each_kind_answers_the_row_the_spec_gives_it(kind, status, error_type):
    assert (TABLE[kind].status, TABLE[kind].error_type) == (status, error_type)


def test_should_retry_false_on_every_answer_a_repeat_cannot_change():
    # RETRY-2 (and ERR-10 for 417).
    for kind, rule in TABLE.items():
        if rule.status in {401, 403, 411, 413, 414, 417, 431, 501}:
            assert rule.should_retry == "false", kind


def test_own_5xx_answers_leave_retrying_to_the_client():
    # RETRY-3: no x-should-retry on the gateway's 500, 502 and 503.
    for kind, rule in TABLE.items():
        if rule.status in {500, 502, 503}:
            assert rule.should_retry is None, kind


def test_should_retry_is_either_false_or_absent():
    assert {rule.should_retry for rule in TABLE.values()} <= {"false", None}


def test_only_upstream_attempts_fail_over():
    assert {k for k, rule in TABLE.items() if rule.failover} == UPSTREAM_ATTEMPT_KINDS


def test_an_interrupted_stream_is_an_api_error_inside_the_committed_200():
    rule = TABLE[Kind.STREAM_INTERRUPTED]
    assert (rule.status, rule.error_type) == (200, "api_error")


# ---------------------------------------------------------------- upstream statuses (SPEC §10.6)


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 501, 502, 503, 504, 529, 599])
def test_capacity_credential_and_missing_model_statuses_fail_over(status):
    assert upstream_status_fails_over(status)


@pytest.mark.parametrize("status", [200, 400, 402, 405, 409, 413, 422, 451, 499])
def test_statuses_caused_by_the_request_are_relayed(status):
    # MSG-29: any other 4xx is the request's fault.
    assert not upstream_status_fails_over(status)


def test_final_answer_preference_is_429_then_401_403_then_404_then_501():
    # MSG-30.
    assert FINAL_PREFERENCE == (frozenset({429}), frozenset({401, 403}), frozenset({404}), frozenset({501}))
    preferred = [s for group in FINAL_PREFERENCE for s in group]
    assert len(preferred) == len(set(preferred))
    assert set(preferred) <= FAILOVER_STATUSES
    assert all(upstream_status_fails_over(s) for s in preferred)


# ---------------------------------------------------------------- render and error_body


def test_render_writes_the_envelope_with_the_request_id():
    err = GatewayError(Kind.AUTH_INVALID, "missing bearer token")
    status, headers, body = render(err, "req_0123")
    assert status == 401
    assert headers == {"Content-Type": "application/json", "x-should-retry": "false"}
    assert decoded(body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "missing bearer token"},
        "request_id": "req_0123",
    }


def test_render_sends_no_should_retry_where_the_table_has_none():
    status, headers, _ = render(GatewayError(Kind.INVALID_REQUEST, "bad"), "r")
    assert status == 400 and "x-should-retry" not in headers


def test_render_without_a_request_id_still_has_the_key():
    _, _, body = render(GatewayError(Kind.INTERNAL, "internal error"), None)
    assert decoded(body) == {
        "type": "error",
        "error": {"type": "api_error", "message": "internal error"},
        "request_id": None,
    }


def test_render_adds_retry_after_in_whole_seconds_and_extra_headers():
    err = GatewayError(Kind.STORE_UNAVAILABLE, "store down", retry_after=7, headers={"x-extra": "1"})
    status, headers, _ = render(err, "r")
    assert status == 503
    assert headers == {"Content-Type": "application/json", "retry-after": "7", "x-extra": "1"}


def test_gateway_error_carries_its_rule_and_message():
    err = GatewayError(Kind.TOO_LARGE, "body too large")
    assert err.rule is TABLE[Kind.TOO_LARGE] and str(err) == "body too large" and err.retry_after is None


@pytest.mark.parametrize("message", ["\ud800", "quoted '\udcff' here", "pair \ud83d\ude00 and lone \udfff"])
def test_a_message_with_a_lone_surrogate_still_renders(message):
    _, _, body = render(GatewayError(Kind.INVALID_REQUEST, message), "r")
    got = decoded(body)["error"]["message"]
    assert "\\u" in got or "\\U" in got or "\\x" in got
    assert got == message.encode("utf-8", "backslashreplace").decode("utf-8")


def test_error_body_keeps_printable_text_as_is():
    body = error_body("invalid_request_error", 'model "claude-ü" — not allowed', "r")
    assert decoded(body)["error"]["message"] == 'model "claude-ü" — not allowed'


# ---------------------------------------------------------------- SSE error events (ERR-5)


def sse_data(event: bytes) -> dict:
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    lines = event[:-2].split(b"\n")
    assert len(lines) == 2, "the data must stay on one line"
    return decoded(lines[1].removeprefix(b"data: "))


def test_sse_error_event_uses_the_table_type_and_has_no_request_id():
    data = sse_data(sse_error_event(Kind.STREAM_INTERRUPTED, "upstream stream interrupted"))
    assert data == {"type": "error", "error": {"type": "api_error", "message": "upstream stream interrupted"}}


def test_sse_error_of_any_type_keeps_a_multiline_message_in_one_data_line():
    data = sse_data(sse_error("billing_error", "line one\nline two\r\n"))
    assert data == {"type": "error", "error": {"type": "billing_error", "message": "line one\nline two\r\n"}}


def test_sse_error_with_a_lone_surrogate_still_renders():
    data = sse_data(sse_error("api_error", "cut at '\ud800'"))
    assert data["error"]["message"] == "cut at '\\ud800'"


# ---------------------------------------------------------------- OAuth errors (ERR-4)


def test_oauth_error_body_omits_a_missing_description():
    err = OAuthError("authorization_pending")
    assert err.status == 400 and err.retry_after is None
    assert decoded(err.body()) == {"error": "authorization_pending"}


def test_oauth_error_keeps_status_description_and_retry_after():
    err = OAuthError("slow_down", 429, "polling too fast", retry_after=5)
    assert (err.status, err.retry_after, str(err)) == (429, 5, "slow_down")
    assert decoded(err.body()) == {"error": "slow_down", "error_description": "polling too fast"}
