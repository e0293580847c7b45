"""Key and certificate pairs for ``private_key_jwt`` tests: what an operator
makes with openssl and uploads to the IdP, made here with ``cryptography``."""

from __future__ import annotations

import datetime
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


class ClientCert(NamedTuple):
    key_pem: str
    cert_pem: str
    key: Any  # the cryptography private key


def new_private_key(kind: str = "RSA", size: int = 2048) -> Any:
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(65537, size)


def key_pem(key: Any, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


def certificate_pem(key: Any, *, days: float = 365, signed_by: Any = None) -> str:
    """A self-signed certificate for ``key`` (``signed_by`` another key: one whose
    signature does not match, which IdPs do not check; the public key is what counts)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse client")])
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(days=days)  # days < 0: already expired
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, end) - datetime.timedelta(days=1))
        .not_valid_after(end)
        .sign(signed_by or key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def client_cert(kind: str = "RSA") -> ClientCert:
    key = new_private_key(kind)
    return ClientCert(key_pem(key), certificate_pem(key), key)
