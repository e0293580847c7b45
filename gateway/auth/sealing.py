"""Symmetric sealing keyed from ``session.jwt_secret``: the first secret seals, any opens.

Used for what the gateway must keep secret but get back later: the IdP's
refresh tokens at rest, the successor token pair kept for the refresh reuse
window, and the browser-binding cookie of the sign-in page. Keys are derived
with HKDF-SHA256 under a per-purpose label, so a key for one purpose never
opens data of another, and rotating ``jwt_secret`` (prepend the new one)
rotates every key with it.

Data sealed under an older secret stays readable only while that secret is
listed. :meth:`Sealer.opened_by` tells which listed secret opens a sealed value
and :meth:`Sealer.reseal` moves one under the first secret, so the gateway can
re-seal what it keeps for long (the IdP refresh tokens) before an operator
drops the old secret.
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
        self._keys = [Fernet(base64.urlsafe_b64encode(derive_key(s, purpose))) for s in secrets]
        self._fernet = MultiFernet(self._keys)

    @property
    def secret_count(self) -> int:
        return len(self._keys)

    def seal(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def open(self, sealed: bytes) -> bytes | None:
        """The data, or None when no listed secret opens it (or it was tampered with)."""
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            return None

    def opened_by(self, sealed: bytes) -> int | None:
        """The index (in ``jwt_secret`` order) of the secret that opens ``sealed``; None when none does.

        0 means the current secret; anything higher means the value still
        depends on an older one.
        """
        for index, key in enumerate(self._keys):
            try:
                key.decrypt(sealed)
            except InvalidToken:
                continue
            return index
        return None

    def reseal(self, sealed: bytes) -> bytes | None:
        """``sealed``'s data sealed afresh under the first secret; None when no listed secret opens it."""
        try:
            return self._fernet.rotate(sealed)
        except InvalidToken:
            return None
