"""Client assertions: how the gateway proves it is the registered OIDC client
with a key instead of a shared secret (``private_key_jwt``, RFC 7523 §2.2 and
OpenID Connect Core §9).

Each call to the IdP's token endpoint carries a short-lived JWT signed with the
gateway's private key: issuer and subject are the client_id, the audience is
the token endpoint, and a fresh ``jti`` lets the IdP refuse a replayed one. The
header names the certificate registered at the IdP twice, as SHA-1 (``x5t``)
and SHA-256 (``x5t#S256``) thumbprints of its DER bytes, because Microsoft
Entra finds the credential by thumbprint. That header (alg, typ, x5t, x5t#S256,
no ``kid``) is what Anthropic's gateway was seen to send; ``kid`` is added only
for IdPs that look keys up by id (Okta: the registered key's id, set with
``client_assertion.gatehouse.key_id``), since an IdP that finds a ``kid`` it does
not know may refuse the assertion rather than fall back to the thumbprint.

:func:`load_key` reads the PEM pair once, at boot (the checks themselves are
:mod:`gateway.config.client_keys`, which the config rules run first);
:func:`form_fields` builds the token-request fields for one call.

Pure: values in, values out. The caller supplies the time and the ``jti``.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.config.client_keys import KeyMaterialError, load_client_key

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


class AssertionKey(NamedTuple):
    key: RSAKey | ECKey
    alg: str
    header: dict[str, str]
    certificate_expires: datetime.datetime


def load_key(private_key_pem: str, certificate_pem: str, key_id: str | None = None) -> AssertionKey:
    """The signing key and the header every assertion carries. Raises
    :class:`~gateway.config.client_keys.KeyMaterialError`."""
    loaded = load_client_key(private_key_pem, certificate_pem)
    header = {"alg": loaded.alg, "typ": "JWT", "x5t": loaded.x5t, "x5t#S256": loaded.x5t_s256}
    if key_id is not None:
        header["kid"] = key_id
    private = loaded.private
    key: RSAKey | ECKey = (
        RSAKey.import_key(private) if isinstance(private, rsa.RSAPrivateKey) else ECKey.import_key(private)
    )
    return AssertionKey(key, loaded.alg, header, loaded.certificate_expires)


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
