"""gateway.errors: the one table (SPEC §14, §15.1, §10.6) and the shapes it renders."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re

import pytest

import gateway
from gateway import errors
from gateway.errors import (
    FAILOVER_STATUSES,
    FINAL_PREFERENCE,
    OAUTH_TABLE,
    TABLE,
    Answer,
    Fault,
    GatewayError,
    Kind,
    OAuthError,
    Party,
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


def test_oauth_error_keeps_description_and_retry_after_and_takes_its_status_from_the_table():
    err = OAuthError("slow_down", "polling too fast", retry_after=5)
    assert (err.status, err.retry_after, str(err)) == (429, 5, "slow_down")
    assert decoded(err.body()) == {"error": "slow_down", "error_description": "polling too fast"}


# The statuses the sign-in endpoints answer with (SPEC "Token endpoint"): what the client
# does next depends on them, so a change here is a protocol change.
OAUTH_STATUSES = {
    "invalid_request": 400,
    "unsupported_grant_type": 400,
    "authorization_pending": 400,
    "access_denied": 400,
    "expired_token": 400,
    "invalid_grant": 401,  # the client asks the person to sign in again
    "slow_down": 429,  # as Anthropic's gateway answers it
    "temporarily_unavailable": 503,  # the client keeps its refresh token and tries later
}


def test_the_oauth_table_gives_each_error_code_its_status():
    assert {code: rule.status for code, rule in OAUTH_TABLE.items()} == OAUTH_STATUSES


@pytest.mark.parametrize("code", sorted(OAUTH_STATUSES))
def test_an_oauth_error_answers_with_its_table_status(code):
    err = OAuthError(code)
    assert err.status == OAUTH_STATUSES[code] and err.fault is OAUTH_TABLE[code].fault


def test_every_device_poll_outcome_the_token_endpoint_refuses_with_is_in_the_oauth_table():
    from gateway.auth import devicecodes

    source = inspect.getsource(devicecodes)
    outcomes = set(re.findall(r'PollAnswer\("(\w+)"', source)) - {"issue"}
    assert outcomes == {"expired_token", "slow_down", "access_denied", "authorization_pending"}
    assert outcomes <= set(OAUTH_TABLE)


def test_an_oauth_error_code_missing_from_the_table_is_a_bug_not_a_guessed_status():
    with pytest.raises(KeyError):
        OAuthError("invalid_scopes")


def test_oauth_faults_default_to_the_client_except_an_unavailable_sign_in():
    assert {code for code, rule in OAUTH_TABLE.items() if rule.fault is not Party.CLIENT} == {"temporarily_unavailable"}
    assert OAuthError("temporarily_unavailable").fault is Party.STORE
    assert OAuthError("temporarily_unavailable", fault=Party.UPSTREAM).fault is Party.UPSTREAM
    assert OAuthError("temporarily_unavailable", fault=Party.UPSTREAM).status == 503


def test_an_oauth_answer_is_never_cached_and_carries_the_request_id_and_retry_after():
    status, headers, body = OAuthError("slow_down", "too many", retry_after=7).answer("req_1")
    assert status == 429
    assert headers == {
        "Content-Type": "application/json",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "request-id": "req_1",
        "Retry-After": "7",
    }
    assert decoded(body) == {"error": "slow_down", "error_description": "too many"}


# ---------------------------------------------------------------- the error tree


def _kinds_by_party_in_the_docstring() -> dict[Kind, Party]:
    block = errors.__doc__.split("::", 1)[1]
    found: dict[Kind, Party] = {}
    party = None
    for line in block.strip("\n").splitlines():
        words = line.split()
        if not words:
            break
        if not line.startswith("             "):
            party, words = Party(words[0]), words[1:]
        for word in words:
            found[Kind[word]] = party
    return found


def test_the_fault_column_agrees_with_the_groups_in_the_module_docstring():
    assert {kind: rule.fault for kind, rule in TABLE.items()} == _kinds_by_party_in_the_docstring()


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


EXCEPTION_CLASSES = _exception_classes()
# Signals, not errors: like KeyboardInterrupt, they must pass every ``except Exception``.
NOT_ERRORS = {"gateway.devenv.run.AskedStop"}


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_walk_finds_the_exceptions_of_every_layer():
    names = {qualified(c) for c in EXCEPTION_CLASSES}
    assert {
        "gateway.errors.GatewayError",
        "gateway.db.store.StoreUnavailable",
        "gateway.http.spend_gate.SpendRefused",
        "gateway.auth.oidc.IdpUnavailable",
        "gateway.config.load.ConfigError",
    } <= names


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES, ids=qualified)
def test_every_exception_class_in_the_gateway_derives_from_fault(cls):
    if qualified(cls) in NOT_ERRORS:
        assert not issubclass(cls, Exception)
        return
    assert issubclass(cls, Fault)


# Whose fault each exception is, where the class decides it (the rest decide per
# instance, through TABLE or OAUTH_TABLE: see the tests below).
CLASS_FAULTS = {
    "gateway.admin.store.UnknownCursor": Party.CLIENT,
    "gateway.admin.store._Retry": Party.STORE,
    "gateway.app.limits_cli.CliError": Party.CLIENT,
    "gateway.auth.id_tokens.IdTokenInvalid": Party.UPSTREAM,
    "gateway.auth.identity.IdentityRejected": Party.CLIENT,
    "gateway.auth.oidc.IdpUnavailable": Party.UPSTREAM,
    "gateway.auth.oidc.IdpRejected": Party.CLIENT,
    # Google Workspace group lookups (oidc.google_groups): the Directory's.
    "gateway.auth.google_groups.GroupsUnavailable": Party.UPSTREAM,
    "gateway.auth.directory_groups.DirectoryAnswerInvalid": Party.UPSTREAM,
    "gateway.auth.session_store._LostClaim": Party.GATEWAY,
    "gateway.auth.session_store._Ended": Party.CLIENT,
    "gateway.config.load.ConfigError": Party.GATEWAY,
    "gateway.config.load._DuplicateKey": Party.GATEWAY,
    "gateway.db.store.StoreUnavailable": Party.STORE,
    "gateway.db.store.StoreRefused": Party.CLIENT,
    "gateway.errors.Fault": Party.GATEWAY,
    "gateway.http.forms.FormInvalid": Party.CLIENT,
    "gateway.http.messages.RelayedUpstreamError": Party.UPSTREAM,
    "gateway.spend.settlements.Owed": Party.STORE,
    "gateway.upstreams.transport.RefusedAddress": Party.UPSTREAM,
    "gateway.upstreams.transport.UnresolvedTarget": Party.UPSTREAM,
    "gateway.upstreams.outbound.CredentialFailure": Party.UPSTREAM,
    "gateway.upstreams.eventstream.StreamCorrupt": Party.UPSTREAM,
    "gateway.upstreams.bedrock.MalformedReply": Party.UPSTREAM,
    # A proxy variable the gateway cannot use stops boot: the operator's to fix.
    "gateway.upstreams.egress.EgressError": Party.GATEWAY,
    # An OTLP export the relay cannot read (to stamp it, or for a gRPC collector).
    "gateway.telemetry.otlp_body.BodyRejected": Party.CLIENT,
    # An erasure or export naming an email nothing is stored under: the operator's.
    "gateway.admin.privacy.UnknownPerson": Party.CLIENT,
    # oidc.client_assertion key material that cannot sign: the operator's, at boot.
    "gateway.config.client_keys.KeyMaterialError": Party.GATEWAY,
    # load_test_mode on a database with recorded spend stops the boot.
    "gateway.db.store.SpentDatabase": Party.GATEWAY,
    # An x-load-test-user header that is not a small number.
    "gateway.upstreams.load_test.BadLoadTestUser": Party.CLIENT,
    # make image: the image as built fails one of its checks.
    "gateway.devenv.image.CheckFailed": Party.GATEWAY,
}
INSTANCE_FAULTS = {
    "gateway.errors.GatewayError",
    "gateway.errors.OAuthError",
    "gateway.http.spend_gate.SpendRefused",
    "gateway.upstreams.transport.UpstreamFailure",
}


def test_every_fault_is_listed_once_with_whose_fault_it_is():
    faults = {qualified(c) for c in EXCEPTION_CLASSES if issubclass(c, Fault)}
    assert faults == set(CLASS_FAULTS) | INSTANCE_FAULTS
    assert not set(CLASS_FAULTS) & INSTANCE_FAULTS


@pytest.mark.parametrize("cls", [c for c in EXCEPTION_CLASSES if qualified(c) in CLASS_FAULTS], ids=qualified)
def test_the_fault_of_each_class(cls):
    assert cls.fault is CLASS_FAULTS[qualified(cls)]


@pytest.mark.parametrize("kind", list(Kind))
def test_a_gateway_error_takes_its_fault_from_the_table(kind):
    assert GatewayError(kind, "x").fault is TABLE[kind].fault


@pytest.mark.parametrize(
    ("kind", "party"),
    [
        (Kind.UPSTREAM_CONNECT, Party.UPSTREAM),
        (Kind.UPSTREAM_TIMEOUT, Party.UPSTREAM),
        (Kind.UNSAFE_UPSTREAM_ADDRESS, Party.UPSTREAM),
    ],
)
def test_an_upstream_failure_takes_its_fault_from_the_table(kind, party):
    from gateway.upstreams.transport import UpstreamFailure

    failure = UpstreamFailure(kind, "refused")
    assert failure.fault is party and failure.answer("r") is None


def test_a_gateway_error_answers_what_render_writes():
    err = GatewayError(Kind.STORE_UNAVAILABLE, "store down", retry_after=3)
    assert err.answer("req_9") == Answer(*render(err, "req_9"))


def test_faults_that_are_no_answer_of_their_own_answer_none():
    from gateway.auth.oidc import IdpUnavailable
    from gateway.db.store import StoreUnavailable

    assert StoreUnavailable("down").answer("r") is None
    assert IdpUnavailable("down").answer("r") is None
    assert Fault("x").answer("r") is None


@pytest.mark.parametrize(("kind", "party"), [(Kind.OVER_SPEND_LIMIT, Party.CLIENT), (Kind.SPEND_UNCHECKED, Party.STORE)])
def test_a_spend_refusal_is_a_429_billing_error_without_request_id(kind, party):
    from gateway.http.spend_gate import SpendRefused

    err = SpendRefused(kind, "monthly limit reached", {"x-spend": "1"})
    assert err.fault is party
    status, headers, body = err.answer("req_2")
    assert status == 429
    assert headers == {"Content-Type": "application/json", "x-spend": "1"}
    # As Anthropic's gateway answers it: the envelope, without request_id.
    assert decoded(body) == {"type": "error", "error": {"type": "billing_error", "message": "monthly limit reached"}}


def test_a_relayed_upstream_error_answers_the_upstreams_reply_under_our_request_id():
    from gateway.http.messages import RelayedUpstreamError
    from gateway.upstreams.outbound import ClientError

    upstream_headers = {"Content-Type": "application/json", "retry-after": "4"}
    err = RelayedUpstreamError(ClientError(429, upstream_headers, b'{"type":"error"}'))
    assert err.answer("req_3") == (429, {**upstream_headers, "request-id": "req_3"}, b'{"type":"error"}')
    assert upstream_headers == {"Content-Type": "application/json", "retry-after": "4"}  # not mutated


def test_a_cloud_upstream_error_is_answered_in_our_envelope_under_our_request_id():
    from gateway.http.messages import RelayedUpstreamError
    from gateway.upstreams.outbound import ClientError

    err = RelayedUpstreamError(
        ClientError(429, {"Content-Type": "application/json"}, error_type="rate_limit_error", message="upstream rate limit exceeded")
    )
    status, headers, body = err.answer("req_4")
    assert (status, headers["request-id"]) == (429, "req_4")
    assert decoded(body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "upstream rate limit exceeded"},
        "request_id": "req_4",
    }
