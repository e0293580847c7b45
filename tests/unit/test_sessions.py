"""Session tokens: Anthropic-compatible shape, rotation, every refusal is a 401."""

import base64
import hashlib
import json

import pytest

from gateway.errors import GatewayError
from gateway.sessions import EXP_LEEWAY_S, TokenService, bearer_token, key_id

A = "a" * 40
B = "b" * 40
ISS = "https://gw.example.com"
NOW = 1_800_000_000


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def header_of(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_token_shape_matches_anthropics_gateway():
    t = TokenService((A,), ISS, 3600).mint(sub="u1", email="e@x", name="E", groups=["g"], sid="s1", now=NOW)
    h, c = header_of(t), claims_of(t)
    assert h == {"alg": "HS256", "typ": "JWT", "kid": hashlib.sha256(A.encode()).hexdigest()[:16]}
    assert c["iss"] == ISS and c["aud"] == "claude-gateway" and c["exp"] == NOW + 3600
    assert (c["sub"], c["email"], c["name"], c["groups"], c["sid"]) == ("u1", "e@x", "E", ["g"], "s1")


def test_rotation_old_secret_verifies_while_listed():
    old = TokenService((A,), ISS, 3600).mint(sub="u", now=NOW)
    assert TokenService((B, A), ISS, 3600).verify(old, NOW).sub == "u"
    with pytest.raises(GatewayError):
        TokenService((B,), ISS, 3600).verify(old, NOW)


@pytest.mark.parametrize("mutate", ["signature", "iss", "aud", "kid", "alg_none", "garbage", "expired"])
def test_refusals_are_auth_errors_without_retry(mutate):
    svc = TokenService((A,), ISS, 3600)
    token = svc.mint(sub="u", now=NOW)
    now = NOW
    if mutate == "signature":
        token = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    elif mutate == "iss":
        token = TokenService((A,), "https://other", 3600).mint(sub="u", now=NOW)
    elif mutate == "aud":
        import joserfc.jwt as jwt
        from joserfc.jwk import OctKey

        token = jwt.encode({"alg": "HS256", "kid": key_id(A)}, {**claims_of(token), "aud": "x"}, OctKey.import_key(A.encode()))
    elif mutate == "kid":
        token = TokenService((B,), ISS, 3600).mint(sub="u", now=NOW)
    elif mutate == "alg_none":
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        token = enc({"alg": "none", "typ": "JWT"}) + "." + enc(claims_of(token)) + "."
    elif mutate == "garbage":
        token = "not.a.jwt"
    elif mutate == "expired":
        now = NOW + 3600 + EXP_LEEWAY_S + 1
    with pytest.raises(GatewayError) as info:
        svc.verify(token, now)
    assert info.value.rule.status == 401
    assert info.value.rule.error_type == "authentication_error"
    assert info.value.rule.should_retry == "false"


def test_cached_token_still_expires():
    svc = TokenService((A,), ISS, 60)
    token = svc.mint(sub="u", now=NOW)
    assert svc.verify(token, NOW).sub == "u"
    assert svc.verify(token, NOW + 60 + EXP_LEEWAY_S).sub == "u"  # within leeway
    with pytest.raises(GatewayError):
        svc.verify(token, NOW + 61 + EXP_LEEWAY_S)


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer abc") == "abc"
    for bad in (None, "", "Basic abc", "Bearer ", "abc"):
        with pytest.raises(GatewayError):
            bearer_token(bad)
