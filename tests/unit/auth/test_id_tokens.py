"""gateway.auth.id_tokens: header, signature, claims and key choice, with keys made here by joserfc."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.auth.id_tokens import (
    MAX_ID_TOKEN_CHARS,
    IdTokenInvalid,
    check_claims,
    import_signing_keys,
    pick_key,
    signed_claims,
    signing_kid,
)
from gateway.config.schema import Oidc

ISSUER = "https://idp.example.com"
CLIENT_ID = "gatehouse"
NOW = 1_800_000_000
SKEW = 30
CFG = Oidc(
    issuer=ISSUER, client_id=CLIENT_ID, clock_skew_seconds=SKEW, additional_authorized_parties=("cli-helper",)
)

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
RSA_OTHER = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
OKP = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
SIGNERS = {"RS256": RSA, "ES256": EC, "Ed25519": OKP}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def token(key: Any, alg: str = "RS256", payload: Any = None, **header: Any) -> str:
    head = {"alg": alg, "kid": key.kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    data = json.dumps(payload if payload is not None else good_claims()).encode()
    return jws.serialize_compact(head, data, key, algorithms=[alg])


def good_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "user-1",
        "exp": NOW + 300,
        "iat": NOW - 5,
        "nonce": "n-123",
    }
    for name, value in changes.items():
        if value is ...:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


def refused(call) -> str:
    with pytest.raises(IdTokenInvalid) as caught:
        call()
    return caught.value.reason


def check(
    claims: dict[str, Any], *, nonce: str | None = "n-123", issuer: str = ISSUER, now: float = NOW
) -> None:
    check_claims(claims, CFG, issuer=issuer, nonce=nonce, now=now)


def public_jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


# ---------------------------------------------------------------- the whole check, as oidc.py runs it


@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_a_good_token_passes_every_step(alg):
    raw = token(SIGNERS[alg], alg)
    keys = import_signing_keys(public_jwks(RSA, RSA_OTHER, EC, OKP))
    kid = signing_kid(raw, alg)
    key = pick_key(keys, kid, alg)
    claims = signed_claims(raw, key, alg)
    check(claims)
    assert kid == SIGNERS[alg].kid and claims["sub"] == "user-1"


# ---------------------------------------------------------------- header


def test_the_kid_is_read_and_may_be_absent():
    assert signing_kid(token(RSA), "RS256") == "rsa-1"
    assert signing_kid(token(RSA, kid=None), "RS256") is None


@pytest.mark.parametrize(
    ("header_alg", "configured"),
    [
        ("RS256", "ES256"),  # not the configured algorithm
        ("RS512", "RS256"),
        ("HS256", "HS256"),  # HMAC is never accepted, even when configured
        ("none", "none"),
    ],
)
def test_only_the_configured_public_key_algorithm_is_accepted(header_alg, configured):
    raw = f"{b64(json.dumps({'alg': header_alg}).encode())}.{b64(b'{}')}.sig"
    assert refused(lambda: signing_kid(raw, configured)) == "algorithm not allowed"


def test_hmac_keyed_with_the_rsa_public_key_is_refused():
    # The classic confusion: an HS256 token whose secret is the published RSA key.
    public_pem = RSA.as_pem(private=False)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa-1'}).encode())}.{b64(b'{}')}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(mac)}"
    assert refused(lambda: signing_kid(forged, "RS256")) == "algorithm not allowed"
    assert refused(lambda: signed_claims(forged, RSA, "RS256")) == "bad signature"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",  # not base64
        f"{b64(b'not json')}.e30.sig",
        f"{b64(b'[1]')}.e30.sig",  # JSON, not an object
        f"{b64(json.dumps({'alg': 'RS256', 'kid': 5}).encode())}.e30.sig",  # kid not a string
        f"{b64(json.dumps({'alg': 'RS256', 'crit': ['exp']}).encode())}.e30.sig",  # an extension we do not know
        f"{b64(json.dumps({'alg': 'RS256'}).encode())}.{'A' * MAX_ID_TOKEN_CHARS}.sig",  # too long
    ],
)
def test_malformed_headers_are_refused(raw):
    assert refused(lambda: signing_kid(raw, "RS256")) == "malformed token"


def test_a_token_within_the_size_limit_is_read():
    head = b64(json.dumps({"alg": "RS256"}).encode())
    raw = f"{head}.{'A' * (MAX_ID_TOKEN_CHARS - len(head) - 5)}.sig"
    assert len(raw) == MAX_ID_TOKEN_CHARS and signing_kid(raw, "RS256") is None


# ---------------------------------------------------------------- signature


def test_a_token_signed_by_another_key_is_refused():
    assert refused(lambda: signed_claims(token(RSA_OTHER), RSA, "RS256")) == "bad signature"


def test_a_changed_payload_breaks_the_signature():
    head, _, sig = token(RSA).split(".")
    forged = f"{head}.{b64(json.dumps(good_claims(sub='admin')).encode())}.{sig}"
    assert refused(lambda: signed_claims(forged, RSA, "RS256")) == "bad signature"


def test_a_signature_is_checked_only_under_the_configured_algorithm():
    assert refused(lambda: signed_claims(token(RSA, "RS256"), RSA, "RS384")) == "bad signature"


@pytest.mark.parametrize("payload", [[1, 2], "text", 42])
def test_a_signed_payload_that_is_not_a_claims_object_is_refused(payload):
    raw = jws.serialize_compact({"alg": "ES256"}, json.dumps(payload).encode(), EC)
    assert refused(lambda: signed_claims(raw, EC, "ES256")) == "malformed token"


def test_a_signed_payload_that_is_not_json_is_refused():
    raw = jws.serialize_compact({"alg": "ES256"}, b"\xff not json", EC)
    assert refused(lambda: signed_claims(raw, EC, "ES256")) == "malformed token"


# ---------------------------------------------------------------- claims: issuer, audience, azp


def test_good_claims_pass():
    check(good_claims())


def test_the_issuer_must_match_exactly():
    assert refused(lambda: check(good_claims(iss=ISSUER + "/"))) == "wrong issuer"
    assert refused(lambda: check(good_claims(iss=...))) == "wrong issuer"
    # Only Google has a documented second spelling.
    assert refused(lambda: check(good_claims(iss="idp.example.com"))) == "wrong issuer"


def test_googles_issuer_is_accepted_in_either_spelling():
    google = "https://accounts.google.com"
    for iss in (google, "accounts.google.com"):
        check(good_claims(iss=iss), issuer=google)


@pytest.mark.parametrize("aud", [..., None, "someone-else", [], ["someone-else"], 5, {"gatehouse": True}])
def test_the_audience_must_include_us(aud):
    assert refused(lambda: check(good_claims(aud=aud))) == "wrong audience"


def test_one_audience_needs_no_azp_but_an_azp_must_be_trusted():
    check(good_claims(aud=[CLIENT_ID]))
    check(good_claims(azp=CLIENT_ID))
    check(good_claims(azp="cli-helper"))
    assert refused(lambda: check(good_claims(azp="someone-else"))) == "wrong azp"
    assert refused(lambda: check(good_claims(azp=5))) == "wrong azp"


def test_several_audiences_need_an_azp_we_trust():
    several = [CLIENT_ID, "other-app"]
    assert refused(lambda: check(good_claims(aud=several))) == "wrong azp"
    assert refused(lambda: check(good_claims(aud=several, azp="other-app"))) == "wrong azp"
    check(good_claims(aud=several, azp=CLIENT_ID))
    check(good_claims(aud=several, azp="cli-helper"))


# ---------------------------------------------------------------- claims: times (within the skew)


def test_expiry_allows_the_skew_and_not_a_second_more():
    check(good_claims(exp=NOW - SKEW))
    assert refused(lambda: check(good_claims(exp=NOW - SKEW - 1))) == "expired"
    assert refused(lambda: check(good_claims(exp=NOW - SKEW - 0.5))) == "expired"


def test_issued_in_the_future_allows_the_skew_and_not_a_second_more():
    check(good_claims(iat=NOW + SKEW))
    assert refused(lambda: check(good_claims(iat=NOW + SKEW + 1))) == "issued in the future"


def test_not_before_is_optional_and_allows_the_skew():
    check(good_claims(nbf=NOW + SKEW))
    assert refused(lambda: check(good_claims(nbf=NOW + SKEW + 1))) == "issued in the future"


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": ...},
        {"iat": ...},
        {"exp": str(NOW + 300)},
        {"iat": None},
        {"exp": True},  # a boolean is not a time
        {"nbf": "0"},
        {"nbf": None},
    ],
)
def test_missing_or_non_numeric_times_are_malformed(changes):
    assert refused(lambda: check(good_claims(**changes))) == "malformed token"


def test_fractional_times_are_numbers():
    check(good_claims(exp=NOW + 0.5, iat=NOW - 0.5, nbf=NOW - 1.25))


# ---------------------------------------------------------------- claims: nonce


def test_the_nonce_must_match_when_one_was_sent():
    assert refused(lambda: check(good_claims(nonce="n-124"))) == "nonce mismatch"
    assert refused(lambda: check(good_claims(nonce=...))) == "nonce mismatch"
    assert refused(lambda: check(good_claims(nonce=123))) == "nonce mismatch"
    assert refused(lambda: check(good_claims(nonce="n-123 "))) == "nonce mismatch"


def test_a_non_ascii_nonce_is_compared_too():
    check(good_claims(nonce="nönce-✓"), nonce="nönce-✓")
    assert refused(lambda: check(good_claims(nonce="nonce-✓"), nonce="nönce-✓")) == "nonce mismatch"


def test_without_a_nonce_to_compare_none_is_required():
    # A refresh's id_token carries no nonce; none was sent.
    check(good_claims(nonce=...), nonce=None)
    check(good_claims(nonce="whatever"), nonce=None)


def test_the_first_failed_rule_is_the_reason_given():
    bad = good_claims(iss="https://evil", aud="x", exp=0, nonce="x")
    assert refused(lambda: check(bad)) == "wrong issuer"
    assert refused(lambda: check(good_claims(aud="x", exp=0))) == "wrong audience"
    assert refused(lambda: check(good_claims(exp=0, nonce="x"))) == "expired"


# ---------------------------------------------------------------- JWKS import


@pytest.mark.parametrize("doc", [None, [], "keys", {}, {"keys": None}, {"keys": {"kty": "RSA"}}])
def test_what_is_not_a_jwks_is_none(doc):
    assert import_signing_keys(doc) is None


def test_keys_we_cannot_use_are_skipped():
    rsa = RSA.as_dict(private=False)
    doc = {
        "keys": [
            "not an object",
            {**rsa, "use": "enc"},  # an encryption key
            {"kty": "oct", "k": b64(b"a shared secret"), "kid": "hmac"},  # never an id_token key
            {"kty": "RSA", "kid": "broken", "e": "AQAB"},  # no modulus
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},  # not on the curve
            {"kty": "FOO"},
            rsa,
            EC.as_dict(private=False),
        ]
    }
    assert [k.kid for k in import_signing_keys(doc)] == ["rsa-1", "ec-1"]
    assert import_signing_keys({"keys": []}) == []


def test_a_leaked_private_key_is_kept_as_its_public_half():
    keys = import_signing_keys({"keys": [k.as_dict(private=True) for k in (RSA, EC, OKP)]})
    assert [k.kid for k in keys] == ["rsa-1", "ec-1", "ed-1"]
    assert not any(k.is_private for k in keys)


def test_only_the_first_hundred_entries_are_read():
    rsa = RSA.as_dict(private=False)
    doc = {"keys": [{"kty": "FOO"}] * 100 + [rsa]}
    assert import_signing_keys(doc) == []


# ---------------------------------------------------------------- choosing the key


def with_alg(key: Any, alg: str | None) -> Any:
    data = key.as_dict(private=False)
    if alg is not None:
        data["alg"] = alg
    return type(key).import_key(data)


def test_the_key_named_by_kid_is_chosen():
    keys = import_signing_keys(public_jwks(RSA, RSA_OTHER, EC))
    assert pick_key(keys, "rsa-2", "RS256").kid == "rsa-2"
    assert pick_key(keys, "unknown", "RS256") is None


def test_a_key_of_another_type_is_never_chosen_even_by_kid():
    keys = import_signing_keys(public_jwks(RSA, EC))
    assert pick_key(keys, "ec-1", "RS256") is None
    assert pick_key(keys, "rsa-1", "ES256") is None


def test_without_a_kid_only_a_single_candidate_is_chosen():
    assert pick_key(import_signing_keys(public_jwks(RSA, EC)), None, "RS256").kid == "rsa-1"
    assert pick_key(import_signing_keys(public_jwks(RSA, RSA_OTHER, EC)), None, "RS256") is None
    assert pick_key([], None, "RS256") is None


def test_a_key_pinned_to_another_algorithm_is_not_chosen():
    pinned = [with_alg(RSA, "RS512"), with_alg(RSA_OTHER, "RS256")]
    assert pick_key(pinned, "rsa-1", "RS256") is None
    assert pick_key(pinned, None, "RS256").kid == "rsa-2"  # the only one that fits
    assert pick_key([with_alg(RSA, None)], "rsa-1", "RS256").kid == "rsa-1"
