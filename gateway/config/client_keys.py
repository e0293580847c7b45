"""Boot-time reading of ``oidc.client_assertion``: the private key the gateway
signs client assertions with (``private_key_jwt``) and the certificate
registered for it at the IdP.

:func:`load_client_key` parses both PEM texts and checks that they belong
together, that the key is of a type and size the assertion can be signed with
(RSA of at least 2048 bits → RS256; EC on P-256, P-384 or P-521 → ES256, ES384,
ES512), and computes the certificate thumbprints that name it in the
assertion header. The config rules call it for their boot errors; the OIDC
client (:mod:`gateway.auth.client_assertion`) calls it again to sign with.
Messages never quote the key.

Pure: values in, values out.
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

from gateway.errors import Fault, Party

__all__ = ["MIN_RSA_BITS", "ClientKey", "KeyMaterialError", "load_client_key", "thumbprints"]

# Smaller RSA keys are refused by Entra and are too weak to sign with anyway.
MIN_RSA_BITS = 2048
_CURVE_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class KeyMaterialError(Fault, ValueError):
    """The key or certificate cannot be used; ``field`` is the config key at fault."""

    fault = Party.GATEWAY

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ClientKey(NamedTuple):
    private: Any  # a cryptography RSA or EC private key
    alg: str
    x5t: str  # base64url SHA-1 of the certificate's DER
    x5t_s256: str  # base64url SHA-256 of the same
    certificate_expires: datetime.datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprints(cert_der: bytes) -> tuple[str, str]:
    """(x5t, x5t#S256) of a DER certificate."""
    return _b64(hashlib.sha1(cert_der).digest()), _b64(hashlib.sha256(cert_der).digest())  # noqa: S324  (x5t is SHA-1 by definition)


def load_client_key(private_key_pem: str, certificate_pem: str) -> ClientKey:
    """Parse and cross-check the pair. Raises :class:`KeyMaterialError`."""
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
        # Parsed only when asked for: a damaged key inside the certificate shows here.
        cert_public = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError("certificate_pem", "not a readable PEM certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert_public.public_bytes(der, spki) != private.public_key().public_bytes(der, spki):
        raise KeyMaterialError(
            "certificate_pem", "the certificate is not for private_key_pem (their public keys differ)"
        )
    x5t, x5t_s256 = thumbprints(cert.public_bytes(der))
    return ClientKey(private, alg, x5t, x5t_s256, cert.not_valid_after_utc)


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
