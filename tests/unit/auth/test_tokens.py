"""Session tokens: Anthropic-compatible shape, rotation, every refusal is a 401."""

import base64
import hashlib
import json

import pytest

from gateway.auth.tokens import EXP_LEEWAY_S, TokenService, bearer_token, key_id
from gateway.errors import GatewayError

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


def forged(header: dict, claims: dict, secret: str = A) -> str:
    """HS256 over any header and claims, signed with a real key (joserfc refuses odd headers)."""
    import hmac

    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    signing = f"{enc(header)}.{enc(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())
    return f"{signing}.{sig.rstrip(b'=').decode()}"


GOOD = {"sub": "u", "iss": ISS, "aud": "claude-gateway", "iat": NOW, "exp": NOW + 3600}


@pytest.mark.parametrize(
    "header, claims",
    [
        ({"alg": "HS256", "kid": ["x"]}, GOOD),
        ({"alg": "HS256", "kid": {"k": key_id(A)}}, GOOD),
        ({"alg": "HS256", "kid": 1}, GOOD),
        ({"alg": "HS256"}, {**GOOD, "sub": ""}),
        ({"alg": "HS256"}, {**GOOD, "sub": "  "}),
        ({"alg": "HS256"}, {**GOOD, "iat": NOW + EXP_LEEWAY_S + 1}),
        ({"alg": "HS256"}, {**GOOD, "nbf": NOW + EXP_LEEWAY_S + 1}),
        ({"alg": "HS256"}, {**GOOD, "nbf": "now"}),
        ({"alg": "HS256"}, {**GOOD, "exp": True}),
    ],
)
def test_malformed_or_not_yet_valid_tokens_are_401(header, claims):
    with pytest.raises(GatewayError) as info:
        TokenService((A,), ISS, 3600).verify(forged(header, claims), NOW)
    assert info.value.rule.status == 401


def test_iat_and_nbf_within_the_leeway_are_accepted():
    claims = {**GOOD, "iat": NOW + EXP_LEEWAY_S, "nbf": NOW + EXP_LEEWAY_S}
    assert TokenService((A,), ISS, 3600).verify(forged({"alg": "HS256", "kid": key_id(A)}, claims), NOW).sub == "u"


def test_revocation_reads_an_expired_token_without_time_checks():
    token = TokenService((A,), ISS, 60).mint(sub="u", sid="fam", now=NOW)
    svc = TokenService((A,), ISS, 60)
    with pytest.raises(GatewayError):
        svc.verify(token, NOW + 3600)
    assert svc.verify_ignoring_time(token).sid == "fam"
    with pytest.raises(GatewayError):
        TokenService((B,), ISS, 60).verify_ignoring_time(token)
