"""Property-based checks of every parser that reads what a client sent (issue 12).

Each parser either returns a value that is safe to route, store and log, or
refuses with the one error kind its endpoint answers; no input makes it raise
anything else. Bounded example counts keep the whole file to a few seconds.
The parsers of upstream replies, config and keys have their own property files
beside their unit tests (``test_*_properties.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from gateway.admin.requests import decode_cursor, parse_effective_query, parse_limit_request, parse_list_query
from gateway.auth.id_tokens import IdTokenInvalid, check_claims, signing_kid
from gateway.auth.rate_window import wait_before_next
from gateway.auth.tokens import Principal, TokenService, bearer_token, key_id
from gateway.client_text import unprintable
from gateway.errors import GatewayError, Kind
from gateway.http.forms import FormInvalid, parse_form
from gateway.upstreams.bodyview import MAX_MODEL_CHARS, decode_view

# Example counts come from the hypothesis profile (tests/conftest.py: small in `make
# test`, large under `make fuzz`); no example database, so runs write nothing.
FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "s" * 40
ISSUER = "https://gw.example.com"
NOW = 1_800_000_000

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def refused_as(kind: Kind, call) -> object:
    """The result of ``call()``, or None when it refused with ``kind``; anything else fails."""
    try:
        return call()
    except GatewayError as err:
        assert err.kind is kind, err.kind
        return None


# ---------------------------------------------------------------- body view


@FAST
@given(st.binary(max_size=300))
def test_body_view_of_any_bytes_is_a_view_or_a_400(body):
    refused_as(Kind.INVALID_REQUEST, lambda: decode_view(body))


@FAST
@given(st.dictionaries(st.sampled_from(["model", "stream", "max_tokens", "tags", "messages"]), json_values), st.text())
def test_a_routed_model_is_always_printable_and_bounded(doc, model):
    doc["model"] = model
    view = refused_as(Kind.INVALID_REQUEST, lambda: decode_view(json.dumps(doc).encode()))
    if view is not None:
        assert view.model == model and len(model) <= MAX_MODEL_CHARS and not unprintable(model)


# ---------------------------------------------------------------- forms


@FAST
@given(st.binary(max_size=200))
def test_a_form_of_any_bytes_is_fields_of_printable_text_or_refused(body):
    try:
        fields = parse_form(body)
    except FormInvalid:
        return
    assert all("\x00" not in k + v and "\x7f" not in k + v for k, v in fields.items())


printable = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)


@FAST
@given(st.dictionaries(printable, printable, max_size=10))
def test_forms_round_trip(fields):
    assert parse_form(urlencode(fields).encode()) == fields


# ---------------------------------------------------------------- session tokens


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, claims: bytes) -> str:
    signing = f"{b64(header)}.{b64(claims)}"
    return f"{signing}.{b64(hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest())}"


SERVICE = TokenService((SECRET,), ISSUER, 3600)


@FAST
@given(st.text(max_size=200))
def test_any_text_as_a_token_is_a_401(token):
    assert refused_as(Kind.AUTH_INVALID, lambda: SERVICE.verify(token, NOW)) is None


@FAST
@given(st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), max_size=80))
def test_tokens_with_lone_surrogates_are_a_401(token):
    # aiohttp hands undecodable header bytes over as lone surrogates.
    assert refused_as(Kind.AUTH_INVALID, lambda: SERVICE.verify(token + ".\udcff.x", NOW)) is None


@FAST
@given(st.text(max_size=60))
def test_any_authorization_header_is_a_token_or_a_401(header):
    refused_as(Kind.AUTH_INVALID, lambda: bearer_token(header))


claim_overrides = st.dictionaries(
    st.sampled_from(["sub", "iss", "aud", "iat", "exp", "nbf", "groups", "email", "sid"]), json_values, max_size=3
)


@FAST
@given(json_values, claim_overrides, st.sampled_from([None, key_id(SECRET)]))
def test_tokens_we_signed_over_any_header_and_claims_are_principals_or_401(header_extra, overrides, kid):
    # Signed with the real key, so the checks after the signature are what is exercised.
    header = {"alg": "HS256", "kid": header_extra if kid is None else kid}
    claims = {"sub": "u", "iss": ISSUER, "aud": "claude-gateway", "iat": NOW, "exp": NOW + 60, **overrides}
    token = signed(json.dumps(header).encode(), json.dumps(claims).encode())
    principal = refused_as(Kind.AUTH_INVALID, lambda: TokenService((SECRET,), ISSUER, 3600).verify(token, NOW))
    if principal is not None:
        assert isinstance(principal, Principal) and principal.sub.strip()


@FAST
@given(st.binary(max_size=80), st.binary(max_size=80))
def test_tokens_we_signed_over_any_bytes_are_401_unless_they_are_claims(header, claims):
    token = signed(header, claims)
    refused_as(Kind.AUTH_INVALID, lambda: TokenService((SECRET,), ISSUER, 3600).verify(token, NOW))


# ---------------------------------------------------------------- id_tokens from the IdP


@FAST
@given(st.text(max_size=200) | json_values.map(lambda h: f"{b64(json.dumps(h).encode())}.e30.sig"))
def test_any_id_token_header_is_a_kid_or_refused(token):
    try:
        kid = signing_kid(token, "RS256")
    except IdTokenInvalid:
        return
    assert kid is None or isinstance(kid, str)


IDP = {"client_id": "gatehouse", "additional_authorized_parties": (), "clock_skew_seconds": 30}


@FAST
@given(st.dictionaries(st.sampled_from(["iss", "aud", "azp", "exp", "iat", "nbf", "nonce"]), json_values))
def test_any_id_token_claims_pass_or_are_refused(claims):
    from types import SimpleNamespace

    try:
        check_claims(claims, SimpleNamespace(**IDP), issuer="https://idp", nonce="n", now=NOW)
    except IdTokenInvalid:
        pass


# ---------------------------------------------------------------- admin requests


limit_docs = st.fixed_dictionaries(
    {
        "scope": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"type": st.sampled_from(["user", "rbac_group", "organization"])},
                optional={"user_id": json_values | st.text(), "rbac_group_id": json_values | st.text()},
            ),
        ),
        "amount": st.none() | st.from_regex(r"[0-9]{1,16}", fullmatch=True) | json_values,
        "period": st.sampled_from(["daily", "weekly", "monthly"]) | json_values,
    },
    optional={
        "reason": st.text() | json_values,
        "pooled_limit_enabled": st.booleans() | json_values,
        "pooled_monthly_credit_limit": st.from_regex(r"[0-9]{1,5}", fullmatch=True) | json_values,
        "currency": st.just("USD") | json_values,
    },
)


@FAST
@given(limit_docs)
def test_limit_requests_are_valid_or_a_400(doc):
    req = refused_as(Kind.INVALID_REQUEST, lambda: parse_limit_request(json.dumps(doc).encode()))
    if req is not None:
        assert not unprintable(req.scope_id) and (req.reason is None or not unprintable(req.reason))


@FAST
@given(st.binary(max_size=200))
def test_limit_request_of_any_bytes_is_valid_or_a_400(body):
    refused_as(Kind.INVALID_REQUEST, lambda: parse_limit_request(body))


query_keys = st.sampled_from(["limit", "scope_type", "after_id", "before_id", "user_ids[]", "period[]", "sort", "q", "page"])


@FAST
@given(st.lists(st.tuples(query_keys, st.text(max_size=30)), max_size=6))
def test_admin_queries_are_parsed_or_a_400(pairs):
    query = MultiDict(pairs)
    eq = refused_as(Kind.INVALID_REQUEST, lambda: parse_effective_query(query))
    if eq is not None:
        assert all(not unprintable(u) for u in eq.user_ids or ()) and not unprintable(eq.q or "")
    refused_as(Kind.INVALID_REQUEST, lambda: parse_list_query(query))


@FAST
@given(st.text(max_size=80) | json_values.map(lambda v: b64(json.dumps({"f": "x", "k": v}).encode())))
def test_any_cursor_is_a_position_or_a_400(token):
    refused_as(Kind.INVALID_REQUEST, lambda: decode_cursor(token, "x"))


# ---------------------------------------------------------------- sign-in rate window


@FAST
@given(
    st.lists(st.integers(min_value=0, max_value=3_000), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=900),
)
def test_no_window_ever_holds_more_than_the_limit(offsets, limit, window):
    admitted: list[tuple[float, int]] = []
    for at in sorted(offsets):
        wait = wait_before_next(admitted, at, window, limit)
        if wait is None:
            admitted.append((at, 1))
        else:
            assert wait >= 1
            # After the wait (and nothing admitted meanwhile) there is room.
            assert wait_before_next(admitted, at + wait, window, limit) is None
    times = [t for t, _ in admitted]
    for start in times:
        assert sum(1 for t in times if start <= t < start + window) <= limit
