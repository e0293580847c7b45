"""Device-flow codes and the token-poll decision (SPEC §4 "Device authorization").

Pure: codes in, codes out; the poll decision is a function of the stored grant,
the time and the interval.

* ``device_code``: 256 random bits, opaque, single use; only its SHA-256 is stored.
* ``user_code``: 8 characters from a 20-consonant alphabet (no vowels, so no
  words; no look-alike digits), shown as ``XXXX-XXXX``, matched ignoring case,
  dashes and spaces. 20⁸ ≈ 2.6×10¹⁰ codes, and guessing is rate-limited per IP.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime, timedelta
from typing import NamedTuple

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
DEVICE_CODE_TTL_S = 600
POLL_INTERVAL_S = 5
# The CLI polls every interval plus a few milliseconds; network jitter can make
# two polls look closer than that. Only polls clearly faster than the interval
# are told to slow down.
POLL_TOLERANCE_S = 1.0


def new_device_code() -> str:
    return secrets.token_urlsafe(32)


def code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


def new_user_code() -> str:
    raw = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return format_user_code(raw)


def format_user_code(normalized: str) -> str:
    return f"{normalized[:4]}-{normalized[4:]}"


def normalize_user_code(text: str | None) -> str | None:
    """``"bcdf-ghjk"`` / ``"BCDF GHJK"`` → ``"BCDFGHJK"``; None when it cannot be a code."""
    if not text:
        return None
    cleaned = "".join(ch for ch in text.upper() if ch not in "- \t")
    if len(cleaned) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in cleaned):
        return None
    return cleaned


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class GrantState(NamedTuple):
    status: str  # pending | approved | denied | consumed
    expires_at: datetime
    last_poll_at: datetime | None


class PollAnswer(NamedTuple):
    # authorization_pending | slow_down | access_denied | expired_token | issue
    outcome: str
    # What the grant becomes (None = unchanged); last_poll_at is always updated.
    new_status: str | None


def decide_poll(grant: GrantState | None, now: datetime, interval_s: int = POLL_INTERVAL_S) -> PollAnswer:
    if grant is None or grant.status == "consumed" or grant.expires_at <= now:
        return PollAnswer("expired_token", None)
    if grant.last_poll_at is not None and now - grant.last_poll_at < timedelta(seconds=interval_s - POLL_TOLERANCE_S):
        return PollAnswer("slow_down", None)
    if grant.status == "denied":
        # Said once; after that the code is spent like any other.
        return PollAnswer("access_denied", "consumed")
    if grant.status == "approved":
        return PollAnswer("issue", "consumed")
    return PollAnswer("authorization_pending", None)
