"""gateway.auth.client_assertion: the signed JWT that stands in for a client
secret (private_key_jwt), and the boot checks of its key and certificate."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.auth import client_assertion as ca
from gateway.config.load import ConfigError, loads, redacted, unsupported
from tests.client_certs import certificate_pem, client_cert, key_pem, new_private_key

TOKEN_URL = "https://login.example.com/tenant/oauth2/v2.0/token"
RSA = client_cert("RSA")
EC = client_cert("EC")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der(cert_pem: str) -> bytes:
    return x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return tuple(json.loads(base64.urlsafe_b64decode(p + "==")) for p in (header, payload))  # type: ignore[return-value]


def assertion(key: ca.AssertionKey, *, now: float = 1_800_000_000.5, jti: str = "jti-1") -> str:
    return ca.sign(key, client_id="gw-client", audience=TOKEN_URL, now=now, jti=jti)


# ====================================================================== the assertion


def test_rsa_assertion_carries_the_claims_and_thumbprints_entra_expects() -> None:
    key = ca.load_key(RSA.key_pem, RSA.cert_pem)
    header, claims = parts(assertion(key))
    cert_der = der(RSA.cert_pem)
    assert header == {
        "alg": "RS256",
        "typ": "JWT",
        "x5t": b64(hashlib.sha1(cert_der).digest()),
        "x5t#S256": b64(hashlib.sha256(cert_der).digest()),
    }
    assert claims == {
        "iss": "gw-client",
        "sub": "gw-client",
        "aud": TOKEN_URL,
        "jti": "jti-1",
        "iat": 1_800_000_000,
        "nbf": 1_800_000_000,
        "exp": 1_800_000_000 + ca.LIFETIME_S,
    }


def test_the_signature_verifies_with_the_certificates_public_key_only() -> None:
    key = ca.load_key(RSA.key_pem, RSA.cert_pem)
    public = RSAKey.import_key(x509.load_pem_x509_certificate(RSA.cert_pem.encode()).public_key())  # type: ignore[arg-type]
    assert jwt.decode(assertion(key), public, algorithms=["RS256"]).claims["sub"] == "gw-client"
    other = RSAKey.import_key(new_private_key("RSA").public_key())
    with pytest.raises(Exception, match="signature"):
        jwt.decode(assertion(key), other, algorithms=["RS256"])


@pytest.mark.parametrize(("curve", "alg"), [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")])
def test_ec_keys_sign_with_their_curves_algorithm(curve: ec.EllipticCurve, alg: str) -> None:
    private = ec.generate_private_key(curve)
    key = ca.load_key(key_pem(private), certificate_pem(private))
    token = assertion(key)
    assert parts(token)[0]["alg"] == alg == key.alg
    public = ECKey.import_key(private.public_key())
    assert jwt.decode(token, public, algorithms=[alg]).claims["aud"] == TOKEN_URL


def test_a_configured_key_id_is_the_kid_and_the_thumbprints_stay() -> None:
    key = ca.load_key(EC.key_pem, EC.cert_pem, key_id="okta-kid-7")
    header, _ = parts(assertion(key))
    assert header["kid"] == "okta-kid-7"
    assert header["x5t"] == b64(hashlib.sha1(der(EC.cert_pem)).digest())


def test_each_assertion_is_its_own_and_form_fields_carry_no_secret() -> None:
    key = ca.load_key(EC.key_pem, EC.cert_pem)
    one = ca.form_fields(key, client_id="gw-client", audience=TOKEN_URL, now=100, jti="a")
    two = ca.form_fields(key, client_id="gw-client", audience=TOKEN_URL, now=100, jti="b")
    assert set(one) == {"client_id", "client_assertion_type", "client_assertion"}
    assert one["client_id"] == "gw-client"
    assert one["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert parts(one["client_assertion"])[1]["jti"] == "a" and parts(two["client_assertion"])[1]["jti"] == "b"


def test_the_clock_decides_the_window() -> None:
    key = ca.load_key(EC.key_pem, EC.cert_pem)
    _, claims = parts(assertion(key, now=5000.9))
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (5000, 5000, 5300)


def test_the_certificate_expiry_is_kept_for_the_boot_warning() -> None:
    private = new_private_key("EC")
    key = ca.load_key(key_pem(private), certificate_pem(private, days=-1))
    assert key.certificate_expires.timestamp() < x509.load_pem_x509_certificate(EC.cert_pem.encode()).not_valid_after_utc.timestamp()


# ====================================================================== bad key material


def refused(key_text: str, cert_text: str) -> tuple[str, str]:
    with pytest.raises(ca.KeyMaterialError) as info:
        ca.load_key(key_text, cert_text)
    return info.value.field, info.value.message


def test_garbage_key_and_certificate_name_their_field() -> None:
    broken_key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n"
    assert refused(broken_key, RSA.cert_pem) == ("private_key_pem", "not a readable PEM private key")
    broken_cert = "-----BEGIN CERTIFICATE-----\nMIIEvQIBADANBg\n-----END CERTIFICATE-----\n"
    assert refused(RSA.key_pem, broken_cert) == ("certificate_pem", "not a readable PEM certificate")


def test_a_key_and_certificate_that_do_not_belong_together_are_refused() -> None:
    field, message = refused(RSA.key_pem, EC.cert_pem)
    assert field == "certificate_pem" and "public keys differ" in message
    other_rsa = client_cert("RSA")
    assert refused(RSA.key_pem, other_rsa.cert_pem)[0] == "certificate_pem"


def test_an_encrypted_key_is_refused_with_the_reason() -> None:
    private = new_private_key("EC")
    field, message = refused(key_pem(private, b"pass phrase"), certificate_pem(private))
    assert field == "private_key_pem" and "encrypted" in message


@pytest.mark.parametrize(
    ("private", "words"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519 keys are not supported"),
        (ec.generate_private_key(ec.SECP256K1()), "curve secp256k1 is not supported"),
        (new_private_key("RSA", 1024), "1024 bits is too small"),
    ],
    ids=["ed25519", "secp256k1", "rsa1024"],
)
def test_unsupported_key_types_are_refused(private: Any, words: str) -> None:
    cert = certificate_pem(private, signed_by=new_private_key("EC"))
    field, message = refused(key_pem(private), cert)
    assert field == "private_key_pem" and words in message


def test_messages_never_quote_the_key() -> None:
    body = RSA.key_pem.splitlines()[1]
    for key_text, cert_text in [(RSA.key_pem, EC.cert_pem), (RSA.key_pem[:300], RSA.cert_pem)]:
        with pytest.raises(ca.KeyMaterialError) as info:
            ca.load_key(key_text, cert_text)
        assert body[:20] not in str(info.value)


# ====================================================================== boot (config rules)

BASE = {
    "listen": {"host": "127.0.0.1", "port": 8080},
    "oidc": {
        "issuer": "https://login.example.com/tenant/v2.0",
        "client_id": "gw-client",
        "token_endpoint_auth_method": "private_key_jwt",
        "client_assertion": {"private_key_pem": "${KEY}", "certificate_pem": "${CERT}"},
    },
    "session": {"jwt_secret": "s" * 40},
    "store": {"postgres_url": "postgres://gw@127.0.0.1/gw"},
    "upstreams": [{"provider": "anthropic", "auth": {"api_key": "sk-ant-x"}}],
}


def boot(key_text: str, cert_text: str, **assertion: Any) -> Any:
    data = json.loads(json.dumps(BASE))
    data["oidc"]["client_assertion"].update(assertion)
    return loads(yaml.safe_dump(data), {"KEY": key_text, "CERT": cert_text})


def boot_issues(key_text: str, cert_text: str, **assertion: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        boot(key_text, cert_text, **assertion)
    return info.value.issues


def test_a_good_pair_boots_as_a_served_feature_and_the_key_is_redacted() -> None:
    cfg = boot(RSA.key_pem, RSA.cert_pem)
    assert unsupported(cfg) == []
    shown = redacted(cfg)["oidc"]["client_assertion"]
    assert shown["private_key_pem"] == "***" and shown["certificate_pem"] == RSA.cert_pem
    assert shown["gatehouse"] == {"key_id": None}


def test_boot_errors_name_the_dotted_path() -> None:
    assert boot_issues("not a key", RSA.cert_pem) == [
        ("oidc.client_assertion.private_key_pem", "must be a PEM private key (load a file with ${file:/path})")
    ]
    assert [p for p, _ in boot_issues(RSA.key_pem, "nope")] == ["oidc.client_assertion.certificate_pem"]
    truncated = RSA.key_pem[:200] + "\n-----END PRIVATE KEY-----\n"
    assert boot_issues(truncated, RSA.cert_pem) == [
        ("oidc.client_assertion.private_key_pem", "not a readable PEM private key")
    ]
    (issue,) = boot_issues(RSA.key_pem, EC.cert_pem)
    assert issue[0] == "oidc.client_assertion.certificate_pem" and "public keys differ" in issue[1]
    ed = ed25519.Ed25519PrivateKey.generate()
    (issue,) = boot_issues(key_pem(ed), certificate_pem(ed, signed_by=new_private_key("EC")))
    assert issue == ("oidc.client_assertion.private_key_pem", "Ed25519 keys are not supported; use an RSA or EC key")


def test_the_key_id_extension_is_checked_like_the_rest() -> None:
    cfg = boot(EC.key_pem, EC.cert_pem, gatehouse={"key_id": "okta-kid"})
    assert cfg.oidc.client_assertion.gatehouse.key_id == "okta-kid"
    assert [p for p, _ in boot_issues(EC.key_pem, EC.cert_pem, gatehouse={"key_id": ""})] == [
        "oidc.client_assertion.gatehouse.key_id"
    ]
    assert [p for p, _ in boot_issues(EC.key_pem, EC.cert_pem, gatehouse={"kid": "x"})] == [
        "oidc.client_assertion.gatehouse.kid"
    ]


def test_files_are_read_with_the_file_reference(tmp_path: Any) -> None:
    (tmp_path / "key.pem").write_text(EC.key_pem)
    (tmp_path / "cert.pem").write_text(EC.cert_pem)
    data = json.loads(json.dumps(BASE))
    data["oidc"]["client_assertion"] = {
        "private_key_pem": f"${{file:{tmp_path}/key.pem}}",
        "certificate_pem": f"${{file:{tmp_path}/cert.pem}}",
    }
    cfg = loads(yaml.safe_dump(data), {})
    assert cfg.oidc.client_assertion.certificate_pem == EC.cert_pem.strip()
    assert ca.load_key(cfg.oidc.client_assertion.private_key_pem, cfg.oidc.client_assertion.certificate_pem).alg == "ES256"


def test_a_template_checked_without_its_environment_passes() -> None:
    cfg = loads(yaml.safe_dump(BASE), {}, expand=False)
    assert dict(cfg.unresolved) == {
        "oidc.client_assertion.private_key_pem": "${KEY}",
        "oidc.client_assertion.certificate_pem": "${CERT}",
    }
