"""sigv4.sign: what it signs is what goes on the wire, and the fake AWS verifier
(botocore recomputing the signature from the keys) accepts it and nothing tampered.
role_session_name: valid RoleSessionNames, distinct for distinct developers."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from gateway.upstreams.outbound import Outbound, Shape
from gateway.upstreams.sigv4 import role_session_name, sign
from protocol_spec.fakes.aws_auth import AwsKeyring, SignatureRejected, verify_sigv4

NOW = datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC)
KEY, SECRET, TOKEN = "AKIAFAKEKEY000000001", "fake/secret+key=0001", "session-token-0001"
ARN_URL = (
    "http://127.0.0.1:8123/model/"
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Flabprofile01/invoke"
)
BODY = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[]}'
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "anthropic-version": "2023-06-01",
}
VALID_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")


def _keyring(token: str | None = None, expires_at: datetime | None = None) -> AwsKeyring:
    keyring = AwsKeyring()
    keyring.add(KEY, SECRET, token, expires_at)
    return keyring


def _signed(url: str = ARN_URL, body: bytes = BODY, token: str | None = None, **kw) -> Outbound:
    creds = ReadOnlyCredentials(KEY, kw.pop("secret", SECRET), token, None)
    out = Outbound(url, dict(kw.pop("headers", HEADERS)), body, Shape.EVENT_STREAM)
    return sign(
        out, service=kw.pop("service", "bedrock"), region=kw.pop("region", "us-east-1"), creds=creds, now=NOW
    )


def _verify(out: Outbound, keyring: AwsKeyring | None = None, now: datetime = NOW, **kw) -> str:
    url = URL(out.url)
    return verify_sigv4(
        "POST",
        url.raw_path_qs,
        list(kw.pop("headers", out.headers).items()),
        kw.pop("body", out.body),
        keyring=keyring if keyring is not None else _keyring(),
        service=kw.pop("service", "bedrock"),
        region=kw.pop("region", "us-east-1"),
        now=now,
    )


def _refusal(out: Outbound, **kw) -> str:
    with pytest.raises(SignatureRejected) as caught:
        _verify(out, **kw)
    return caught.value.error_type


# -- what is signed --------------------------------------------------------


def test_signed_request_verifies_and_names_its_key():
    assert _verify(_signed()) == KEY


def test_signature_headers_are_the_ones_sent():
    out = _signed()
    assert out.headers["host"] == "127.0.0.1:8123"  # the port, as aiohttp writes it
    assert out.headers["x-amz-date"] == "20260301T123045Z"
    assert out.headers["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest()
    assert "x-amz-security-token" not in out.headers
    auth = out.headers["authorization"]
    assert auth.startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAFAKEKEY000000001/20260301/us-east-1/bedrock/aws4_request"
    )
    assert "SignedHeaders=accept;anthropic-version;content-type;host;x-amz-content-sha256;x-amz-date," in auth
    assert out.shape is Shape.EVENT_STREAM and out.body == BODY


def test_default_https_port_is_left_out_of_host():
    out = _signed("https://bedrock-runtime.us-east-1.amazonaws.com:443/model/x/invoke")
    assert out.headers["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    assert _verify(out) == KEY


def test_arn_keeps_its_encoded_slash_and_colons_are_sent_literally():
    out = _signed(ARN_URL)
    assert "application-inference-profile%2Flabprofile01" in out.url
    colon = _signed("http://127.0.0.1:8123/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke")
    # yarl (aiohttp) sends %3A as ":", so that is what was signed.
    assert colon.url.endswith("/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/invoke")
    assert _verify(colon) == KEY
    for url in (out.url, colon.url):
        assert str(URL(url)) == url  # aiohttp re-parsing the signed URL changes nothing


def test_session_token_is_sent_and_signed():
    out = _signed(token=TOKEN)
    assert out.headers["x-amz-security-token"] == TOKEN
    assert "x-amz-security-token" in out.headers["authorization"]
    assert _verify(out, _keyring(TOKEN)) == KEY
    assert _refusal(out, keyring=_keyring("another-token")) == "UnrecognizedClientException"


def test_signing_again_replaces_the_previous_signature():
    first = _signed(token=TOKEN)
    again = sign(
        first._replace(headers={**first.headers, "X-Amz-Date": "19990101T000000Z", "Host": "elsewhere"}),
        service="bedrock",
        region="us-east-1",
        creds=ReadOnlyCredentials(KEY, SECRET, TOKEN, None),
        now=NOW + timedelta(seconds=5),
    )
    assert [k for k in again.headers if k.lower() == "x-amz-date"] == ["x-amz-date"]
    assert [k for k in again.headers if k.lower() == "host"] == ["host"]
    assert _verify(again, _keyring(TOKEN)) == KEY


def test_other_services_sign_under_their_own_name():
    out = _signed(
        "https://aws-external-anthropic.us-west-2.api.aws/v1/messages",
        service="aws-external-anthropic",
        region="us-west-2",
    )
    assert _verify(out, service="aws-external-anthropic", region="us-west-2") == KEY
    assert _refusal(out, service="bedrock", region="us-west-2") == "InvalidSignatureException"


# -- what the verifier refuses ---------------------------------------------


def test_tampered_body_is_refused():
    out = _signed()
    assert _refusal(out, body=BODY.replace(b"16", b"99")) == "InvalidSignatureException"


def test_tampered_body_with_matching_hash_header_is_refused():
    out = _signed()
    forged = BODY.replace(b"16", b"99")
    headers = {**out.headers, "x-amz-content-sha256": hashlib.sha256(forged).hexdigest()}
    assert _refusal(out, body=forged, headers=headers) == "InvalidSignatureException"


def test_tampered_signed_header_is_refused():
    out = _signed()
    assert (
        _refusal(out, headers={**out.headers, "anthropic-version": "2099-01-01"})
        == "InvalidSignatureException"
    )


def test_unsigned_header_added_later_does_not_matter():
    out = _signed()
    assert _verify(out, headers={**out.headers, "user-agent": "something/1.0"}) == KEY


def test_tampered_path_is_refused():
    out = _signed()
    moved = out._replace(url=out.url.replace("labprofile01", "labprofile02"))
    assert _refusal(moved) == "InvalidSignatureException"


def test_wrong_secret_unknown_key_and_wrong_region_are_refused():
    assert _refusal(_signed(secret="not-the-secret")) == "InvalidSignatureException"
    assert _refusal(_signed(), keyring=AwsKeyring()) == "UnrecognizedClientException"
    assert _refusal(_signed(region="eu-west-1")) == "InvalidSignatureException"


def test_expired_session_token_is_refused():
    keyring = _keyring(TOKEN, expires_at=NOW - timedelta(seconds=1))
    assert _refusal(_signed(token=TOKEN), keyring=keyring) == "ExpiredTokenException"
    keyring = _keyring(TOKEN, expires_at=NOW + timedelta(seconds=1))
    assert _verify(_signed(token=TOKEN), keyring) == KEY


def test_signature_too_far_from_the_verifier_clock_is_refused():
    out = _signed()
    assert _verify(out, now=NOW + timedelta(minutes=4)) == KEY
    assert _refusal(out, now=NOW + timedelta(minutes=6)) == "InvalidSignatureException"


def test_missing_authorization_is_refused():
    out = _signed()
    headers = {k: v for k, v in out.headers.items() if k != "authorization"}
    assert _refusal(out, headers=headers) == "MissingAuthenticationTokenException"


# -- RoleSessionName -------------------------------------------------------


def test_session_name_keeps_allowed_characters():
    assert role_session_name("alice.smith+ops@example.com") == "alice.smith+ops@example.com"
    assert role_session_name("auth0|5f7c_9,A-b") == "auth0=7C5f7c_9,A-b"


def test_session_name_escapes_each_utf8_byte_in_uppercase_hex():
    assert role_session_name("zoë ü") == "zo=C3=AB=20=C3=BC"
    assert role_session_name("a=b") == "a=3Db"  # "=" itself is escaped: the encoding is reversible
    assert role_session_name("😀x") == "=F0=9F=98=80x"


def test_session_name_at_the_limit_is_kept_and_over_it_is_hashed():
    exact = "a" * 64
    assert role_session_name(exact) == exact
    long = role_session_name("a" * 65)
    assert len(long) <= 64 and VALID_NAME.fullmatch(long)
    assert long.startswith("a" * 30)
    assert role_session_name("a" * 65) == long  # deterministic


def test_long_names_sharing_a_prefix_stay_distinct():
    base = "developer.with.a.very.long.name.at.some.example.organisation"
    names = {role_session_name(f"{base}{i}@example.com") for i in range(200)}
    assert len(names) == 200


def test_hashed_prefix_never_cuts_an_escape():
    name = role_session_name("é" * 40)  # 240 characters once escaped
    prefix = name.split("=_")[0]
    assert re.fullmatch(r"(=C3=A9)+", prefix)
    assert len(name) <= 64


def test_short_names_are_padded_to_the_minimum():
    assert role_session_name("7") == "7=_"
    assert role_session_name("") == "=_"
    assert VALID_NAME.fullmatch(role_session_name("7"))


def test_escaped_form_of_one_value_is_not_another_values_name():
    # The plain encoding of "a=3D" must not collide with the encoding of "a=".
    assert role_session_name("a=") != role_session_name("a=3D")
    hashed = role_session_name("x" * 80)
    assert role_session_name(hashed) != hashed


@given(st.text(max_size=120), st.text(max_size=120))
def test_session_names_are_valid_and_distinct(first, second):
    a, b = role_session_name(first), role_session_name(second)
    assert VALID_NAME.fullmatch(a), a
    if first != second:
        assert a != b
