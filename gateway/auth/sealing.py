"""Symmetric sealing keyed from ``session.jwt_secret``: the first secret seals, any opens.

Used for what the gateway must keep secret but get back later: the IdP's
refresh tokens at rest, the successor token pair kept for the refresh reuse
window, and the browser-binding cookie of the sign-in page. Keys are derived
with HKDF-SHA256 under a per-purpose label, so a key for one purpose never
opens data of another, and rotating ``jwt_secret`` (prepend the new one)
rotates every key with it.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive_key(secret: str, purpose: str) -> bytes:
    """32 raw bytes for ``purpose`` from ``secret``."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gatehouse", info=purpose.encode()).derive(secret.encode())


class Sealer:
    def __init__(self, secrets: tuple[str, ...], purpose: str) -> None:
        keys = [Fernet(base64.urlsafe_b64encode(derive_key(s, purpose))) for s in secrets]
        self._fernet = MultiFernet(keys)

    def seal(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def open(self, sealed: bytes) -> bytes | None:
        """The data, or None when no listed secret opens it (or it was tampered with)."""
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            return None
