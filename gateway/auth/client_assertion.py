"""Client assertions: how the gateway proves it is the registered OIDC client
with a key instead of a shared secret (``private_key_jwt``, RFC 7523 §2.2 and
OpenID Connect Core §9).

Each call to the IdP's token endpoint carries a short-lived JWT signed with the
gateway's private key: issuer and subject are the client_id, the audience is
the token endpoint, and a fresh ``jti`` lets the IdP refuse a replayed one. The
header names the certificate registered at the IdP twice, as SHA-1 (``x5t``)
and SHA-256 (``x5t#S256``) thumbprints of its DER bytes, because Microsoft
Entra finds the credential by thumbprint; ``kid`` serves IdPs that look keys up
by id instead (Okta: the registered key's id, set with
``client_assertion.gatehouse.key_id``; by default the SHA-256 thumbprint).

:func:`load_key` parses and checks the PEM pair once, at boot; the config
rules call it for their error messages and the OIDC client keeps its result.
:func:`form_fields` builds the token-request fields for one call.

Pure: values in, values out. The caller supplies the time and the ``jti``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "ASSERTION_TYPE",
    "LIFETIME_S",
    "AssertionKey",
    "KeyMaterialError",
    "form_fields",
    "load_key",
    "sign",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Long enough for a slow token call, short enough that a leaked assertion is
# soon worthless (Entra and Okta both accept lifetimes well beyond this).
LIFETIME_S = 300
# Smaller RSA keys are refused by Entra and are too weak to sign with anyway.
MIN_RSA_BITS = 2048
_CURVE_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class KeyMaterialError(ValueError):
    """The key or certificate cannot be used; ``field`` is the config key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class AssertionKey(NamedTuple):
    key: RSAKey | ECKey
    alg: str
    header: dict[str, str]
    certificate_expires: datetime.datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprints(cert_der: bytes) -> tuple[str, str]:
    """(x5t, x5t#S256) of a DER certificate."""
    return _b64(hashlib.sha1(cert_der).digest()), _b64(hashlib.sha256(cert_der).digest())  # noqa: S324  (x5t is SHA-1 by definition)


def load_key(private_key_pem: str, certificate_pem: str, key_id: str | None = None) -> AssertionKey:
    """Parse and cross-check the pair. Raises :class:`KeyMaterialError`; its
    message never quotes the key."""
    try:
        private = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except TypeError:
        raise KeyMaterialError(
            "private_key_pem", "the key is encrypted; give the gateway an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError("private_key_pem", "not a readable PEM private key") from None
    alg = _alg_for(private)
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        raise KeyMaterialError("certificate_pem", "not a readable PEM certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != private.public_key().public_bytes(der, spki):
        raise KeyMaterialError(
            "certificate_pem", "the certificate is not for private_key_pem (their public keys differ)"
        )
    x5t, x5t_s256 = thumbprints(cert.public_bytes(der))
    header = {"alg": alg, "typ": "JWT", "kid": key_id or x5t_s256, "x5t": x5t, "x5t#S256": x5t_s256}
    key: RSAKey | ECKey = (
        RSAKey.import_key(private) if isinstance(private, rsa.RSAPrivateKey) else ECKey.import_key(private)  # type: ignore[arg-type]
    )
    return AssertionKey(key, alg, header, cert.not_valid_after_utc)


def _alg_for(private: Any) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(
                "private_key_pem", f"an RSA key of {private.key_size} bits is too small; use {MIN_RSA_BITS} or more"
            )
        return "RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = _CURVE_ALGS.get(private.curve.name)
        if alg is None:
            raise KeyMaterialError(
                "private_key_pem", f"EC curve {private.curve.name} is not supported; use P-256, P-384 or P-521"
            )
        return alg
    kind = type(private).__name__.lstrip("_").removesuffix("PrivateKey")
    raise KeyMaterialError("private_key_pem", f"{kind} keys are not supported; use an RSA or EC key")


def sign(key: AssertionKey, *, client_id: str, audience: str, now: float, jti: str) -> str:
    """One client assertion for a call to ``audience`` (the token endpoint)."""
    issued = int(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": issued,
        "nbf": issued,
        "exp": issued + LIFETIME_S,
    }
    return jwt.encode(key.header, claims, key.key, algorithms=[key.alg])


def form_fields(key: AssertionKey, *, client_id: str, audience: str, now: float, jti: str) -> dict[str, str]:
    """The token-request fields that authenticate the client (no secret among them)."""
    return {
        "client_id": client_id,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": sign(key, client_id=client_id, audience=audience, now=now, jti=jti),
    }
